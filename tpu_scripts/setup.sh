#!/usr/bin/env bash
# Usage: tpu_scripts/setup.sh [--slice S] [--dry-run] [--config FILE]
#
# Install the package on every worker of every slice (or of slice S):
#   1. code: `git clone REPO_URL` at REPO_REF on each worker if REPO_URL is set, else this
#      working tree (tracked + untracked, minus git-ignored files) packed into a tarball
#      and copied to all workers with `gcloud compute tpus tpu-vm scp --worker=all`;
#   2. PYTHON (apt-installed if the image lacks it) -> venv ~/scaling-venv ->
#      pip install -e ".[tpu]" in ~/scaling.
# Safe to re-run to ship new code; refuses while a job started by train.sh/sweep.sh is
# still running on a worker (stop it with stop.sh first).
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

slice=""
while (($#)); do
  case $1 in
    --slice) (($# >= 2)) || die "--slice needs a number"; slice=$2; shift 2 ;;
    --slice=*) slice=${1#*=}; shift ;;
    *) common_opt "$@"; shift "$NSHIFT" ;;
  esac
done
load_config
select_slices "$slice"

R_TARBALL='$HOME/scaling-src.tar.gz'
new="$R_CODE.new"
steps=(
  'set -euo pipefail'
  "mkdir -p \"$R_LOGS\""
  "$R_RUNNING_FN"
  "for f in \"$R_LOGS\"/*.pid; do pid=\$(cat \"\$f\" 2>/dev/null) || continue; if running; then echo \"\$(basename \"\$f\" .pid) is running on \$(hostname) (pid \$pid): stop it with tpu_scripts/stop.sh before setup\" >&2; exit 1; fi; done"
  "if ! command -v $PYTHON >/dev/null 2>&1; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $PYTHON $PYTHON-venv; fi"
  "rm -rf \"$new\""
)
if [[ -n $REPO_URL ]]; then
  steps+=("git clone --quiet $(quote "$REPO_URL") \"$new\"" "git -C \"$new\" checkout --quiet $(quote "$REPO_REF")")
else
  steps+=("mkdir -p \"$new\"" "tar -xzf \"$R_TARBALL\" -C \"$new\"")
fi
steps+=(
  # Unpack beside, then swap, so a failed clone/unpack leaves the old code in place.
  "rm -rf \"$R_CODE\"" "mv \"$new\" \"$R_CODE\""
  "[ -x \"$R_VENV/bin/python\" ] || $PYTHON -m venv \"$R_VENV\""
  "\"$R_VENV/bin/pip\" install -q --upgrade pip"
  "cd \"$R_CODE\""
  "\"$R_VENV/bin/pip\" install -q -e '.[tpu]'"
  'echo "setup done on $(hostname)"'
)
remote=$(join_cmds "${steps[@]}")

# The local tarball: what `git status` would show as the working tree, nothing ignored
# (no .venv, no runs/).
tarball="${TMPDIR:-/tmp}/scaling-src-$TPU_NAME.tar.gz"
if [[ -z $REPO_URL ]]; then
  if ((DRY_RUN)); then
    printf '# pack %s (git ls-files --cached --others --exclude-standard) into %s\n' "$REPO_ROOT" "$tarball"
  else
    git -C "$REPO_ROOT" rev-parse --git-dir >/dev/null 2>&1 ||
      die "$REPO_ROOT is not a git checkout, so there is no file list to pack: set REPO_URL in $CONFIG_FILE"
    (cd "$REPO_ROOT" && git ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do if [[ -e $f ]]; then printf '%s\0' "$f"; fi; done |
      tar --null -T - -czf "$tarball")
    note "packed $REPO_ROOT into $tarball ($(du -h "$tarball" | cut -f1))"
  fi
fi

for s in "${SLICE_LIST[@]}"; do
  node=$(node_name "$s")
  if [[ -z $REPO_URL ]]; then
    run gcloud compute tpus tpu-vm scp "$tarball" "$node:scaling-src.tar.gz" "${LOC[@]}" --worker=all
  fi
  tpu_ssh "$node" all "$remote"
done
