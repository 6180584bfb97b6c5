"""Vision quickstart: an IsoFLOP sweep of pre-activation ResNets on the embedded synthetic images.

    scaling run vision_quickstart --root runs/vision_quickstart --pack auto --compile-cache runs/.jax_cache

Data: `synthetic_images` (lib/data/images.py), 8 x 8 x 3 images of 10 classes: Zipfian modes
(band-limited textures, each mode's class a hash of it) under pixel and label noise, so the Bayes
floor is known in closed form (entropy_floor nats/image, bayes_error) and a model's loss above it
falls as it memorises more modes -- with more parameters (N) and more images (D).
Models: `resnet`, 3 stages of widths (w, 2w, 4w) with one pre-activation block each, GroupNorm
with 1 group (widths need not be even), w = 2..16: 1.5k..78k parameters.
D = training images; C = images x the closed-form training FLOPs per image (chinchilla convention:
3 x the convolutions' and head's 2 x MACs, lib/models/resnet.py).
Budgets 2e10, 6e10, 2e11 FLOPs x 5 widths each: the widths whose D/N is nearest 50 images per
parameter (measured at 3e10 over w = 2..8: loss 1.49, 1.44, 1.47, 1.59, 1.83, the minimum at w = 3,
D/N = 53, batch 128, lr 1e-2). Batch 256 (one per budget, halved down to 32 while a size of the
budget would have < 150 steps), one learning rate 1.4e-2 at batch 256 (AdamW, cosine), x sqrt(B/256)
at a halved batch.
Then `scaling fit` (Approaches 1-3 on loss vs N, D, C) and its figures into <root>/fit/, and the
prediction check at the next budget (6.7e11: the largest budget times the ladder's step; skip it with --no-verify).
"""

from lib.config import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig
from lib.sweeps.plans import IsoFlop, Schedule

WIDTHS = [2, 3, 4, 6, 8, 12, 16]
SIZES = [dict(d_model=w) for w in WIDTHS]
BUDGETS = [2e10, 6e10, 2e11]

BASE = RunConfig(
    model=ModelConfig(family="resnet", n_layers=1, norm="group", norm_groups=1),
    data=DataConfig(source="synthetic_images", image_size=8, global_batch=256),
    optimizer=OptimizerConfig(name="adamw", lr=1.4e-2, schedule="cosine", final_lr_frac=0.1),
    train=TrainConfig(eval_tokens=2048, keep_checkpoints=1, flops_convention="chinchilla"),  # eval: 2048 images
)


def sweep() -> IsoFlop:
    return IsoFlop(
        BUDGETS, SIZES, base=BASE, name="vq", tpp_range=(0.5, 5000), per_budget=5, center_tpp=50.0,
        min_steps=150, min_batch=32, schedule=Schedule(warmup_frac=0.05, log_points=10, eval_points=2, checkpoints=1),
    )
