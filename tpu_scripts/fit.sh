#!/usr/bin/env bash
# Usage: tpu_scripts/fit.sh NAME [--out DIR] [--dry-run] [--config FILE] [-- EXTRA_ARGS...]
#
# Fit the scaling laws of the sweep BUCKET/sweeps/NAME and bring the results home:
#   1. on worker 0 of slice 0: scaling fit BUCKET/sweeps/NAME --out ~/scaling-fits/NAME
#   2. gcloud ... scp --recurse that folder to DIR/NAME here (default DIR: out).
# (If your machine can read BUCKET, `scaling fit BUCKET/sweeps/NAME --out DIR` locally
# does the same without a TPU.)
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

name="" out=out extra=()
while (($#)); do
  case $1 in
    --out) (($# >= 2)) || die "--out needs a DIR"; out=$2; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    --) shift; extra=("$@"); break ;;
    -*) common_opt "$@"; shift "$NSHIFT" ;;
    *) [[ -z $name ]] || die "one NAME only"; name=$1; shift ;;
  esac
done
[[ -n $name ]] || die "missing NAME, the sweep's name under BUCKET/sweeps/ (see --help)"
check_name "$name"
load_config

node=$(node_name 0)
remote_out="scaling-fits/$name"
# --out is added unquoted-for-$HOME: the worker's shell must expand it.
fit_cmd="$(scaling_cmd fit "$BUCKET/sweeps/$name") --out \"\$HOME/$remote_out\""
((${#extra[@]})) && fit_cmd+=" $(quote_cmd "${extra[@]}")"
tpu_ssh "$node" 0 "$(join_cmds 'set -euo pipefail' "cd \"$R_CODE\"" "$fit_cmd")"
run mkdir -p "$out"
run gcloud compute tpus tpu-vm scp --recurse "$node:$remote_out" "$out/" "${LOC[@]}" --worker=0
((DRY_RUN)) || note "fit results in $out/$name"
