#!/usr/bin/env bash
# Everything a lent accelerator should tell us, in one command (under 8 minutes on one H100):
# versions and devices, the tests marked `accelerator`, train/pack throughput (MFU), one IsoFLOP
# budget; one JSON (--out, default benchmarks/results/accelerator_check.json) and one table.
#
#   bash benchmarks/accelerator_check.sh                 # the accelerator this machine has
#   bash benchmarks/accelerator_check.sh --cpu-smoke     # CI: the same stages on CPU, tiny shapes, < 1 min
#
# Set-ups:
#   with network:  --install cuda12|cuda13 first runs `pip install -e ".[cuda12]"` (or cuda13) into the
#                  python below (the CUDA 12 wheels need an NVIDIA driver >= 525, CUDA 13's >= 580).
#   offline:       nothing is fetched. The python is $PYTHON, else .venv/bin/python, else python3 on
#                  PATH; it needs jax (with CUDA), flax, optax, orbax-checkpoint and tensorstore (plus
#                  numpy, scipy, fsspec, which they bring); the project runs from this checkout
#                  (PYTHONPATH), so datasets, wandb and gcsfs are not needed. --wheels DIR installs
#                  missing pure-Python wheels from a local folder (pip --no-index --find-links DIR).
#   JAX 0.10.2 on some drivers fails with "Failed to add memset node to a CUDA graph": rerun with
#   --no-command-buffer (XLA_FLAGS=--xla_gpu_enable_command_buffer=).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INSTALL="" WHEELS="" ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --install) INSTALL="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --no-command-buffer) export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer="; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done

if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"
else PY="$(command -v python3 || command -v python)"; fi

if [[ -n "$INSTALL" ]]; then
  case "$INSTALL" in cuda12|cuda13) ;; *) echo "--install: use cuda12 or cuda13, got '$INSTALL'" >&2; exit 2 ;; esac
  "$PY" -m pip install -e "$REPO[$INSTALL]" "pytest>=8" "pytest-timeout>=2.3"
fi
missing=$("$PY" - <<'PY'
import importlib.util
need = {"jax": "jax", "flax": "flax", "optax": "optax", "orbax.checkpoint": "orbax-checkpoint", "tensorstore": "tensorstore", "pytest": "pytest"}
print(" ".join(pip for mod, pip in need.items() if importlib.util.find_spec(mod.split(".")[0]) is None or
                (mod == "orbax.checkpoint" and importlib.util.find_spec(mod) is None)))
PY
)
if [[ -n "$missing" && -n "$WHEELS" ]]; then
  "$PY" -m pip install --no-index --find-links "$WHEELS" $missing
elif [[ -n "$missing" ]]; then
  echo "missing for $PY: $missing -- install them (--install cuda12|cuda13 with network, --wheels DIR offline) or set PYTHON" >&2
  exit 2
fi

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec "$PY" "$REPO/benchmarks/accelerator_check.py" ${ARGS[@]+"${ARGS[@]}"}
