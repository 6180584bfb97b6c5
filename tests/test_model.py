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


def test_weight_gradients_contract_over_one_token_dim():
    """Every dense layer's weight gradient contracts over the tokens as one flattened dim, never over
    batch and time as two (XLA:CPU transposed the activation gradient for those: token_einsum).
    Batch 3 and time 5 are sizes no model dim has, so a contraction over both is recognisable."""
    for shape in SHAPES[:3]:
        cfg = ModelConfig(**{"vocab_size": 64, **shape})
        model, params = _init(cfg, T=5)
        tokens = jnp.zeros((3, 5), jnp.int32)
        jaxpr = jax.make_jaxpr(jax.grad(lambda p: model.apply({"params": p}, tokens).mean()))(params).jaxpr
        contracted = []

        def walk(jaxpr):
            for eqn in jaxpr.eqns:
                if eqn.primitive.name == "dot_general":
                    (lhs_c, rhs_c), _ = eqn.params["dimension_numbers"]
                    for v, dims in zip(eqn.invars, (lhs_c, rhs_c)):
                        contracted.append(sorted(v.aval.shape[d] for d in dims))
                for p in eqn.params.values():
                    for sub in p if isinstance(p, (list, tuple)) else [p]:
                        inner = getattr(sub, "jaxpr", sub)
                        if hasattr(inner, "eqns"):
                            walk(inner)

        walk(jaxpr)
        assert [15] in contracted  # the weight gradients, over 3 x 5 tokens as one dim
        assert not [c for c in contracted if 3 in c and 5 in c], contracted


@pytest.mark.parametrize("spec,x_shape,w_shape", [
    ("...d,df->...f", (3, 5, 8), (8, 12)),
    ("...d,cdhk->c...hk", (3, 5, 8), (3, 8, 2, 4)),
    ("...hk,hkd->...d", (3, 5, 2, 4), (2, 4, 8)),
    ("...d,vd->...v", (3, 5, 8), (11, 8)),
])
def test_token_einsum_is_the_einsum_with_batch_and_time(spec, x_shape, w_shape):
    from lib.models.layers import token_einsum

    rng = np.random.default_rng(0)
    x, w = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in (x_shape, w_shape))
    plain = spec.replace("...", "bt")
    y, vjp = jax.vjp(lambda x, w: token_einsum(spec, x, w), x, w)
    y_ref, vjp_ref = jax.vjp(lambda x, w: jnp.einsum(plain, x, w), x, w)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    for a, b in zip(vjp(g), vjp_ref(g)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_softmax_is_jax_softmax_with_its_gradient():
    from lib.models.layers import softmax

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 3, 7, 7)) * 4, jnp.float32)
    x = jnp.where(jnp.tril(jnp.ones((7, 7), bool)), x, -0.7 * float(jnp.finfo(jnp.float32).max))  # the causal mask
    np.testing.assert_array_equal(softmax(x), jax.nn.softmax(x, axis=-1))  # the same forward ops
    g = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    (dx,), (dx_ref,) = jax.vjp(softmax, x)[1](g), jax.vjp(lambda x: jax.nn.softmax(x, axis=-1), x)[1](g)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(dx).max()) > 0.1  # not vacuous


@pytest.mark.parametrize("T", [100, 512])
def test_blocked_causal_attention_is_jax_attention_without_the_masked_blocks(T):
    """Causal attention over T >= 64 positions attends in blocks of query rows (3 uneven ones at
    T = 100; at most 8, of 64 rows, at T = 512):
    the same values as jax.nn.dot_product_attention (its XLA path), gradients to float rounding,
    and no logits tensor as wide as T x T is computed."""
    from lib.models.layers import attention_xla

    rng = np.random.default_rng(0)
    q, k, v, g = (jnp.asarray(rng.standard_normal((2, 3, T, 8)), jnp.float32) for _ in range(4))
    fn = lambda q, k, v: attention_xla(q, k, v, None, True)  # noqa: E731
    ref = lambda q, k, v: jax.nn.dot_product_attention(  # noqa: E731
        *(x.transpose(0, 2, 1, 3) for x in (q, k, v)), is_causal=True, implementation="xla").transpose(0, 2, 1, 3)
    value_and_vjp = lambda f: jax.jit(lambda q, k, v, g: (lambda o, vjp: (o, vjp(g)))(*jax.vjp(f, q, k, v)))  # noqa: E731
    o, grads = value_and_vjp(fn)(q, k, v, g)
    o_ref, grads_ref = value_and_vjp(ref)(q, k, v, g)
    np.testing.assert_allclose(o, o_ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, grads_ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        assert float(jnp.abs(b).max()) > 0.1  # not vacuous
    logits = [e.outvars[0].aval.shape for e in jax.make_jaxpr(jax.grad(lambda q: fn(q, k, v).sum()))(q).eqns
              if e.primitive.name == "dot_general" and len(e.outvars[0].aval.shape) == 4]
    widest = max(s[2] * s[3] for s in logits)
    assert widest < T * T, f"a {T} x {T} logits tensor was computed: {logits}"
    # the blocks cover the causal square's lower triangle and its diagonal blocks, well under the whole
    assert sum(s[2] * s[3] for s in logits if s[3] != 8) / 2 < 0.7 * T * T
