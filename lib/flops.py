"""Parameter and FLOP counting: the one place the codebase counts N and C.

Sweeps plan with these numbers, the train loop logs them, and analysis fits with them, so a run's
summary records which convention its C used. Each model family owns its closed forms
(lib/models/base.py states the contract and the shared pieces); this module dispatches on
`model.family` and is what every other part of the code calls.

Parameters:
  embedding     = vocab * d_model                 (the token table; a lookup costs no matmul FLOPs)
  non_embedding = everything else, including an untied output head (it is a matmul like any other)
  total         = embedding + non_embedding
  active        = what one token passes through: total for dense families; for moe the top_k experts
                  of each layer plus the router, not every expert (embedding included, like total)

FLOPs per token, training (forward + backward), three conventions:
  "6N"         : 6 * N_active (= N_total for dense families)          (Kaplan et al. 2020, eq. 2.1 simplified)
  "kaplan"     : 6 * N_active_non_embedding + 6 * n_layers * n_ctx * d_attn (attention families; Kaplan et al.
                 2020, table 1: C_fwd = 2N + 2 n_layer n_ctx d_attn), + 0 for recurrent, mlp and cnn
  "chinchilla" : 3 * forward, forward counted as in Hoffmann et al. 2022, appendix F:
                   embeddings  2 * V * d
                   per layer   the family's matmuls, 2 x multiply-accumulates. Transformer: QKV 2*3*d*(H*dh),
                               logits 2*T*(H*dh), softmax 3*H*T, softmax@V 2*T*(H*dh), out proj 2*(H*dh)*d,
                               MLP 2*k*d*f (k=2 gelu, 3 swiglu); moe: the MLP replaced by the router
                               2*d*E + top_k expert MLPs; lstm/gru/mlp/cnn: see their modules
                   logits      2 * d * V
                 (per token: the appendix's per-sequence counts divided by T; full T^2 attention,
                 no causal discount, as in the paper).
"""

from __future__ import annotations

from lib import models
from lib.config import ModelConfig, RunConfig, units_per_row

CONVENTIONS = ("6N", "kaplan", "chinchilla")

# Dense (no 2:4 sparsity) bf16 peak FLOP/s per device, matched against jax's `device_kind` by
# substring, first match wins (so the specific names come before the families). Sources: NVIDIA's
# data sheets, whose tensor-core figures are "with sparsity", halved here: H100 (SXM 1,979 TFLOPS,
# PCIe 1,513, NVL 1,671; nvidia.com/en-us/data-center/h100), H200 (SXM 1,979, NVL 1,671;
# nvidia.com/en-us/data-center/h200), GH200 (1,979; nvidia.com/en-us/data-center/grace-hopper-superchip),
# A100 (312 dense, SXM and PCIe; nvidia.com/en-us/data-center/a100), L40S (733), L40 (362), L4 (242;
# nvidia.com/en-us/data-center/l40s, /l40, /l4);
# Cloud TPU system-architecture pages for the TPUs (cloud.google.com/tpu/docs/system-architecture-tpu-vm).
PEAK_FLOPS_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H200 NVL", 835e12),
    ("GH200", 989e12),
    ("H100", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989e12),  # SXM ("NVIDIA H200")
    ("A100", 312e12),
    ("L40S", 366e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12),
    ("TPU v6e", 918e12),
)


def param_counts(m: ModelConfig) -> dict[str, int]:
    """total, embedding, non_embedding and active (= total unless the family routes tokens)."""
    counts = dict(models.family(m).param_counts(m))
    counts.setdefault("active", counts["total"])
    return counts


def flops_per_token(m: ModelConfig, seq_len: int, convention: str = "chinchilla") -> float:
    """Training FLOPs (forward + backward) per token of context length `seq_len`."""
    return models.family(m).flops_per_token(m, seq_len, convention)


def run_flops(cfg: RunConfig, steps: int | None = None, *, convention: str | None = None, global_batch: int | None = None,
              start: int = 0) -> float:
    """A run's compute C: training FLOPs over its first `steps` steps (default: all, train.steps) =
    units (steps x global_batch x units per row: tokens, or images) x FLOPs per unit, in `convention`
    (default the run's train.flops_convention). `global_batch` overrides the config's (a plan trying
    batches). `start` > 0: only the steps after `start`, C x (steps - start) / steps -- what a run
    initialised from another's state at step `start` trains itself (lib/sweeps/cooldowns.py).
    The plans, the loop's metrics and summary, cooldowns and the executors' progress all call this."""
    T = units_per_row(cfg)
    steps = cfg.train.steps if steps is None else steps
    units = steps * (cfg.data.global_batch if global_batch is None else global_batch) * T
    c = units * flops_per_token(cfg.model, T, convention or cfg.train.flops_convention)
    return c * (steps - start) / steps if start else c


def forward_flops_per_token(m: ModelConfig, seq_len: int) -> float:
    """The family's closed-form forward FLOPs per token (appendix-F style; chinchilla = 3x this)."""
    return float(models.family(m).forward_flops(m, seq_len))


def forward_flops_per_token_chinchilla(m: ModelConfig, seq_len: int) -> float:
    return forward_flops_per_token(m, seq_len)


def peak_flops_per_device(device_kind: str) -> float | None:
    """Dense bf16 peak of one device, or None when unknown (e.g. CPU: report FLOP/s, not MFU)."""
    for key, peak in PEAK_FLOPS_BF16:
        if key.lower() in device_kind.lower():
            return peak
    return None


def mfu(flops_per_second: float, device_kind: str, n_devices: int) -> float | None:
    peak = peak_flops_per_device(device_kind)
    if peak is None:
        return None
    return flops_per_second / (peak * n_devices)
