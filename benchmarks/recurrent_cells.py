"""Our recurrent layers (lib/models/recurrent.py) against flax.linen's cells, forward + backward.

Three forms of one layer: ours (each step multiplies x_t and the state by all gates' weights at
once, as flax's `OptimizedLSTMCell` does), flax's `nn.RNN(cell)`, and a variant that hoists the
input matmul out of the time loop (one [B*T, I] x [I, G*H] matmul, the scan body holding only the
recurrent matmul). Prints ms per forward+backward of one layer (best of --repeats, interleaved
--rounds times against noisy neighbours) and writes benchmarks/results/recurrent_cells.json.

    python benchmarks/recurrent_cells.py [--batch 32 --seq-len 64 --hidden 64 256]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from lib.config import ModelConfig  # noqa: E402
from lib.models import recurrent  # noqa: E402


class HoistedLSTM(nn.Module):
    """The LSTM with x Wx for all T computed before the scan (the alternative we measured)."""

    H: int

    @nn.compact
    def __call__(self, x_BTI):
        H, I = self.H, x_BTI.shape[-1]
        w_x = self.param("wx", nn.initializers.normal(I**-0.5), (I, 4 * H))
        w_h = self.param("wh", nn.initializers.normal(H**-0.5), (H, 4 * H))
        b = self.param("b", nn.initializers.zeros, (4 * H,))

        def step(carry, gx_BG):
            c, h = carry
            i, f, o, u = jnp.split(gx_BG + h @ w_h, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(u)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (c, h), h

        zeros = jnp.zeros((x_BTI.shape[0], H))
        _, y_TBH = jax.lax.scan(step, (zeros, zeros), jnp.swapaxes(x_BTI @ w_x + b, 0, 1))
        return jnp.swapaxes(y_TBH, 0, 1)


def layers(H: int, I: int):
    return {
        "lstm ours (lib.models.recurrent)": recurrent.LSTMLayer(ModelConfig(family="lstm", d_model=I, rnn_hidden=H), I),
        "lstm flax nn.RNN(OptimizedLSTMCell)": nn.RNN(nn.OptimizedLSTMCell(H)),
        "lstm flax nn.RNN(LSTMCell)": nn.RNN(nn.LSTMCell(H)),
        "lstm input matmul hoisted": HoistedLSTM(H),
        "gru ours (lib.models.recurrent)": recurrent.GRULayer(ModelConfig(family="gru", d_model=I, rnn_hidden=H), I),
        "gru flax nn.RNN(GRUCell)": nn.RNN(nn.GRUCell(H)),
    }


def time_layer(layer, x, repeats: int) -> float:
    params = layer.init(jax.random.key(0), x)["params"]

    @jax.jit
    def fwd_bwd(p, x):
        return jax.grad(lambda p, x: jnp.mean(layer.apply({"params": p}, x) ** 2), argnums=(0, 1))(p, x)

    jax.block_until_ready(fwd_bwd(params, x))  # compile
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fwd_bwd(params, x))
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 256])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    rows = []
    print(f"{jax.devices()[0].device_kind}; batch {args.batch}, seq_len {args.seq_len}; ms per forward+backward of one layer "
          f"(best of {args.repeats} x {args.rounds} rounds)")
    for H in args.hidden:
        x = jax.random.normal(jax.random.key(1), (args.batch, args.seq_len, H))
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            for name, layer in layers(H, H).items():
                best[name] = min(best.get(name, float("inf")), time_layer(layer, x, args.repeats))
        for name, ms in best.items():
            rows.append({"layer": name, "hidden": H, "ms": ms})
            print(f"  H={H:<5d} {name:40s} {ms:8.2f} ms")
    out = Path(__file__).resolve().parent / "results" / "recurrent_cells.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"device": jax.devices()[0].device_kind, "batch": args.batch, "seq_len": args.seq_len, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
