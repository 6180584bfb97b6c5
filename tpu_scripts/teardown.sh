#!/usr/bin/env bash
# Usage: tpu_scripts/teardown.sh [--yes] [--slice S] [--async] [--dry-run] [--config FILE]
#
# Delete the queued resource(s) and their TPU VMs (--force). Everything on the workers is
# lost; what matters lives in BUCKET (checkpoints, metrics, the run store).
#
#   --yes      do not ask for confirmation (required when stdin is not a terminal).
#   --slice S  only slice S (default: every slice).
#   --async    return without waiting for the deletion to finish.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

yes=0 slice="" async=()
while (($#)); do
  case $1 in
    --yes | -y) yes=1; shift ;;
    --slice) (($# >= 2)) || die "--slice needs a number"; slice=$2; shift 2 ;;
    --slice=*) slice=${1#*=}; shift ;;
    --async) async=(--async); shift ;;
    *) common_opt "$@"; shift "$NSHIFT" ;;
  esac
done
load_config
select_slices "$slice"

names=()
for s in "${SLICE_LIST[@]}"; do names+=("$(node_name "$s")"); done
if ((!DRY_RUN && !yes)); then
  [[ -t 0 ]] || die "refusing to delete ${names[*]} without confirmation: pass --yes"
  read -r -p "Delete queued resource(s) ${names[*]} in $PROJECT/$ZONE and their TPU VMs? [y/N] " answer
  [[ $answer == [yY]* ]] || die "aborted"
fi
# --quiet: we asked already (or were told --yes); gcloud must not prompt again.
for n in "${names[@]}"; do
  run gcloud compute tpus queued-resources delete "$n" "${LOC[@]}" --force --quiet "${async[@]}"
done
