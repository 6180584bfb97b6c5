"""Batched L-BFGS in JAX: thousands of small, independent minimisations advancing in lockstep.

Why not `vmap` over optax.lbfgs: under `vmap` its zoom line search (nested while loops and
conds) runs every branch for every start, about 1 ms per start per iteration on CPU; here a start
costs one batched value-and-gradient per iteration. The algorithm is the textbook one (Nocedal &
Wright, Numerical Optimization, algorithms 7.4-7.5): two-loop recursion over the last `memory`
pairs, a backtracking Armijo line search from the unit step (quadratic interpolation, factor
clipped to [0.1, 0.5]), pairs with s.y <= eps |y|^2 skipped.

Finished starts leave the batch: the loop runs `chunk` iterations inside one jitted while loop,
then the host drops the finished starts once the rest fit a batch of 1024 or 256 rows (few
shapes, so few compilations).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ACTIVE = -1
STATUS = ("gradient small", "no relative progress", "max iterations", "non-finite objective", "line search failed")
CONVERGED = (0, 1)


@dataclass(frozen=True)
class LbfgsConfig:
    maxiter: int = 500
    gtol: float = 1e-10  # converged when max |gradient| <= gtol
    ftol: float = 1e-11  # converged when (f_prev - f) <= ftol * |f|
    memory: int = 10
    max_linesearch: int = 40
    armijo_c1: float = 1e-4
    chunk: int = 10  # iterations between host-side compactions
    shrink: bool = True  # drop finished starts from the batch (a compilation per new size)


class Tol(NamedTuple):
    """The run-time settings (arrays, not compile-time constants)."""

    maxiter: jax.Array
    gtol: jax.Array
    ftol: jax.Array
    c1: jax.Array
    max_linesearch: jax.Array


class State(NamedTuple):
    x: jax.Array  # [S, k]
    f: jax.Array  # [S]
    g: jax.Array  # [S, k]
    s_hist: jax.Array  # [S, m, k]
    y_hist: jax.Array  # [S, m, k]
    rho: jax.Array  # [S, m]  (0 marks an empty or skipped slot)
    gamma: jax.Array  # [S]     initial inverse-Hessian scale
    it: jax.Array  # [S] int32
    status: jax.Array  # [S] int32, ACTIVE while running
    ptr: jax.Array  # [] int32, next history slot (all active starts move in lockstep)
    evals: jax.Array  # [] int32, batched objective evaluations so far (a cost diagnostic)


def _dot(a, b):
    return jnp.sum(a * b, axis=-1)


def _direction(st: State, memory: int) -> jax.Array:
    """-H g by the two-loop recursion, newest pair first (scans keep the compiled program small)."""
    order = (st.ptr - 1 - jnp.arange(memory)) % memory  # newest to oldest
    s_h = jnp.moveaxis(st.s_hist, 1, 0)[order]  # [m, S, k]
    y_h = jnp.moveaxis(st.y_hist, 1, 0)[order]
    rho = jnp.moveaxis(st.rho, 1, 0)[order]  # [m, S]

    def first(q, syr):
        s, y, r = syr
        a = r * _dot(s, q)
        return q - a[:, None] * y, a

    q, alphas = jax.lax.scan(first, st.g, (s_h, y_h, rho))
    z = st.gamma[:, None] * q

    def second(z, syra):
        s, y, r, a = syra
        b = r * _dot(y, z)
        return z + (a - b)[:, None] * s, None

    z, _ = jax.lax.scan(second, z, (s_h, y_h, rho, alphas), reverse=True)
    return -z


def _step(vg: Callable, memory: int, tol: "Tol", st: State, aux, shared) -> State:
    active = st.status == ACTIVE
    d = _direction(st, memory)
    gd = _dot(st.g, d)
    fresh = (st.it == 0) | ~(gd < 0) | ~jnp.isfinite(gd)  # first step or not a descent direction
    d = jnp.where(fresh[:, None], -st.g, d)
    gd = jnp.where(fresh, -_dot(st.g, st.g), gd)
    t0 = jnp.where(fresh, jnp.minimum(1.0, 1.0 / jnp.maximum(jnp.sum(jnp.abs(st.g), -1), 1e-300)), 1.0)

    def armijo(t, f_t):
        return jnp.isfinite(f_t) & (f_t <= st.f + tol.c1 * t * gd)

    # Value and gradient at the first trial step for every row (usually accepted). Backtracking
    # evaluates just the rows still searching, gathered into a buffer of `width` rows, so the few
    # starts that need many halvings do not make every start pay.
    f0, g0 = vg(st.x + t0[:, None] * d, aux, shared)
    ok0 = armijo(t0, f0) | ~active
    S = st.x.shape[0]
    width = min(S, max(32, S // 16))

    def ls_cond(c):
        t, f_t, g_t, ok, n_bt = c
        return jnp.any(~ok & (n_bt < tol.max_linesearch))

    def ls_body(c):
        t, f_t, g_t, ok, n_bt = c
        pending = ~ok & (n_bt < tol.max_linesearch)
        (rows,) = jnp.nonzero(pending, size=width, fill_value=S)
        valid = rows < S
        r = jnp.where(valid, rows, 0)
        t_r, f_r = t[r], f_t[r]
        # minimiser of the quadratic through f(0), f'(0), f(t); kept within [0.1 t, 0.5 t]
        denom = 2.0 * (f_r - st.f[r] - gd[r] * t_r)
        t_q = jnp.where(jnp.isfinite(f_r) & (denom > 0), -gd[r] * t_r * t_r / denom, 0.1 * t_r)
        t_new = jnp.clip(t_q, 0.1 * t_r, 0.5 * t_r)
        f_new, g_new = vg(st.x[r] + t_new[:, None] * d[r], jax.tree.map(lambda a: a[r], aux), shared)
        ok_new = jnp.isfinite(f_new) & (f_new <= st.f[r] + tol.c1 * t_new * gd[r])
        # rows past the end (padding) are dropped by the scatter
        rows_or_drop = jnp.where(valid, rows, S)
        return (
            t.at[rows_or_drop].set(t_new, mode="drop"),
            f_t.at[rows_or_drop].set(f_new, mode="drop"),
            g_t.at[rows_or_drop].set(g_new, mode="drop"),
            ok.at[rows_or_drop].set(ok_new, mode="drop"),
            n_bt.at[rows_or_drop].add(1, mode="drop"),
        )

    t, f_new, g_new, ok, n_bt = jax.lax.while_loop(ls_cond, ls_body, (t0, f0, g0, ok0, jnp.zeros(S, jnp.int32)))

    moved = active & ok
    x_new = st.x + t[:, None] * d
    s = x_new - st.x
    y = g_new - st.g
    sy, yy = _dot(s, y), _dot(y, y)
    good_pair = moved & (sy > 1e-12 * yy) & jnp.isfinite(sy)
    slot = st.ptr % memory
    s_hist = st.s_hist.at[:, slot].set(jnp.where(good_pair[:, None], s, 0.0))
    y_hist = st.y_hist.at[:, slot].set(jnp.where(good_pair[:, None], y, 0.0))
    rho = st.rho.at[:, slot].set(jnp.where(good_pair, 1.0 / jnp.where(good_pair, sy, 1.0), 0.0))
    gamma = jnp.where(good_pair, sy / jnp.where(good_pair, yy, 1.0), st.gamma)

    it = st.it + active.astype(st.it.dtype)
    small_grad = jnp.max(jnp.abs(g_new), axis=-1) <= tol.gtol
    # "no relative progress" only once the curvature memory is full: a fresh L-BFGS (e.g. the
    # float64 polish of a float32 end point) starts with tiny steps along flat valleys
    stalled = ((st.f - f_new) <= tol.ftol * jnp.abs(f_new)) & (it > memory)
    status = jnp.select(
        [~active, ~ok, small_grad, stalled, it >= tol.maxiter],
        [st.status, 4, 0, 1, 2],
        default=ACTIVE,
    )
    return State(
        x=jnp.where(moved[:, None], x_new, st.x),
        f=jnp.where(moved, f_new, st.f),
        g=jnp.where(moved[:, None], g_new, st.g),
        s_hist=s_hist,
        y_hist=y_hist,
        rho=rho,
        gamma=gamma,
        it=it,
        status=status,
        ptr=st.ptr + 1,
        evals=st.evals + (1 + (jnp.sum(n_bt) + width - 1) // width).astype(jnp.int32),
    )


@functools.lru_cache(maxsize=64)
def _compiled(vg: Callable, memory: int):
    """Jitted init/run; tolerances are arguments, so configurations share one compilation."""

    def init(x, aux, shared, tol):
        f, g = vg(x, aux, shared)
        S, k = x.shape
        finite = jnp.isfinite(f) & jnp.all(jnp.isfinite(g), axis=-1)
        status = jnp.where(~finite, 3, jnp.where(jnp.max(jnp.abs(g), -1) <= tol.gtol, 0, ACTIVE))
        return State(
            x=x,
            f=f,
            g=g,
            s_hist=jnp.zeros((S, memory, k), x.dtype),
            y_hist=jnp.zeros((S, memory, k), x.dtype),
            rho=jnp.zeros((S, memory), x.dtype),
            gamma=jnp.ones((S,), x.dtype),
            it=jnp.zeros((S,), jnp.int32),
            status=status.astype(jnp.int32),
            ptr=jnp.int32(0),
            evals=jnp.int32(1),
        )

    def run(st: State, aux, shared, tol, n_iter):
        def cond(c):
            st, n = c
            return jnp.any(st.status == ACTIVE) & (n < n_iter)

        def body(c):
            st, n = c
            return _step(vg, memory, tol, st, aux, shared), n + 1

        return jax.lax.while_loop(cond, body, (st, jnp.int32(0)))[0]

    return jax.jit(init), jax.jit(run)


def minimize(vg: Callable, x0: np.ndarray, aux, shared, cfg: LbfgsConfig = LbfgsConfig()):
    """Minimise S problems at once. `vg(x[S,k], aux, shared) -> (f[S], g[S,k])`; `aux` is a
    pytree whose leaves all have leading axis S (per-problem data such as bootstrap weights),
    `shared` a pytree common to all problems (the data points).

    Call inside `jax.enable_x64(True)` for float64. Returns numpy (x, f, iterations, status).
    `vg` must be hashable and stable (a module-level function or a cached closure): the compiled
    loop is cached on it.
    """
    init, run = _compiled(vg, cfg.memory)
    x0 = np.asarray(x0)
    real = x0.dtype  # tolerances in the problem's precision, so float32 problems stay float32
    tol = Tol(
        jnp.asarray(cfg.maxiter, jnp.int32),
        jnp.asarray(cfg.gtol, real),
        jnp.asarray(cfg.ftol, real),
        jnp.asarray(cfg.armijo_c1, real),
        jnp.asarray(cfg.max_linesearch, jnp.int32),
    )
    S = x0.shape[0]
    # Batch bookkeeping (padding, shrinking) happens in numpy on the host: gathers dispatched
    # to XLA eagerly would each compile for every new shape. The state stays on the device
    # between chunks; only `status` (and the rows that finish) come back each time.
    host = lambda tree: jax.tree.map(np.array, tree)  # noqa: E731  (writable copies)
    dev = lambda tree: jax.tree.map(jnp.asarray, tree)  # noqa: E731
    aux, shared = host(aux), dev(shared)
    # pad the batch to a bucket size (rows repeating problem 0, marked finished) so that batches
    # of similar sizes share one compiled loop
    size = _bucket(S)
    pad = np.concatenate([np.arange(S), np.zeros(size - S, int)])
    aux = dev(jax.tree.map(lambda a: a[pad], aux))
    st = host(init(jnp.asarray(x0[pad]), aux, shared, tol))
    st.status[S:] = 0
    out_x, out_f = st.x[:S].copy(), st.f[:S].copy()
    out_it, out_status = np.zeros(S, np.int32), st.status[:S].copy()
    st = dev(st)
    idx = np.where(np.arange(size) < S, np.arange(size), -1)  # problem held by each row (-1: pad)
    while True:
        status = np.asarray(st.status)
        live = status == ACTIVE
        rows = np.flatnonzero(idx >= 0)
        done_rows = rows[~live[rows]]
        if done_rows.size:
            src = idx[done_rows]
            out_x[src], out_f[src] = np.asarray(st.x)[done_rows], np.asarray(st.f)[done_rows]
            out_it[src], out_status[src] = np.asarray(st.it)[done_rows], status[done_rows]
            idx[done_rows] = -1
        n_live = int(live.sum())
        if n_live == 0:
            break
        size = idx.shape[0]
        new_size = next((b for b in SHRINK_TO if n_live <= b <= size // 2), None) if cfg.shrink else None
        if new_size is not None:
            # shrink the batch: keep the live rows, pad by repeating one of them marked finished
            keep = np.flatnonzero(live)
            take = np.concatenate([keep, np.full(new_size - n_live, keep[0])])
            st = jax.tree.map(lambda a: a[take] if a.ndim else a, host(st))
            st.status[n_live:] = 0
            st, aux = dev(st), dev(jax.tree.map(lambda a: np.asarray(a)[take], aux))
            idx = np.concatenate([idx[keep], np.full(new_size - n_live, -1)])
        st = run(st, aux, shared, tol, cfg.chunk)
    return out_x, out_f, out_it, out_status


SHRINK_TO = (256, 1024)  # batch sizes a shrinking batch moves to


def _bucket(S: int) -> int:
    """The first batch size: 64, 256 or 1024, then multiples of 512. Each new size costs a
    compilation (one to two seconds), so sizes are few."""
    for size in (64, 256, 1024):
        if S <= size:
            return size
    return int(np.ceil(S / 512) * 512)
