"""The transformer: causality, closed-form parameter counts, scan/remat equivalence."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib.config import ModelConfig
from lib.flops import param_counts
from lib.models.transformer import make_model

SHAPES = [
    dict(d_model=32, n_layers=1, n_heads=2),
    dict(d_model=48, n_layers=3, n_heads=4, mlp="swiglu"),
    dict(d_model=64, n_layers=2, n_heads=8, tie_embeddings=False, d_ff=96),
    dict(d_model=32, n_layers=4, n_heads=4, scan_layers=True, vocab_size=100),
]


def _init(cfg, T=16, seed=0):
    model = make_model(cfg)
    params = nn.unbox(model.init(jax.random.key(seed), jnp.zeros((1, T), jnp.int32))["params"])
    return model, params


@pytest.mark.parametrize("shape", SHAPES)
def test_param_counts_match_the_parameter_tree(shape):
    cfg = ModelConfig(**{"vocab_size": 64, **shape})
    _, params = _init(cfg)
    tree_total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    counts = param_counts(cfg)
    assert counts["total"] == tree_total
    assert counts["embedding"] == params["embed"].size
    assert counts["non_embedding"] == tree_total - params["embed"].size


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_causal_logits_up_to_t_ignore_later_tokens(shape):
    cfg = ModelConfig(**{"vocab_size": 64, **shape})
    model, params = _init(cfg, T=24)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 64, size=(2, 24)).astype(np.int32)
    t = 11
    b = a.copy()
    b[:, t + 1 :] = rng.integers(0, 64, size=(2, 24 - t - 1))
    la, lb = model.apply({"params": params}, a), model.apply({"params": params}, b)
    np.testing.assert_allclose(la[:, : t + 1], lb[:, : t + 1], rtol=1e-5, atol=1e-5)
    # ...and the later logits do change, so the check above is not vacuous.
    assert np.abs(np.asarray(la[:, t + 1 :] - lb[:, t + 1 :])).max() > 1e-3


def test_scanned_layers_compute_the_same_function_as_unrolled_layers():
    base = dict(vocab_size=64, d_model=32, n_layers=3, n_heads=4, mlp="swiglu")
    model_u, params_u = _init(ModelConfig(**base))
    model_s, _ = _init(ModelConfig(**base, scan_layers=True))
    # Stack the unrolled layers' weights along a leading "layers" axis: the scanned layout.
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[params_u[f"layer_{i}"] for i in range(3)])
    params_s = {"embed": params_u["embed"], "ln_f": params_u["ln_f"], "layers": {"block": stacked}}
    tokens = np.random.default_rng(1).integers(0, 64, size=(2, 16)).astype(np.int32)
    np.testing.assert_allclose(
        model_s.apply({"params": params_s}, tokens), model_u.apply({"params": params_u}, tokens), rtol=2e-5, atol=2e-5
    )


@pytest.mark.parametrize("scan", [False, True])
def test_remat_gives_the_same_gradients(scan):
    base = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, scan_layers=scan)
    model, params = _init(ModelConfig(**base))
    model_r = make_model(ModelConfig(**base, remat=True))
    tokens = np.random.default_rng(2).integers(0, 64, size=(2, 16)).astype(np.int32)

    def loss(m):
        return lambda p: m.apply({"params": p}, tokens).mean()

    g, g_r = jax.grad(loss(model))(params), jax.grad(loss(model_r))(params)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), g, g_r)


def matmul_dtypes(fn, *args) -> list[str]:
    """The operand dtypes of every matmul and convolution `fn(*args)` traces to (nested jaxprs of
    scans, remat and jit included): what compute_dtype must change."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
                found.append("/".join(str(v.aval.dtype) for v in eqn.invars[:2]))
            for v in eqn.params.values():
                for sub in v if isinstance(v, (list, tuple)) else [v]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, compute_dtype="bfloat16")
    model, params = _init(cfg)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    logits = model.apply({"params": params}, jnp.zeros((1, 8), jnp.int32))
    assert logits.dtype == jnp.float32
    ref_model = make_model(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4))
    ref = ref_model.apply({"params": params}, jnp.zeros((1, 8), jnp.int32))
    np.testing.assert_allclose(logits, ref, atol=5e-2)  # bf16 rounding, not a different function
    # the matmuls themselves run in bf16 (a model ignoring compute_dtype would pass the checks above)
    tokens = jnp.zeros((1, 8), jnp.int32)
    mm = matmul_dtypes(lambda p: model.apply({"params": p}, tokens), params)
    assert mm and all(d == "bfloat16/bfloat16" for d in mm), mm
    assert set(matmul_dtypes(lambda p: ref_model.apply({"params": p}, tokens), params)) == {"float32/float32"}


def test_every_parameter_carries_logical_axis_names():
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, tie_embeddings=False, scan_layers=True)
    boxed = make_model(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
    assert all(len(x.names) == x.value.ndim for x in leaves)
    assert all(x.names[0] == "layers" for x in jax.tree.leaves(boxed["layers"], is_leaf=lambda x: isinstance(x, nn.Partitioned)))
