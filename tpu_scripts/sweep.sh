#!/usr/bin/env bash
# Usage: tpu_scripts/sweep.sh EXPERIMENT [--name NAME] [--per slice|host] [--set KEY=VALUE]...
#                             [--slice S] [--restart] [--dry-run] [--config FILE] [-- EXTRA_ARGS...]
#
# Run the sweep EXPERIMENT into BUCKET/sweeps/NAME (default NAME: EXPERIMENT), detached on
# every worker, logging to ~/scaling-logs/sweep-NAME.log. One `gcloud ... ssh --worker=all`
# per slice. How the runs are shared out:
#
#   --per slice (default)  each slice is ONE multi-controller JAX program: all its hosts
#       run the same command and train one run at a time together.
#         SLICES=1:  scaling sweep EXPERIMENT --root ROOT                (no --worker)
#         SLICES=n:  scaling sweep EXPERIMENT --root ROOT --worker s/n   on slice s
#   --per host  every host is its own JAX program with its own static share:
#         scaling sweep EXPERIMENT --root ROOT --worker i/N,  i = s*H + w,  N = SLICES*H
#       where w is the host's TPU worker id and H the hosts per slice, both read on the
#       worker from the TPU VM metadata (agent-worker-number, worker-network-endpoints).
#       For single-host slices (v4-8, v5litepod-8, ...). On multi-host slices it refuses to
#       start unless PER_HOST_ENV (config) makes each host a single-host TPU program.
#
#   --slice S   relaunch only slice S (its share is unchanged).
#   --restart   SIGTERM a still-running sweep (it checkpoints) and relaunch it.
#
# Relaunch = run the same command again: finished runs are skipped, cut runs resume from
# their checkpoints (the sweep runner works this out from ROOT).
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

experiment="" name="" per=slice slice="" restart=0 sets=() extra=()
while (($#)); do
  case $1 in
    --name) (($# >= 2)) || die "--name needs a value"; name=$2; shift 2 ;;
    --name=*) name=${1#*=}; shift ;;
    --per) (($# >= 2)) || die "--per needs slice or host"; per=$2; shift 2 ;;
    --per=*) per=${1#*=}; shift ;;
    --set) (($# >= 2)) || die "--set needs KEY=VALUE"; sets+=(--set "$2"); shift 2 ;;
    --set=*) sets+=(--set "${1#*=}"); shift ;;
    --slice) (($# >= 2)) || die "--slice needs a number"; slice=$2; shift 2 ;;
    --slice=*) slice=${1#*=}; shift ;;
    --restart) restart=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -*) common_opt "$@"; shift "$NSHIFT" ;;
    *) [[ -z $experiment ]] || die "one EXPERIMENT only (got '$experiment' and '$1')"; experiment=$1; shift ;;
  esac
done
[[ -n $experiment ]] || die "missing EXPERIMENT (e.g. sweep.sh quickstart; see --help)"
[[ $per == slice || $per == host ]] || die "--per must be 'slice' or 'host', got '$per'"
load_config
select_slices "$slice"
name=${name:-$experiment}
check_name "$name"
root="$BUCKET/sweeps/$name"
job="sweep-$name"

if [[ $per == host ]]; then
  REMOTE_ENV="${REMOTE_ENV:+$REMOTE_ENV }$PER_HOST_ENV"
  REMOTE_ENV=${REMOTE_ENV% }
fi
base=$(scaling_cmd sweep "$experiment" --root "$root")
tail_args=$(quote_cmd "${sets[@]}" "${extra[@]}")

for s in "${SLICE_LIST[@]}"; do
  prelude="" share=""
  if [[ $per == host ]]; then
    prelude=$(join_cmds \
      "md() { curl -sf -H 'Metadata-Flavor: Google' \"http://metadata.google.internal/computeMetadata/v1/instance/attributes/\$1\"; }" \
      'if ! w=$(md agent-worker-number) || ! h=$(md worker-network-endpoints | tr , "\n" | grep -c .); then echo "cannot read the TPU worker id from the metadata server on $(hostname)" >&2; exit 1; fi')
    if [[ -z $PER_HOST_ENV ]]; then
      prelude+='; if [ "$h" -gt 1 ]; then echo "--per host on a $h-host slice needs PER_HOST_ENV in the config (see tpu_scripts/README.md); use --per slice instead" >&2; exit 1; fi'
    fi
    share=" --worker \"\$(($s * h + w))/\$(($SLICES * h))\""
  elif ((SLICES > 1)); then
    share=" --worker $s/$SLICES"
  fi
  cmd="$base$share${tail_args:+ $tail_args}"
  tpu_ssh "$(node_name "$s")" all "$(launch_snippet "$job" "$restart" "$prelude" "$cmd")"
done
