"""Training-time image augmentation as a pure function of (seed, global row index).

    flip       mirror left-right with probability 1/2
    crop       pad by `pad` pixels with zeros (after normalisation: the mean pixel) and cut an
               image_size window at a uniform offset in 0..2*pad on each axis
    crop_flip  both

Global row g = step * global_batch + row is unique over a run, so `batch(step)` stays pure, each
host augments only its own rows, and an example drawn again in a later epoch gets a fresh draw.
Zero padding (rather than reflection) is the CIFAR convention; in normalised units it is grey.
"""

from __future__ import annotations

import numpy as np

from lib.data.synthetic import _hash, _splitmix

_AUGMENT = 0xA06  # hash purpose: keeps these words independent of every other stream of the seed


def augment(images_BHWC: np.ndarray, rows: np.ndarray, seed: int, mode: str, pad: int) -> np.ndarray:
    """`images_BHWC` (float) transformed per row as `mode` says; `rows` are their global row indices."""
    if mode == "none":
        return images_BHWC
    B, H, W, _ = images_BHWC.shape
    key = _hash(_splitmix(np.array([seed], dtype=np.uint64) ^ np.uint64(_AUGMENT)), np.uint64(_AUGMENT))
    h = _hash(key, np.asarray(rows, dtype=np.uint64))
    out = images_BHWC
    if "crop" in mode and pad > 0:
        padded = np.pad(out, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        oy = ((h >> np.uint64(8)) % np.uint64(2 * pad + 1)).astype(np.int64)
        ox = ((h >> np.uint64(24)) % np.uint64(2 * pad + 1)).astype(np.int64)
        iy_BH = oy[:, None] + np.arange(H)[None, :]
        ix_BW = ox[:, None] + np.arange(W)[None, :]
        out = padded[np.arange(B)[:, None, None], iy_BH[:, :, None], ix_BW[:, None, :]]
    if "flip" in mode:
        flip = (h & np.uint64(1)).astype(bool)
        out = np.where(flip[:, None, None, None], out[:, :, ::-1], out)
    return np.ascontiguousarray(out)


# == configuration: the image fields both image sources check (lib/data/images.py, image_store.py) ======
from lib.config import DataConfig, one_of, require  # noqa: E402  (the config section sits at the end)

AUGMENTS = ("none", "flip", "crop", "crop_flip")  # data.augment: training batches only


def check_image_fields(d: DataConfig) -> None:
    require(d.image_size >= 4, "data.image_size", f"must be at least 4 pixels, got {d.image_size}")
    require(d.image_channels in (1, 3), "data.image_channels", f"must be 1 (grayscale) or 3 (RGB), got {d.image_channels}")
    require(d.num_classes >= 0, "data.num_classes", f"must be >= 0 (0: the default / the dataset's), got {d.num_classes}")
    one_of(d.augment, AUGMENTS, "data.augment")
    require(0 <= d.crop_pad < d.image_size, "data.crop_pad", f"must be in 0..image_size-1 ({d.image_size - 1}), got {d.crop_pad}")
