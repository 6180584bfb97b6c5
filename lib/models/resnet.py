"""A pre-activation ResNet image classifier, the `resnet` family (He et al. 2016, "Identity Mappings").

    image [H, W, C] -> conv3x3 (C -> w0) -> stages i = 0.. of depths[i] blocks at widths[i] channels
      -> norm -> relu -> global mean pool -> dense (+ bias) -> logits over vocab_size classes

A basic block is y = shortcut(a) + conv3x3(relu(norm(conv3x3_stride(a)))), a = relu(norm(x)); the
first block of stage i > 0 halves the resolution (stride 2) and its shortcut is a 1x1 convolution
of `a` (stride 2) wherever the width or resolution changes, the identity elsewhere. Convolutions
have no biases (a norm follows each one). Norm: GroupNorm (norm_groups groups; the default: no
state, the same function in training and eval) or BatchNorm (batch statistics in training -- under
GSPMD the mean over a sharded batch is the global one -- and the running averages, a mutable
`batch_stats` collection the train state carries, in eval). Shapes: B batch, H/W height/width,
C channels, K classes.

Counts (lib/models/base.py conventions; embedding = 0, nothing here is a lookup):
  params   stem 9*C*w0; per block 9*cin*cout + 9*cout^2 (+ cin*cout projection) + 2*cin + 2*cout
           (the two norms' scale and bias); final norm 2*w_last; head w_last*K + K
  forward  per image, 2 x the multiply-accumulates of every convolution at its output resolution
           (SAME padding: 2*Ho*Wo*k*k*cin*cout) and of the head (2*w_last*K); norms, relu, pooling
           and adds are not counted. XLA counts the same convolutions less the taps that land on
           the zero padding (`padding_flops`), plus the elementwise work.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lib.config import ModelConfig
from lib.models import base
from lib.models.layers import compute_dtype, param

LOGICAL_AXES = ("vocab", "embed", "mlp", "norm", "act_batch", "act_embed", "act_vocab")
ACT_BHWC = ("act_batch", None, None, "act_embed")
_he_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")  # relu networks (He et al. 2015)


def stage_shapes(cfg: ModelConfig):
    """[(cin, cout, stride, resolution out)] per block, in order, from the input geometry."""
    res, cin, out = cfg.image_size, cfg.stage_widths[0], []
    for i, (width, depth) in enumerate(zip(cfg.stage_widths, cfg.stage_depths)):
        for j in range(depth):
            stride = 2 if (i > 0 and j == 0) else 1
            res = -(-res // stride)
            out.append((cin, width, stride, res))
            cin = width
    return out


def conv(x, w, stride: int):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


class Norm(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, train: bool):
        cfg = self.cfg
        inits = dict(scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))
        if cfg.norm == "batch":
            # Statistics in float32; momentum 0.9 as in the flax ImageNet example.
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=compute_dtype(cfg), **inits)(x)
        return nn.GroupNorm(num_groups=cfg.norm_groups, epsilon=1e-5, dtype=compute_dtype(cfg), **inits)(x)


class PreActBlock(nn.Module):
    cfg: ModelConfig
    cin: int
    cout: int
    stride: int

    @nn.compact
    def __call__(self, x_BHWC, train: bool, deterministic: bool):
        cfg, dt = self.cfg, compute_dtype(self.cfg)
        a = nn.relu(Norm(cfg, name="norm1")(x_BHWC, train))
        w1 = param(self, "conv1", (3, 3, self.cin, self.cout), (None, None, "embed", "mlp"), _he_init)
        h = conv(a, w1.astype(dt), self.stride)
        h = nn.relu(Norm(cfg, name="norm2")(h, train))
        h = base.Dropout(cfg.dropout)(h, deterministic)
        w2 = param(self, "conv2", (3, 3, self.cout, self.cout), (None, None, "mlp", "embed"), _he_init)
        h = conv(h, w2.astype(dt), 1)
        if self.stride != 1 or self.cin != self.cout:
            ws = param(self, "shortcut", (1, 1, self.cin, self.cout), (None, None, "embed", "mlp"), _he_init)
            x_BHWC = conv(a, ws.astype(dt), self.stride)
        return nn.with_logical_constraint(x_BHWC + h, ACT_BHWC)


class ResNet(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, images_BHWC, deterministic: bool = True, train: bool = False):
        cfg, dt = self.cfg, compute_dtype(self.cfg)
        x = nn.with_logical_constraint(images_BHWC.astype(dt), ACT_BHWC)
        w0 = cfg.stage_widths[0]
        stem = param(self, "stem", (3, 3, cfg.image_channels, w0), (None, None, None, "mlp"), _he_init)
        x = conv(x, stem.astype(dt), 1)
        for i, (cin, cout, stride, _) in enumerate(stage_shapes(cfg)):
            x = PreActBlock(cfg, cin, cout, stride, name=f"block_{i}")(x, train, deterministic)
        x = nn.relu(Norm(cfg, name="norm_f")(x, train))
        pooled_BC = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(dt)
        head = param(self, "head", (cfg.stage_widths[-1], cfg.vocab_size), ("embed", "vocab"), nn.initializers.zeros)
        bias = param(self, "head_bias", (cfg.vocab_size,), ("vocab",), nn.initializers.zeros)
        logits_BK = pooled_BC @ head.astype(dt) + bias.astype(dt)
        return nn.with_logical_constraint(logits_BK.astype(jnp.float32), ("act_batch", "act_vocab"))


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    widths, K = cfg.stage_widths, cfg.vocab_size
    total = 9 * cfg.image_channels * widths[0]
    for cin, cout, stride, _ in stage_shapes(cfg):
        total += 9 * cin * cout + 9 * cout * cout + 2 * cin + 2 * cout
        total += cin * cout if (stride != 1 or cin != cout) else 0
    total += 2 * widths[-1] + widths[-1] * K + K
    return {"total": total, "embedding": 0, "non_embedding": total}


def forward_flops(cfg: ModelConfig, seq_len: int = 1) -> float:
    """Per image (seq_len is ignored: an image is one unit of D)."""
    S = cfg.image_size
    flops = 2.0 * S * S * 9 * cfg.image_channels * cfg.stage_widths[0]
    for cin, cout, stride, res in stage_shapes(cfg):
        flops += 2.0 * res * res * (9 * cin * cout + 9 * cout * cout + (cin * cout if (stride != 1 or cin != cout) else 0))
    return flops + 2.0 * cfg.stage_widths[-1] * cfg.vocab_size


def _padded_taps(size: int, out: int, stride: int, k: int = 3) -> int:
    """Over the output positions of one spatial axis, the taps of a k-wide SAME convolution that
    fall outside the input (XLA's count leaves them out)."""
    pad_total = max((out - 1) * stride + k - size, 0)
    lo = pad_total // 2
    return sum(1 for o in range(out) for t in range(k) if not 0 <= o * stride - lo + t < size)


def padding_flops(cfg: ModelConfig) -> float:
    """Per image: what `forward_flops` counts for 3x3 taps on the zero padding (row or column
    outside the image; 2-D: out^2*9 - (out*3 - p)^2 taps, p the padded taps along one axis)."""
    def missing(size, out, stride):
        p = _padded_taps(size, out, stride)
        return out * out * 9 - (out * 3 - p) ** 2

    S = cfg.image_size
    flops = 2.0 * missing(S, S, 1) * cfg.image_channels * cfg.stage_widths[0]
    res_in = S
    for cin, cout, stride, res in stage_shapes(cfg):
        flops += 2.0 * (missing(res_in, res, stride) * cin * cout + missing(res, res, 1) * cout * cout)
        res_in = res
    return flops


RESNET = base.Family(name="resnet", module=ResNet, param_counts=param_counts, forward_flops=forward_flops,
                     logical_axes=LOGICAL_AXES, dummy_input=base.image_dummy)


# == configuration (lib/models/spec.py): the rules lib/config_rules.py runs for this family ==========
import math  # noqa: E402  (the config section sits at the end)

from lib.config import one_of, require  # noqa: E402
from lib.models.spec import FamilySpec, check_image_input  # noqa: E402

NORMS = ("group", "batch")  # model.norm: GroupNorm (norm_groups groups) or BatchNorm


def _check(m: ModelConfig) -> None:
    check_image_input(m)
    require(not m.scan_layers, "model.scan_layers", "the resnet family does not scan its layers; use --set model.scan_layers=false")
    widths, depths = m.stage_widths, m.stage_depths
    require(len(widths) >= 1 and all(w > 0 for w in widths), "model.widths", f"stage widths must be positive, got {list(widths)}; e.g. [16, 32, 64]")
    require(len(depths) == len(widths) and all(k >= 1 for k in depths), "model.depths",
            f"one depth (>= 1 block) per stage of model.widths {list(widths)}, got {list(depths)}; e.g. {[1] * len(widths)}")
    one_of(m.norm, NORMS, "model.norm")
    if m.norm == "group":
        require(m.norm_groups >= 1 and all(w % m.norm_groups == 0 for w in widths), "model.norm_groups",
                f"every stage width {list(widths)} must be divisible by norm_groups={m.norm_groups}; pick a divisor of "
                f"{math.gcd(*widths)}, or widths that are multiples of {m.norm_groups}")


SPEC = FamilySpec(name="resnet", task="classify", validate=_check)
