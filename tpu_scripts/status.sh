#!/usr/bin/env bash
# Usage: tpu_scripts/status.sh [NAME] [--train] [--dry-run] [--config FILE]
#
# Without NAME: the state of each queued resource (gcloud ... queued-resources list).
# With NAME: `scaling status BUCKET/sweeps/NAME` (or BUCKET/runs/NAME with --train), run
# on worker 0 of slice 0 -- which runs are done, running, pending or failed.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

name="" kind=sweeps
while (($#)); do
  case $1 in
    --train) kind=runs; shift ;;
    -*) common_opt "$@"; shift "$NSHIFT" ;;
    *) name=$1; shift ;;
  esac
done
load_config
if [[ -z $name ]]; then
  run gcloud compute tpus queued-resources list "${LOC[@]}" "--filter=name~/$TPU_NAME"
  exit 0
fi
check_name "$name"
tpu_ssh "$(node_name 0)" 0 "cd \"$R_CODE\" && $(scaling_cmd status "$BUCKET/$kind/$name")"
