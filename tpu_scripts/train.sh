#!/usr/bin/env bash
# Usage: tpu_scripts/train.sh EXPERIMENT [--name NAME] [--set KEY=VALUE]... [--slice S]
#                             [--restart] [--dry-run] [--config FILE] [-- EXTRA_ARGS...]
#
# One training run on ALL workers of one slice at once (multi-controller JAX: every host
# runs the same command, jax.distributed.initialize() finds its peers on a TPU VM):
#   scaling train --config experiments/EXPERIMENT.py --workdir BUCKET/runs/NAME [--set ...]
# detached on each worker (setsid + nohup) with output in ~/scaling-logs/train-NAME.log;
# follow it with logs.sh.
#
#   EXPERIMENT   a name in experiments/ (or a path ending in .py, relative to the repo).
#   --name NAME  the run's name under BUCKET/runs/ (default: the experiment's name).
#   --slice S    which slice runs it when SLICES > 1 (default 0).
#   --restart    if the job is still running, SIGTERM it (it checkpoints) and relaunch.
#
# Relaunch = run the same command again: the run resumes from its last checkpoint in the
# workdir (after a preemption, or after --restart).
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

experiment="" name="" slice=0 restart=0 sets=() extra=()
while (($#)); do
  case $1 in
    --name) (($# >= 2)) || die "--name needs a value"; name=$2; shift 2 ;;
    --name=*) name=${1#*=}; shift ;;
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
[[ -n $experiment ]] || die "missing EXPERIMENT (e.g. train.sh quickstart; see --help)"
load_config
select_slices "$slice"

if [[ $experiment == *.py ]]; then config=$experiment; else config="experiments/$experiment.py"; fi
name=${name:-$(basename "$experiment" .py)}
check_name "$name"

cmd=$(scaling_cmd train --config "$config" --workdir "$BUCKET/runs/$name" "${sets[@]}" "${extra[@]}")
tpu_ssh "$(node_name "${SLICE_LIST[0]}")" all "$(launch_snippet "train-$name" "$restart" "" "$cmd")"
