"""Parameter and FLOP counting: the one place the codebase counts N and C.

Sweeps plan with these numbers, the train loop logs them, and analysis fits with them, so a run's
summary records which convention its C used.

Parameters (decoder-only transformer of lib/models/transformer.py, no biases):
  embedding     = vocab * d_model                 (the token table; a lookup costs no matmul FLOPs)
  non_embedding = everything else, including an untied output head (it is a matmul like any other)
  total         = embedding + non_embedding

FLOPs per token, training (forward + backward), three conventions:
  "6N"         : 6 * N_total                                         (Kaplan et al. 2020, eq. 2.1 simplified)
  "kaplan"     : 6 * N_non_embedding + 6 * n_layers * n_ctx * d_attn (Kaplan et al. 2020, table 1: C_fwd = 2N + 2 n_layer n_ctx d_attn)
  "chinchilla" : 3 * forward, forward counted as in Hoffmann et al. 2022, appendix F:
                   embeddings  2 * V * d
                   per layer   QKV 2*3*d*(H*dh), logits 2*T*(H*dh), softmax 3*H*T,
                               softmax@V 2*T*(H*dh), out proj 2*(H*dh)*d, MLP 2*k*d*f (k=2 gelu, 3 swiglu)
                   logits      2 * d * V
                 (per token: the appendix's per-sequence counts divided by T; full T^2 attention,
                 no causal discount, as in the paper).
"""

from __future__ import annotations

from lib.config import ModelConfig

CONVENTIONS = ("6N", "kaplan", "chinchilla")

# Dense bf16 peak FLOP/s per device (vendor data sheets). Matched against jax's `device_kind`
# by substring, most specific first.
PEAK_FLOPS_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
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
    d, f, V, L = m.d_model, m.ffw_size, m.vocab_size, m.n_layers
    attn = 4 * d * (m.n_heads * m.head_dim)  # q, k, v: d -> H*dh, o: H*dh -> d (H*dh need not equal d)
    mlp = (3 if m.mlp == "swiglu" else 2) * d * f
    norms = 2 * d
    per_layer = attn + mlp + norms
    embedding = V * d
    head = 0 if m.tie_embeddings else d * V
    non_embedding = L * per_layer + d + head  # + final norm
    return {"total": embedding + non_embedding, "embedding": embedding, "non_embedding": non_embedding}


def flops_per_token(m: ModelConfig, seq_len: int, convention: str = "chinchilla") -> float:
    """Training FLOPs (forward + backward) per token of context length `seq_len`."""
    if convention == "6N":
        return 6.0 * param_counts(m)["total"]
    if convention == "kaplan":
        d_attn = m.n_heads * m.head_dim
        return 6.0 * param_counts(m)["non_embedding"] + 6.0 * m.n_layers * seq_len * d_attn
    if convention == "chinchilla":
        return 3.0 * forward_flops_per_token_chinchilla(m, seq_len)
    raise ValueError(f"unknown FLOP convention {convention!r}; choose one of {CONVENTIONS}")


def forward_flops_per_token_chinchilla(m: ModelConfig, seq_len: int) -> float:
    d, f, V, T, H = m.d_model, m.ffw_size, m.vocab_size, seq_len, m.n_heads
    hd = H * m.head_dim
    embeddings = 2 * V * d
    attention = 2 * 3 * d * hd + 2 * T * hd + 3 * H * T + 2 * T * hd + 2 * hd * d
    dense = (3 if m.mlp == "swiglu" else 2) * 2 * d * f
    logits = 2 * d * V
    return float(embeddings + m.n_layers * (attention + dense) + logits)


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
