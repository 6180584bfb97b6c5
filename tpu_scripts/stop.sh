#!/usr/bin/env bash
# Usage: tpu_scripts/stop.sh [JOB] [--slice S] [--dry-run] [--config FILE]
#
# Stop a job started by train.sh / sweep.sh on every worker: SIGTERM, so that it saves a
# checkpoint and exits, then wait for it (up to 10 minutes). Starting the same train.sh /
# sweep.sh command again resumes it.
#
#   JOB        train-NAME or sweep-NAME (default: latest, the job launched last).
#   --slice S  only slice S (default: every slice).
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

job=latest slice=""
while (($#)); do
  case $1 in
    --slice) (($# >= 2)) || die "--slice needs a number"; slice=$2; shift 2 ;;
    --slice=*) slice=${1#*=}; shift ;;
    -*) common_opt "$@"; shift "$NSHIFT" ;;
    *) job=$1; shift ;;
  esac
done
check_name "$job"
load_config
select_slices "$slice"

# latest.log is a symlink to JOB.log; the pid file sits beside it under the same stem.
remote=$(join_cmds \
  "cd \"$R_LOGS\" 2>/dev/null || { echo \"\$(hostname): nothing to stop\"; exit 0; }" \
  "stem=\$(basename \"\$(readlink -f $job.log 2>/dev/null || echo $job.log)\" .log)" \
  'pid=$(cat "$stem.pid" 2>/dev/null) || { echo "$(hostname): $stem was never started here"; exit 0; }' \
  "$R_RUNNING_FN" \
  'running || { echo "$(hostname): $stem is not running"; exit 0; }' \
  'kill -TERM "$pid"' \
  'for _ in $(seq 3000); do running || break; sleep 0.2; done' \
  'if running; then echo "$(hostname): $stem (pid $pid) still running after 600s" >&2; exit 1; fi' \
  'echo "$(hostname): stopped $stem"')
for s in "${SLICE_LIST[@]}"; do
  tpu_ssh "$(node_name "$s")" all "$remote"
done
