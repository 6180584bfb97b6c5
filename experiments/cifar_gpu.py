"""IsoFLOP sweep of pre-activation ResNets on CIFAR-10, for one GPU.

    scaling run cifar_gpu --root runs/cifar_gpu

Data: `uoft-cs/cifar10` from the Hugging Face hub (`hf_images`, lib/data/image_store.py: decoded
once into a memory-mapped uint8 store under the data root), 32 x 32 x 3, 10 classes; the "test"
split is the eval set (2048 of its images, the same for every run); training images are
random-cropped (pad 4) and flipped. 50k training images, so runs above ~1 epoch repeat data
(summary.json "epochs"); the fit then measures loss vs N and images seen, not vs unique images.
Models: `resnet`, 3 stages of widths (w, 2w, 4w), n blocks each, GroupNorm (4 groups), bf16
compute with fp32 parameters; w x n from 8 x 1 (20k parameters) to 128 x 3 (17M).
D = training images; C = images x closed-form training FLOPs per image (chinchilla convention:
3 x 2 x the MACs of the convolutions and the head, lib/models/resnet.py).
Budgets 3e14..1e16 FLOPs (4, x ~3 apart), the 5 sizes nearest 5 images per parameter in each
(0.4..170 images per parameter, 9..560 epochs): 20 runs, 256k steps, 7e16 FLOPs in all; estimated (not
measured: no GPU here) at roughly half an hour on one H100/H200 (small convolutions run far below
peak; the image store is read from a memory map). Batch 512 (halved down to 128 where a size would have < 500 steps); AdamW 2e-3,
cosine, wd 0.05.
"""

from lib.config import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig
from lib.sweeps.plans import IsoFlop, Schedule

# (width w of the first stage, blocks per stage): neighbours ~1.5-2.5x apart in parameters.
SHAPES = [(8, 1), (12, 1), (16, 1), (16, 2), (24, 2), (32, 2), (48, 2), (64, 2), (64, 3), (96, 3), (128, 3)]
SIZES = [dict(d_model=w, n_layers=n) for w, n in SHAPES]
BUDGETS = [3e14, 1e15, 3e15, 1e16]

BASE = RunConfig(
    model=ModelConfig(family="resnet", norm="group", norm_groups=4, compute_dtype="bfloat16"),
    data=DataConfig(source="hf_images", dataset="uoft-cs/cifar10", image_field="img", label_field="label", split="train",
                    eval_split="test", image_size=32, image_channels=3, num_classes=10, augment="crop_flip", crop_pad=4,
                    global_batch=512),
    optimizer=OptimizerConfig(name="adamw", lr=2e-3, weight_decay=0.05, schedule="cosine", final_lr_frac=0.1),
    train=TrainConfig(eval_tokens=2048, keep_checkpoints=1, flops_convention="chinchilla"),  # eval: 2048 test images
)


def sweep() -> IsoFlop:
    return IsoFlop(BUDGETS, SIZES, base=BASE, name="cifar", tpp_range=(0.2, 200), per_budget=5, center_tpp=5.0,
                   min_steps=500, min_batch=128, schedule=Schedule(warmup_frac=0.05, log_points=20, eval_points=4, checkpoints=2))
