"""muP against SP on the synthetic language: a coordinate check and learning-rate transfer across widths.

    python benchmarks/mup_transfer.py [--widths 32,64,128,256] [--steps 200] [--lrs 0.001,...] [--layers 2]

Coordinate check (Yang et al., Tensor Programs V, section 7): mean |activation| of each layer's
output after a few Adam steps, for widths 32..512 at one lr. Under muP it stays flat in width;
under SP it grows (the update of an n x n matrix moves its output by ~ lr * n).
LR transfer: for each width, every lr of a grid trained for `steps` steps (the grid vmapped into
one program per width), final loss on held-out rows; the best lr per width (grid point and the
vertex of the parabola through it and its neighbours in log lr). Under muP with base_width = the
smallest width the best lr stays put; under SP it falls with width.
Prints both tables; writes benchmarks/results/mup_transfer.json. tests/test_mup.py runs a small
version of each (3 widths, 4 steps; widths 32 and 256, 5 lrs, 120 steps).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lib.config import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig
from lib.config_rules import validate
from lib.data import make_source
from lib.models import make_model
from lib.train.optim import learning_rate, make_run_direction
from lib.train.step import lm_loss

RESULTS = Path(__file__).resolve().parent / "results" / "mup_transfer.json"


def config(parametrization: str, width: int, base_width: int, n_layers: int, n_heads: int, seq_len: int, batch: int,
           steps: int, lr: float = 1.0, schedule: str = "cosine", warmup: int = 0, **model) -> RunConfig:
    return validate(RunConfig(
        model=ModelConfig(d_model=width, n_layers=n_layers, n_heads=n_heads, vocab_size=64, parametrization=parametrization,
                          base_width=base_width if parametrization == "mup" else 0, **model),
        data=DataConfig(seq_len=seq_len, global_batch=batch),
        optimizer=OptimizerConfig(name="adamw", lr=lr, weight_decay=0.0, clip_norm=0.0, schedule=schedule, warmup_steps=warmup),
        train=TrainConfig(steps=steps),
    ))


def train_grid(cfg: RunConfig, lrs, seed: int = 0):
    """Train `cfg` at each lr of `lrs` for cfg.train.steps steps, the runs vmapped into one program:
    the project's model, optimizer chain (muP scales included), schedule (cfg's lr is 1: its shape)
    and loss. Returns (model, params with a leading lr axis, the data source)."""
    steps, warmup = cfg.train.steps, cfg.optimizer.warmup_steps
    source = make_source(cfg.data)
    model, direction = make_model(cfg.model), make_run_direction(cfg)
    init = jax.jit(lambda key: nn.unbox(model.init(key, jnp.zeros((1, cfg.data.seq_len), jnp.int32))["params"]))
    params = init(jax.random.key(seed))
    params_K = jax.tree.map(lambda x: jnp.broadcast_to(x, (len(lrs), *x.shape)), params)
    opt_K = jax.vmap(direction.init)(params_K)

    def one(params, opt_state, tokens, lr, t):
        _, grads = jax.value_and_grad(lm_loss)(params, model, tokens)
        updates, opt_state = direction.update(grads, opt_state, params)
        scale = learning_rate(cfg.optimizer, t, steps, warmup) * lr
        return optax.apply_updates(params, jax.tree.map(lambda u: scale * u, updates)), opt_state

    step = jax.jit(jax.vmap(one, in_axes=(0, 0, None, 0, None)), donate_argnums=(0, 1))
    lr_K = jnp.asarray(lrs, jnp.float32)
    for t in range(steps):
        params_K, opt_K = step(params_K, opt_K, jnp.asarray(source.batch(t)), lr_K, t)
    return model, params_K, source


def coordinates(parametrization: str, width: int, base_width: int = 32, steps: int = 4, lr: float = 1e-2,
                n_layers: int = 2, n_heads: int = 4, seq_len: int = 16, batch: int = 8, **model) -> dict[str, float]:
    """Mean |x| of every block's attention, MLP (moe: routed experts) and residual output and of the
    logits, on fixed held-out rows, after `steps` Adam steps at a constant `lr` (the LM loss alone:
    a moe model's auxiliary losses are left out). `model`: further ModelConfig fields."""
    cfg = config(parametrization, width, base_width, n_layers, n_heads, seq_len, batch, steps, schedule="constant", **model)
    model, params_K, source = train_grid(cfg, [lr])
    params = jax.tree.map(lambda x: x[0], params_K)
    probe = jnp.asarray(source.eval_rows(0, batch))[:, :-1]
    capture = jax.jit(lambda p, x: model.apply({"params": p}, x, capture_intermediates=True, mutable=["intermediates"])[1])
    inter = capture(params, probe)["intermediates"]
    out = {}
    for i in range(n_layers):
        layer = inter[f"layer_{i}"]
        out[f"layer_{i}.attn"] = float(jnp.abs(layer["attn"]["__call__"][0]).mean())
        out[f"layer_{i}.mlp"] = float(jnp.abs(layer["moe" if "moe" in layer else "mlp"]["__call__"][0]).mean())
        out[f"layer_{i}"] = float(jnp.abs(layer["__call__"][0]).mean())
    out["logits"] = float(jnp.abs(inter["__call__"][0]).mean())
    return out


def lr_grid_losses(parametrization: str, width: int, lrs, steps: int, base_width: int = 32, n_layers: int = 2, n_heads: int = 4,
                   seq_len: int = 16, batch: int = 8, eval_rows: int = 64, seed: int = 0) -> np.ndarray:
    """Final held-out loss of each lr of `lrs` at one width (cosine schedule, 5% warmup)."""
    warmup = max(int(round(0.05 * steps)), 1)
    cfg = config(parametrization, width, base_width, n_layers, n_heads, seq_len, batch, steps, warmup=warmup)
    model, params_K, source = train_grid(cfg, lrs, seed)
    evaluate = jax.jit(jax.vmap(lambda p, tokens: lm_loss(p, model, tokens), in_axes=(0, None)))
    losses = np.asarray(evaluate(params_K, jnp.asarray(source.eval_rows(0, eval_rows))), float)
    return np.where(np.isfinite(losses), losses, np.inf)


def best_lr(lrs, losses) -> tuple[float, float]:
    """(grid best, vertex of the parabola in log lr through the best point and its neighbours)."""
    lrs, losses = np.asarray(lrs, float), np.asarray(losses, float)
    i = int(np.argmin(losses))
    if i in (0, len(lrs) - 1) or not np.isfinite(losses[i - 1 : i + 2]).all():
        return float(lrs[i]), float(lrs[i])
    x = np.log(lrs[i - 1 : i + 2])
    a, b, _ = np.polyfit(x, losses[i - 1 : i + 2], 2)
    return float(lrs[i]), float(np.exp(np.clip(-b / (2 * a), x[0], x[2])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="32,64,128,256")
    ap.add_argument("--coord-widths", default="32,64,128,256,512")
    ap.add_argument("--lrs", default=",".join(f"{1e-3 * 2**k:g}" for k in range(9)))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--layers", type=int, default=2)
    args = ap.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    coord_widths = [int(w) for w in args.coord_widths.split(",")]
    lrs = [float(x) for x in args.lrs.split(",")]
    result = {"platform": platform.platform(), "device": jax.devices()[0].device_kind, "coord": {}, "transfer": {}}

    print(f"coordinate check: mean |x| after 4 Adam steps at lr 1e-2, widths {coord_widths}")
    for p in ("sp", "mup"):
        table = {w: coordinates(p, w, n_layers=args.layers) for w in coord_widths}
        result["coord"][p] = {str(w): v for w, v in table.items()}
        for key in table[coord_widths[0]]:
            sizes = [table[w][key] for w in coord_widths]
            print(f"  {p:3s} {key:14s} " + " ".join(f"{v:8.3f}" for v in sizes) + f"   x{sizes[-1] / sizes[0]:.2f}")

    print(f"lr transfer: final eval loss after {args.steps} steps, lrs {lrs}")
    for p in ("sp", "mup"):
        for w in widths:
            t0 = time.perf_counter()
            losses = lr_grid_losses(p, w, lrs, args.steps, n_layers=args.layers)
            grid, vertex = best_lr(lrs, losses)
            result["transfer"].setdefault(p, {})[str(w)] = {"losses": [x if math.isfinite(x) else None for x in losses],
                                                            "best_lr": grid, "lr_opt": vertex}
            print(f"  {p:3s} width {w:4d}: " + " ".join(f"{x:6.3f}" for x in losses)
                  + f"  best {grid:.3g} (vertex {vertex:.3g})  {time.perf_counter() - t0:.0f}s", flush=True)
        opts = [result["transfer"][p][str(w)]["lr_opt"] for w in widths]
        print(f"  {p}: lr* spread over widths {max(opts) / min(opts):.2f}x")
    result["lrs"], result["steps"], result["widths"] = lrs, args.steps, widths
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
