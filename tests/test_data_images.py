"""Image sources: the synthetic floor by Monte Carlo, purity, augmentation, the HF image store, named errors.

Independent checks: the synthetic floor is compared with the mean loss of the Bayes predictor on
sampled images, the predictor recovering each image's mode by brute-force matching against every
prototype under every np.roll shift (its own low-pass filter by FFT), not through the generator.
"""

import math

import numpy as np
import pytest

from lib.config import ConfigError, DataConfig, RunConfig
from lib.data import make_source
from lib.data.augment import augment
from lib.data.images import SyntheticImages

# Small enough to enumerate every (mode, shift): 6 modes, 8x8 images, band 2, 4 classes, heavy label noise.
SMALL = dict(source="synthetic_images", image_size=8, synth_img_band=2, synth_img_modes=6, num_classes=4,
             synth_img_label_noise=0.3, synth_img_noise=0.7, global_batch=64)


def _cfg(**kw) -> DataConfig:
    return DataConfig(**{"source": "synthetic_images", **kw})


def _band_part(images_NHWC: np.ndarray, band: int) -> np.ndarray:
    """The in-band content of each image (frequencies 0 < max(|ky|, |kx|) <= band), by FFT."""
    H, W = images_NHWC.shape[1:3]
    ky = np.abs(np.fft.fftfreq(H) * H)[:, None]
    kx = np.abs(np.fft.fftfreq(W) * W)[None, :]
    mask = (np.maximum(ky, kx) <= band) & ((ky > 0) | (kx > 0))
    spectrum = np.fft.fft2(images_NHWC.astype(np.float64), axes=(1, 2))
    return np.fft.ifft2(spectrum * mask[None, :, :, None], axes=(1, 2)).real


# ---- the synthetic floor ----------------------------------------------------------------------------
def test_synthetic_floor_and_bayes_error_match_a_monte_carlo_of_the_bayes_predictor():
    src = SyntheticImages(_cfg(**{k: v for k, v in SMALL.items() if k != "source"}))
    n = 3000
    sample = src.sample(1, np.arange(n))
    x = _band_part(sample["image"], 2).reshape(n, -1)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    protos = src.prototypes(np.arange(1, 7))  # [6, 8, 8, 3]
    shifts = [(dy, dx) for dy in range(8) for dx in range(8)]
    bank = np.stack([np.roll(p, s, axis=(0, 1)) for p in protos for s in shifts]).reshape(6 * 64, -1)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    corr = x @ bank.T
    matches = corr > 1 - 1e-5
    assert (matches.sum(axis=1) == 1).all()  # identifiable: one (mode, shift) explains the band
    best = corr.argmax(axis=1)
    rank, shift = 1 + best // 64, np.array(shifts)[best % 64]
    np.testing.assert_array_equal(rank, sample["rank"])
    np.testing.assert_array_equal(shift, sample["shift"])
    # Bayes posterior: p(y | x) = (1 - eps) [y = c(mode)] + eps / K.
    eps, K = 0.3, 4
    c = src.mode_classes(rank)
    p_label = np.where(sample["label"] == c, 1 - eps + eps / K, eps / K)
    losses = -np.log(p_label)
    se = losses.std() / math.sqrt(n)
    assert abs(losses.mean() - src.entropy_floor) < 4 * se, (losses.mean(), src.entropy_floor, se)
    wrong = (sample["label"] != c).astype(float)
    assert abs(wrong.mean() - src.bayes_error) < 4 * wrong.std() / math.sqrt(n)
    assert src.bayes_error == pytest.approx(eps * (K - 1) / K)


def test_default_synthetic_images_are_unit_scale_with_off_band_noise_of_the_stated_std():
    src = SyntheticImages(_cfg(global_batch=512))
    b = src.batch(0)
    img = b["image"].astype(np.float64)
    assert img.shape == (512, 16, 16, 3) and b["label"].shape == (512,) and b["label"].dtype == np.int32
    assert abs(img.mean()) < 0.02 and abs(img.std() - 1) < 0.02
    # Undo the scale and the per-image latents: what is left outside the band and the mean is the noise.
    s = src.sample(0, np.arange(512))
    raw = img / src._scale
    clean = s["contrast"][:, None, None, None] * np.stack([np.roll(p, tuple(sh), axis=(0, 1)) for p, sh in zip(src.prototypes(s["rank"]), s["shift"])])
    noise = raw - clean - s["brightness"][:, None, None, :]
    assert np.abs(_band_part(noise, 3)).max() < 1e-4 and np.abs(noise.mean(axis=(1, 2))).max() < 1e-4
    assert noise.std() == pytest.approx(0.5, rel=0.02)
    assert np.abs(_band_part(raw, 3) - clean).max() < 1e-4


def test_mode_law_matches_its_sampler_and_its_tail_is_one_power_law():
    src = SyntheticImages(_cfg())
    ranks = src.ranks(0, np.arange(40000))
    np.testing.assert_array_equal(ranks[:100], src.sample(0, np.arange(100))["rank"])
    for r in (1, 2, 10):
        p = float(src.mode_probs([r])[0])
        assert abs((ranks == r).mean() - p) < 4 * math.sqrt(p * (1 - p) / len(ranks))
    tail = float(src.tail_mass([100])[0])
    assert abs((ranks > 100).mean() - tail) < 4 * math.sqrt(tail * (1 - tail) / len(ranks))
    r = np.logspace(2, 9, 8)
    slope = np.log(src.tail_mass(r * 1.01) / src.tail_mass(r)) / math.log(1.01)
    np.testing.assert_allclose(slope, -0.3, rtol=0.01)
    # Classes: every one used, none overwhelmingly (the top mode alone carries ~19%).
    counts = np.bincount(src.mode_classes(ranks), minlength=10)
    assert counts.min() > 0 and counts.max() < 0.5 * len(ranks)


def test_synthetic_batches_are_pure_split_across_processes_and_eval_is_independent_of_the_batch():
    a, b = SyntheticImages(_cfg(global_batch=32)), SyntheticImages(_cfg(global_batch=32))
    np.testing.assert_array_equal(a.batch(5)["image"], b.batch(5)["image"])
    parts = [a.batch(5, i, 4) for i in range(4)]
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), a.batch(5)["image"])
    np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]), a.batch(5)["label"])
    assert not np.array_equal(a.batch(5)["image"], a.batch(6)["image"])
    assert not np.array_equal(a.batch(0)["image"], a.eval_rows(0, 32)["image"])
    big = SyntheticImages(_cfg(global_batch=64))
    np.testing.assert_array_equal(big.eval_rows(10, 8)["image"], a.eval_rows(0, 32)["image"][10:18])
    assert not np.array_equal(SyntheticImages(_cfg(global_batch=32, seed=1)).batch(5)["image"], a.batch(5)["image"])
    assert a.epoch(100) is None and a.kind == "images" and a.vocab_size == a.num_classes == 10
    d = a.describe()
    assert d["entropy_floor"] == a.entropy_floor and d["bayes_error"] == a.bayes_error and d["image_shape"] == [16, 16, 3]
    gray = SyntheticImages(_cfg(image_channels=1, image_size=12, synth_img_band=5))
    assert gray.batch(0)["image"].shape == (32, 12, 12, 1) and gray.image_shape == (12, 12, 1)


# ---- augmentation ----------------------------------------------------------------------------------
def test_augmentation_is_a_pure_function_of_seed_and_row_and_only_flips_and_crops():
    x = np.random.default_rng(0).normal(size=(64, 8, 8, 3)).astype(np.float32)
    rows = np.arange(100, 164)
    y = augment(x, rows, seed=3, mode="crop_flip", pad=2)
    np.testing.assert_array_equal(y, augment(x, rows, seed=3, mode="crop_flip", pad=2))
    np.testing.assert_array_equal(y[10:20], augment(x[10:20], rows[10:20], seed=3, mode="crop_flip", pad=2))  # per row
    assert not np.array_equal(y, augment(x, rows, seed=4, mode="crop_flip", pad=2))
    assert augment(x, rows, 3, "none", 2) is x
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    seen = set()
    for i in range(64):
        found = [(oy, ox, f) for oy in range(5) for ox in range(5) for f in (0, 1)
                 if np.array_equal(y[i], (lambda w: w[:, ::-1] if f else w)(padded[i, oy:oy + 8, ox:ox + 8]))]
        assert found, i
        seen.update(found)
    assert {f for *_, f in seen} == {0, 1} and len({(oy, ox) for oy, ox, _ in seen}) > 10
    flips = augment(x, rows, 3, "flip", 2)
    assert all(np.array_equal(flips[i], x[i]) or np.array_equal(flips[i], x[i, :, ::-1]) for i in range(64))


def test_augment_applies_to_training_batches_only():
    plain, aug = SyntheticImages(_cfg()), SyntheticImages(_cfg(augment="crop_flip"))
    np.testing.assert_array_equal(plain.eval_rows(0, 16)["image"], aug.eval_rows(0, 16)["image"])
    np.testing.assert_array_equal(plain.batch(2)["label"], aug.batch(2)["label"])
    rows = 2 * 32 + np.arange(32)
    np.testing.assert_array_equal(aug.batch(2)["image"], augment(plain.batch(2)["image"], rows, 0, "crop_flip", 2))
    parts = np.concatenate([aug.batch(2, i, 2)["image"] for i in range(2)])
    np.testing.assert_array_equal(parts, aug.batch(2)["image"])


# ---- config ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, field", [
    ({"data.augment": "rotate"}, "data.augment"),
    ({"data.image_channels": 2}, "data.image_channels"),
    ({"data.synth_img_band": 8}, "data.synth_img_band"),
    ({"data.synth_img_label_noise": 1.0}, "data.synth_img_label_noise"),
    ({"data.num_classes": 1}, "data.num_classes"),
    ({"data.crop_pad": 16}, "data.crop_pad"),
    ({"data.synth_img_zipf": 1.0}, "data.synth_img_zipf"),
    ({"data.source": "hf_images"}, "data.dataset"),
])
def test_bad_image_config_names_the_field(overrides, field):
    cfg = RunConfig().with_overrides({"data.source": "synthetic_images", **overrides})
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        cfg.validate()


def test_image_fields_are_hashed_only_when_set():
    # Hashes of configs recorded before the image fields existed (computed on the commit before them).
    assert RunConfig().content_hash() == "8301c6"
    assert RunConfig().with_overrides({"data.source": "hf", "data.dataset": "text"}).content_hash() == "4b286a"
    base = RunConfig().with_overrides({"data.source": "synthetic_images"})
    assert base.with_overrides({"data.augment": "flip"}).content_hash() != base.content_hash()
    assert base.with_overrides({"data.synth_img_label_noise": 0.2}).content_hash() != base.content_hash()
    src = make_source(base.validate().data)
    assert isinstance(src, SyntheticImages)
