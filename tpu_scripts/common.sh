# shellcheck shell=bash
# Sourced by every tpu_scripts/*.sh: config loading and checks, run-or-print, and the
# remote snippets that start jobs on TPU workers. Not meant to be run by itself.
# shellcheck disable=SC2034  # globals here (REPO_ROOT, NSHIFT, SLICE_LIST, ...) are read by the scripts

TPU_SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$TPU_SCRIPTS_DIR/.." && pwd)
DRY_RUN=0
CONFIG_FILE=""

# Fixed locations on every worker, relative to the remote $HOME (kept literal here: they
# are expanded by the worker's shell, never by ours).
R_CODE='$HOME/scaling'        # the package source (replaced on each setup.sh)
R_VENV='$HOME/scaling-venv'   # outside R_CODE so a code refresh keeps the installed deps
R_LOGS='$HOME/scaling-logs'   # JOB.log, JOB.pid, latest.log -> last launched job
R_SCALING="$R_VENV/bin/scaling"
# Remote shell function: is $pid a live scaling process? Zombies (state Z) do not count,
# and neither does an unrelated process that reused the pid after a reboot.
R_RUNNING_FN='running() { ps -p "$pid" -o stat=,args= 2>/dev/null | grep -v "^ *Z" | grep -q scaling; }'

CONFIG_REQUIRED=(PROJECT ZONE TPU_NAME ACCELERATOR_TYPE RUNTIME_VERSION BUCKET)
CONFIG_OPTIONAL=(SLICES SPOT REPO_URL REPO_REF PYTHON REMOTE_ENV PER_HOST_ENV)

die() { printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2; exit 2; }
note() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }

# The script's header comment is its --help.
usage() { sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; }

# Quote one word for a POSIX shell, leaving plain words bare, so that printed commands
# read well and paste back verbatim.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//"'"/"'\\''"}"; fi
}
quote_cmd() {
  local out="" w
  for w in "$@"; do out+="${out:+ }$(quote "$w")"; done
  printf '%s' "$out"
}

# Every side effect goes through run, so --dry-run prints exactly what a real run does.
run() {
  if ((DRY_RUN)); then printf '%s\n' "$(quote_cmd "$@")"; else "$@"; fi
}

# Options every script takes. Sets NSHIFT to the number of words consumed.
common_opt() {
  case $1 in
    --dry-run) DRY_RUN=1; NSHIFT=1 ;;
    --config) (($# >= 2)) || die "--config needs a FILE"; CONFIG_FILE=$2; NSHIFT=2 ;;
    --config=*) CONFIG_FILE=${1#*=}; NSHIFT=1 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see $(basename "$0") --help)" ;;
  esac
}

# Load the config file (--config FILE, else $TPU_CONFIG, else tpu_scripts/config.env) and
# check every value up front -- all scripts check all values, so a typo is caught by
# create.sh before a TPU is paid for, not by sweep.sh an hour later.
load_config() {
  local file=${CONFIG_FILE:-${TPU_CONFIG:-$TPU_SCRIPTS_DIR/config.env}}
  local hint="copy tpu_scripts/config.env.example to tpu_scripts/config.env and fill it in, or pass --config FILE / set TPU_CONFIG=FILE"
  [[ -f $file ]] || die "config file $file not found: $hint"
  # Only the file counts: a stray ZONE in the caller's shell must not stand in for a
  # value missing from the file.
  unset "${CONFIG_REQUIRED[@]}" "${CONFIG_OPTIONAL[@]}"
  # shellcheck source=/dev/null
  source "$file" || die "could not read config file $file"
  CONFIG_FILE=$file
  local v
  for v in "${CONFIG_REQUIRED[@]}"; do
    [[ -n ${!v:-} ]] || die "config value $v is not set in $file (set $v=... there; see tpu_scripts/config.env.example)"
  done
  SLICES=${SLICES:-1} SPOT=${SPOT:-false} REPO_URL=${REPO_URL:-} REPO_REF=${REPO_REF:-main}
  PYTHON=${PYTHON:-python3.11} REMOTE_ENV=${REMOTE_ENV:-} PER_HOST_ENV=${PER_HOST_ENV:-}
  [[ $BUCKET =~ ^gs://[a-z0-9][a-z0-9._-]*[a-z0-9]$ ]] ||
    die "config value BUCKET='$BUCKET' in $file must be a bucket URL like gs://my-bucket (no path, no trailing slash)"
  [[ $TPU_NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    die "config value TPU_NAME='$TPU_NAME' in $file must be lowercase letters, digits and hyphens, starting with a letter"
  [[ $SLICES =~ ^[1-9][0-9]*$ ]] || die "config value SLICES='$SLICES' in $file must be a positive integer"
  [[ $SPOT == true || $SPOT == false ]] || die "config value SPOT='$SPOT' in $file must be true or false"
  [[ $PYTHON =~ ^[A-Za-z0-9._-]+$ ]] || die "config value PYTHON='$PYTHON' in $file must be a command name like python3.11"
  local words
  read -ra words <<<"$REMOTE_ENV $PER_HOST_ENV"
  for v in "${words[@]}"; do
    [[ $v =~ ^[A-Za-z_][A-Za-z0-9_]*=[A-Za-z0-9_@%+=:,./-]*$ ]] ||
      die "REMOTE_ENV/PER_HOST_ENV in $file must be space-separated NAME=value words (value: letters, digits, _@%+=:,./-), got '$v'"
  done
  LOC=("--project=$PROJECT" "--zone=$ZONE")
  if ((!DRY_RUN)) && ! command -v gcloud >/dev/null; then
    die "gcloud not found on PATH: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install), or use --dry-run"
  fi
}

# Slice s (0-based) is its own queued resource and its own TPU node. With SLICES=1 both
# are just TPU_NAME.
node_name() { if ((SLICES == 1)); then printf '%s' "$TPU_NAME"; else printf '%s-%s' "$TPU_NAME" "$1"; fi; }

# "--slice S" (or "" for all) -> SLICE_LIST, the slices a script acts on. Sets a global
# rather than printing, so that its die stops the script (a $(...) subshell would not).
select_slices() {
  if [[ -n $1 ]]; then
    if ! [[ $1 =~ ^[0-9]+$ ]] || (($1 >= SLICES)); then
      die "--slice $1 is out of range: config has SLICES=$SLICES (valid: 0..$((SLICES - 1)))"
    fi
    SLICE_LIST=("$1")
  else
    mapfile -t SLICE_LIST < <(seq 0 $((SLICES - 1)))
  fi
}

# Run/sweep names become gs:// paths and log file names on the workers.
check_name() {
  [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] ||
    die "name '$1' must be letters, digits, '.', '_' or '-' (it becomes a gs:// path and a log file name)"
}

# gcloud ssh on one node. WORKER is a TPU worker index or "all" (the same command on
# every host of the slice at once -- what multi-controller JAX needs).
tpu_ssh() {
  local node=$1 worker=$2 cmd=$3
  run gcloud compute tpus tpu-vm ssh "$node" "${LOC[@]}" "--worker=$worker" "--command=$cmd"
}

# The remote `scaling ...` command: ARGS are quoted for the worker's shell; REMOTE_ENV
# words were validated to need no quoting.
scaling_cmd() {
  local pre=""
  [[ -n $REMOTE_ENV ]] && pre="env $REMOTE_ENV "
  printf '%s"%s" %s' "$pre" "$R_SCALING" "$(quote_cmd "$@")"
}

# Remote one-liner (joined with "; " so --dry-run prints one command per line) that starts
# CMD detached on a worker: setsid+nohup so an ssh disconnect cannot kill it, output
# appended to ~/scaling-logs/JOB.log (relaunches keep the history), and a pid file so
# re-running the same script does not start a second copy on a busy TPU. PRELUDE runs
# first (e.g. to compute a worker index); RESTART=1 stops a running copy with SIGTERM --
# training checkpoints on SIGTERM -- and relaunches, which resumes from that checkpoint.
launch_snippet() {
  local job=$1 restart=$2 prelude=$3 cmd=$4
  local parts=(
    'set -euo pipefail'
    "mkdir -p \"$R_LOGS\""
    "cd \"$R_CODE\""
    "pidf=\"$R_LOGS/$job.pid\"; log=\"$R_LOGS/$job.log\""
    'pid=$(cat "$pidf" 2>/dev/null || true)'
    "$R_RUNNING_FN"
  )
  if ((restart)); then
    parts+=('if running; then echo "stopping '"$job"' (pid $pid) on $(hostname)"; kill -TERM "$pid"; for _ in $(seq 3000); do running || break; sleep 0.2; done; if running; then echo "'"$job"' still running on $(hostname) after 600s" >&2; exit 1; fi; fi')
  else
    parts+=('if running; then echo "'"$job"' is already running on $(hostname) (pid $pid); pass --restart to stop and relaunch it" >&2; exit 1; fi')
  fi
  [[ -n $prelude ]] && parts+=("$prelude")
  parts+=(
    'echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) launch on $(hostname)" >> "$log"'
    "setsid nohup $cmd >> \"\$log\" 2>&1 < /dev/null & echo \$! > \"\$pidf\""
    "ln -sfn $job.log \"$R_LOGS/latest.log\""
    'echo "'"$job"' started on $(hostname): pid $(cat "$pidf"), log $log"'
  )
  join_cmds "${parts[@]}"
}

join_cmds() {
  local out="" p
  for p in "$@"; do out+="${out:+; }$p"; done
  printf '%s' "$out"
}
