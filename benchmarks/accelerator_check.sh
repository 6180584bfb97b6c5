#!/usr/bin/env bash
# Everything a lent accelerator should tell us, in one command (under 8 minutes on one H100):
# versions and devices, the tests marked `accelerator`, train/pack throughput (MFU), one IsoFLOP
# budget; one JSON (--out, default benchmarks/results/accelerator_check.json) and one table.
#
#   bash benchmarks/accelerator_check.sh                 # the accelerator this machine has
#   bash benchmarks/accelerator_check.sh --cpu-smoke     # CI: the same stages on CPU, tiny shapes, < 1 min
#
# Set-ups:
#   with network:  --install cuda12|cuda13 first runs `pip install -e ".[cuda12]"` (or cuda13) and pytest
#                  into the python below (CUDA 12 wheels need an NVIDIA driver >= 525, CUDA 13's >= 580).
#                  The download's time depends on the network, not the GPU: it comes before the stages'
#                  budget, not out of it, and the table reports it ("setup").
#   offline:       nothing is fetched. The python is $PYTHON, else .venv/bin/python, else python3 on
#                  PATH, with this checkout on PYTHONPATH (no install); it needs jax with its CUDA
#                  plugin, flax, optax, orbax-checkpoint, tensorstore (and what they bring: numpy, scipy,
#                  fsspec, ...), and pytest for the tests stage. datasets, wandb, gcsfs, pandas,
#                  matplotlib, tokenizers, tqdm are not needed. --wheels DIR first installs what is
#                  missing from a local folder of wheels (pip install --no-index --find-links DIR).
# Other options go to benchmarks/accelerator_check.py: --out FILE, --budget-s S, --stages NAME..,
# --allow-cpu. Exit code 0: every stage passed; 1: a stage failed (see the table); 2: cannot start.
# A stage that fails inside XLA's CUDA graphs ("command buffer", "CUDA graph" in its error; seen with
# some driver/JAX pairs) is rerun once with XLA_FLAGS=--xla_gpu_enable_command_buffer= (and the later
# stages with it); --no-command-buffer sets that from the start.
set -euo pipefail
export ACCELERATOR_CHECK_STARTED="${ACCELERATOR_CHECK_STARTED:-$(date +%s.%N)}"  # the setup's time is reported beside the budget
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INSTALL="" WHEELS="" ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --install) INSTALL="${2:?--install needs cuda12 or cuda13}"; shift 2 ;;
    --wheels) WHEELS="${2:?--wheels needs a folder of wheels}"; shift 2 ;;
    --no-command-buffer) export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer="; shift ;;
    -h|--help) awk 'NR > 1 && /^set -euo/ {exit} NR > 1' "$0"; exit 0 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done

if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"
else PY="$(command -v python3 || command -v python)"; fi

# This checkout, then where --wheels installs when pip may not write into the python's own site-packages
# (a system python under PEP 668): no install of the project itself is needed.
SITE="$REPO/benchmarks/results/site-packages"
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "$PY is Python < 3.11: set PYTHON to a newer one" >&2; exit 2; }
if [[ -n "$INSTALL" ]]; then
  case "$INSTALL" in cuda12|cuda13) ;; *) echo "--install: use cuda12 or cuda13, got '$INSTALL'" >&2; exit 2 ;; esac
  "$PY" -m pip install -e "$REPO[$INSTALL]" "pytest>=8" "pytest-timeout>=2.3"
fi
# module -> its pip name; the first five are required, pytest only for the tests stage (recorded there when absent)
missing() {
  "$PY" - "$@" <<'PY'
import importlib.util, sys
pip = {"jax": "jax", "flax": "flax", "optax": "optax", "orbax.checkpoint": "orbax-checkpoint", "tensorstore": "tensorstore", "pytest": "pytest"}
def absent(mod):
    try:
        return importlib.util.find_spec(mod) is None
    except ImportError:  # orbax present, orbax.checkpoint not
        return True
print(" ".join(pip[m] for m in sys.argv[1:] if absent(m)))
PY
}
REQUIRED=(jax flax optax orbax.checkpoint tensorstore)
if [[ -n "$WHEELS" ]]; then  # offline: what is missing, from a local folder of wheels, one at a time
  for pkg in $(missing "${REQUIRED[@]}" pytest); do
    "$PY" -m pip install --no-index --find-links "$WHEELS" "$pkg" \
      || "$PY" -m pip install --no-index --find-links "$WHEELS" --target "$SITE" "$pkg" \
      || echo "warning: could not install $pkg from $WHEELS" >&2
  done
fi
need=$(missing "${REQUIRED[@]}")
if [[ -n "$need" ]]; then
  echo "missing for $PY: $need -- install them (--install cuda12|cuda13 with network, --wheels DIR offline) or set PYTHON" >&2
  exit 2
fi
[[ -z "$(missing pytest)" ]] || echo "warning: pytest is missing for $PY: the tests stage will fail (--wheels DIR installs it offline)" >&2
echo "python: $PY"

export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec "$PY" "$REPO/benchmarks/accelerator_check.py" ${ARGS[@]+"${ARGS[@]}"}
