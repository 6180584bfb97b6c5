#!/usr/bin/env bash
# Usage: tpu_scripts/logs.sh [JOB] [--worker W] [--slice S] [-f | --follow] [-n LINES]
#                            [--dry-run] [--config FILE]
#
# Show the log of a job started by train.sh / sweep.sh, from ~/scaling-logs/JOB.log on
# the workers, each line prefixed with the worker's hostname.
#
#   JOB          train-NAME or sweep-NAME (default: latest, the job launched last).
#   --worker W   a TPU worker index, a list/range gcloud accepts (0,2 or 1-3), or all (default).
#   --slice S    only slice S (default: every slice, one after the other).
#   -f           keep following (tail -F); with SLICES > 1 this needs --slice.
#   -n LINES     lines of history to show (default 50).
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

job=latest worker=all slice="" follow=0 lines=50
while (($#)); do
  case $1 in
    --worker) (($# >= 2)) || die "--worker needs a value"; worker=$2; shift 2 ;;
    --worker=*) worker=${1#*=}; shift ;;
    --slice) (($# >= 2)) || die "--slice needs a number"; slice=$2; shift 2 ;;
    --slice=*) slice=${1#*=}; shift ;;
    -f | --follow) follow=1; shift ;;
    -n | --lines) (($# >= 2)) || die "$1 needs a number"; lines=$2; shift 2 ;;
    --lines=*) lines=${1#*=}; shift ;;
    -*) common_opt "$@"; shift "$NSHIFT" ;;
    *) job=$1; shift ;;
  esac
done
check_name "$job"
[[ $worker =~ ^(all|[0-9]+([-,][0-9]+)*)$ ]] || die "--worker must be all, N, a list like 0,2 or a range like 1-3; got '$worker'"
[[ $lines =~ ^[0-9]+$ ]] || die "-n must be a number of lines, got '$lines'"
load_config
select_slices "$slice"
if ((follow && ${#SLICE_LIST[@]} > 1)); then
  die "-f follows one slice at a time: add --slice S (0..$((SLICES - 1)))"
fi

tail_flags="-n $lines"
((follow)) && tail_flags+=" -F"
remote=$(join_cmds \
  "f=\"$R_LOGS/$job.log\"" \
  'if [ ! -e "$f" ]; then echo "$(hostname): no log $f (jobs here: $(cd "$(dirname "$f")" 2>/dev/null && echo *.log))" >&2; exit 1; fi' \
  "tail $tail_flags \"\$f\" | sed -u \"s/^/[\$(hostname)] /\"")
for s in "${SLICE_LIST[@]}"; do
  tpu_ssh "$(node_name "$s")" "$worker" "$remote"
done
