#!/usr/bin/env bash
# Usage: tpu_scripts/create.sh [--spot | --no-spot] [--wait] [--slice S] [--dry-run] [--config FILE]
#
# Request the TPU slice(s) as queued resources: one queued resource per slice, named
# TPU_NAME (or TPU_NAME-0, TPU_NAME-1, ... when SLICES > 1), each holding one TPU VM node
# of ACCELERATOR_TYPE with RUNTIME_VERSION.
#
#   --spot / --no-spot  Spot (preemptible) capacity or not; default: SPOT in the config.
#   --wait              poll until every queued resource is ACTIVE (fails on FAILED/SUSPENDED).
#   --slice S           only slice S.
#   --dry-run           print the gcloud commands instead of running them.
#
# Separate queued resources rather than one with --node-count: --node-count provisions a
# Multislice, whose slices are joined into ONE JAX program (MEGASCALE_* env), while here
# every slice trains its own share of a sweep.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

spot="" wait=0 slice=""
while (($#)); do
  case $1 in
    --spot) spot=true; shift ;;
    --no-spot) spot=false; shift ;;
    --wait) wait=1; shift ;;
    --slice) (($# >= 2)) || die "--slice needs a number"; slice=$2; shift 2 ;;
    --slice=*) slice=${1#*=}; shift ;;
    *) common_opt "$@"; shift "$NSHIFT" ;;
  esac
done
load_config
spot=${spot:-$SPOT}
select_slices "$slice"

for s in "${SLICE_LIST[@]}"; do
  name=$(node_name "$s")
  flags=("--node-id=$name" "${LOC[@]}" "--accelerator-type=$ACCELERATOR_TYPE"
    "--runtime-version=$RUNTIME_VERSION")
  [[ $spot == true ]] && flags+=(--spot)
  run gcloud compute tpus queued-resources create "$name" "${flags[@]}"
done

((wait)) || exit 0
poll=${TPU_POLL_SECONDS:-30}
for s in "${SLICE_LIST[@]}"; do
  name=$(node_name "$s")
  describe=(gcloud compute tpus queued-resources describe "$name" "${LOC[@]}" '--format=value(state.state)')
  if ((DRY_RUN)); then run "${describe[@]}"; continue; fi
  last=""
  while :; do
    state=$("${describe[@]}")
    [[ $state != "$last" ]] && note "$name: $state"
    last=$state
    case $state in
      ACTIVE) break ;;
      FAILED | SUSPENDED | SUSPENDING) die "queued resource $name is $state (see: gcloud compute tpus queued-resources describe $name --project=$PROJECT --zone=$ZONE)" ;;
    esac
    sleep "$poll"
  done
done
