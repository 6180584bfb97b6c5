"""FLOP conventions against hand computations for one stated config, and MFU lookup."""

import pytest

from lib.config import ModelConfig
from lib.flops import flops_per_token, mfu, param_counts, peak_flops_per_device

# d=128, L=4, H=4 (dh=32), f=512, V=1000, tied, gelu; context T=256.
CFG = ModelConfig(vocab_size=1000, d_model=128, n_layers=4, n_heads=4, d_ff=512)
T = 256


def test_param_counts_by_hand():
    # per layer: attention 4*128*128 = 65536, MLP 2*128*512 = 131072, two norms 256 -> 196864
    # 4 layers = 787456, final norm 128 -> non-embedding 787584; embedding 1000*128 = 128000
    assert param_counts(CFG) == {"total": 915584, "embedding": 128000, "non_embedding": 787584, "active": 915584}  # dense: active = total


def test_6n_by_hand():
    assert flops_per_token(CFG, T, "6N") == 6 * 915584


def test_kaplan_by_hand():
    # 6 * N_nonembed + 6 * n_layer * n_ctx * d_attn = 6*787584 + 6*4*256*128
    assert flops_per_token(CFG, T, "kaplan") == 4725504 + 786432


def test_chinchilla_appendix_f_by_hand():
    # Per token, forward (Hoffmann et al. 2022, app. F, per-sequence counts / seq_len):
    embeddings = 2 * 1000 * 128                 # 256000
    qkv = 2 * 3 * 128 * 128                     # 98304
    logits_qk = 2 * 256 * 128                   # 65536
    softmax = 3 * 4 * 256                       # 3072
    reduce_v = 2 * 256 * 128                    # 65536
    out = 2 * 128 * 128                         # 32768
    dense = 2 * (128 * 512 + 128 * 512)         # 262144
    final_logits = 2 * 128 * 1000               # 256000
    forward = embeddings + 4 * (qkv + logits_qk + softmax + reduce_v + out + dense) + final_logits
    assert forward == 2621440  # 512000 + 4 * 527360
    assert flops_per_token(CFG, T, "chinchilla") == 3 * forward


def test_swiglu_counts_three_matrices():
    g = ModelConfig(vocab_size=1000, d_model=128, n_layers=4, n_heads=4, d_ff=512, mlp="swiglu")
    assert param_counts(g)["non_embedding"] - param_counts(CFG)["non_embedding"] == 4 * 128 * 512
    assert flops_per_token(g, T, "chinchilla") - flops_per_token(CFG, T, "chinchilla") == 3 * 4 * 2 * 128 * 512


def test_unknown_convention_is_an_error():
    with pytest.raises(ValueError, match="chinchilla"):
        flops_per_token(CFG, T, "7N")


def test_mfu_uses_the_peak_table_and_is_empty_on_cpu():
    assert peak_flops_per_device("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_per_device("NVIDIA H100 PCIe") == 756e12
    # the data sheets' "with sparsity" figures halved: NVL 1,671 TFLOPS, A100 624, L40S 733
    assert peak_flops_per_device("NVIDIA H100 NVL") == peak_flops_per_device("NVIDIA H200 NVL") == 835e12
    assert peak_flops_per_device("NVIDIA H200") == peak_flops_per_device("NVIDIA GH200 480GB") == 989e12
    assert peak_flops_per_device("NVIDIA A100-SXM4-80GB") == peak_flops_per_device("NVIDIA A100 80GB PCIe") == 312e12
    assert peak_flops_per_device("NVIDIA L40S") == 366e12 and peak_flops_per_device("NVIDIA L4") == 121e12
    assert peak_flops_per_device("TPU v5 lite") == 197e12
    assert peak_flops_per_device("TPU v4") == 275e12
    assert mfu(494.5e12 * 2, "NVIDIA H200", 2) == pytest.approx(0.5)
    assert mfu(1e9, "cpu", 1) is None


def _tree_params(cfg: ModelConfig) -> dict[str, int]:
    """Parameter counts read off the real model's parameter tree (shapes only, via jax.eval_shape)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lib.models.transformer import make_model

    shapes = jax.eval_shape(lambda: nn.unbox(make_model(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]))
    flat = {jax.tree_util.keystr(path): int(np.prod(leaf.shape)) for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)}
    total = sum(flat.values())
    return {"total": total, "embedding": flat["['embed']"], "attention": sum(v for k, v in flat.items() if "'attn'" in k)}


class _WideHeads(ModelConfig):
    """A head_dim option (the config derives d_model // n_heads): here 2 * d_model // n_heads, so H*dh = 2d."""

    @property
    def head_dim(self) -> int:
        return 2 * self.d_model // self.n_heads


@pytest.mark.parametrize("cfg", [
    CFG,
    ModelConfig(vocab_size=64, d_model=48, n_layers=3, n_heads=4, mlp="swiglu", tie_embeddings=False, d_ff=80),
    ModelConfig(vocab_size=100, d_model=32, n_layers=2, n_heads=2, scan_layers=True),
    _WideHeads(vocab_size=64, d_model=32, n_layers=2, n_heads=4),
], ids=["by-hand", "swiglu-untied", "scanned", "h-times-dh-is-2d"])
def test_param_counts_equal_the_model_parameter_tree(cfg):
    tree = _tree_params(cfg)
    counts = param_counts(cfg)
    assert counts["total"] == tree["total"]
    assert counts["embedding"] == tree["embedding"]
    assert tree["attention"] == cfg.n_layers * 4 * cfg.d_model * cfg.n_heads * cfg.head_dim
    if isinstance(cfg, _WideHeads):
        assert cfg.n_heads * cfg.head_dim == 2 * cfg.d_model  # the shape the old 4*d*d count got wrong
