"""Image sources: the synthetic floor by Monte Carlo, purity, augmentation, the HF image store, named errors.

Independent checks: the synthetic floor is compared with the mean loss of the Bayes predictor on
sampled images, the predictor recovering each image's mode by brute-force matching against every
prototype under every np.roll shift (its own low-pass filter by FFT), not through the generator.
"""

import json
import math
import os

import numpy as np
import pytest

from lib.config import ConfigError, DataConfig, RunConfig
from lib.config_rules import validate
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


@pytest.mark.parametrize("size, channels, band", [(16, 3, 3), (9, 1, 2)])  # the defaults; odd sizes have no Nyquist column
def test_synthetic_images_are_unit_scale_with_off_band_noise_of_the_stated_std(size, channels, band):
    src = SyntheticImages(_cfg(global_batch=512, image_size=size, image_channels=channels, synth_img_band=band))
    b = src.batch(0)
    img = b["image"].astype(np.float64)
    assert img.shape == (512, size, size, channels) and b["label"].shape == (512,) and b["label"].dtype == np.int32
    assert abs(img.mean()) < 0.02 and abs(img.std() - 1) < 0.02
    # Undo the scale and the per-image latents: what is left outside the band and the mean is the noise.
    s = src.sample(0, np.arange(512))
    raw = img / src._scale
    clean = s["contrast"][:, None, None, None] * np.stack([np.roll(p, tuple(sh), axis=(0, 1)) for p, sh in zip(src.prototypes(s["rank"]), s["shift"])])
    noise = raw - clean - s["brightness"][:, None, None, :]
    assert np.abs(_band_part(noise, band)).max() < 1e-4 and np.abs(noise.mean(axis=(1, 2))).max() < 1e-4
    assert noise.std() == pytest.approx(0.5, rel=0.02)
    assert np.abs(_band_part(raw, band) - clean).max() < 1e-4
    # White off the band: the noise's power is flat over the frequencies it holds.
    power = (np.abs(np.fft.fft2(noise, axes=(1, 2))) ** 2).mean(axis=(0, 3))
    held = power > 1e-6 * power.max()
    assert held.sum() == size * size - (2 * band + 1) ** 2
    assert power[held].std() / power[held].mean() < 0.1


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
    d = json.loads(json.dumps(a.describe()))  # goes into the run summary as JSON
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
    flipped = [np.array_equal(flips[i], x[i, :, ::-1]) for i in range(64)]
    assert all(f or np.array_equal(flips[i], x[i]) for i, f in enumerate(flipped))  # each row as is or mirrored
    assert 10 < sum(flipped) < 54  # about half mirrored (64 fair coins: outside 10..54 has p < 1e-8)


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
        validate(cfg)


def test_image_fields_are_hashed_only_when_set():
    # Hashes of configs recorded before the image fields existed (computed on the commit before them).
    assert RunConfig().content_hash() == "8301c6"
    assert RunConfig().with_overrides({"data.source": "hf", "data.dataset": "text"}).content_hash() == "4b286a"
    base = RunConfig().with_overrides({"data.source": "synthetic_images", "model.family": "resnet"})  # an image model: validate() pairs them
    assert base.with_overrides({"data.augment": "flip"}).content_hash() != base.content_hash()
    assert base.with_overrides({"data.synth_img_label_noise": 0.2}).content_hash() != base.content_hash()
    src = make_source(validate(base).data)
    assert isinstance(src, SyntheticImages)


# ---- Hugging Face images: a local imagefolder written by the test ---------------------------------
CLASSES = ("ant", "bee", "cow")


def _write_folder(root, size=(20, 20), mode="RGB", per_class=8, seed=0) -> dict:
    """root/<class>/<i>.png with random pixels; returns {pixels bytes: class index}."""
    from PIL import Image

    rng, made = np.random.default_rng(seed), {}
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            x = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(x, mode).save(root / name / f"{i}.png")
            made[x.tobytes()] = c
    return made


def _hf_cfg(folder, **kw) -> DataConfig:
    return DataConfig(**{"source": "hf_images", "dataset": "imagefolder", "data_files": str(folder), "image_size": 20,
                         "global_batch": 4, "holdout_fraction": 0.25, **kw})


@pytest.fixture(scope="module")
def folder_store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("imgs")
    made = _write_folder(tmp / "pics")
    src = make_source(_hf_cfg(tmp / "pics"), data_root=tmp / "store")
    return tmp, made, src


def test_imagefolder_is_decoded_once_into_a_store_of_its_exact_pixels(folder_store):
    tmp, made, src = folder_store
    assert src.kind == "images" and src.num_classes == src.vocab_size == 3 and src.image_shape == (20, 20, 3)
    assert src.entropy_floor is None and src.bayes_error is None
    d = json.loads(json.dumps(src.describe()))
    assert d["class_names"] == list(CLASSES) and d["store_key"] == src.store.key and d["train_images"] + d["eval_images"] == 24
    train_x, train_y = src._train
    eval_x, eval_y = src._eval
    assert 0 < len(eval_y) < 24
    stored = [(x.tobytes(), int(y)) for x, y in zip(np.concatenate([train_x, eval_x]), np.concatenate([train_y, eval_y]))]
    assert sorted(stored) == sorted(made.items())  # every PNG exactly once, with its folder's class
    # Normalisation: the manifest's channel statistics are those of the training images.
    flat = np.asarray(train_x, np.float64).reshape(-1, 3)
    np.testing.assert_allclose(d["channel_mean"], flat.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(d["channel_std"], flat.std(axis=0), rtol=1e-9)
    b = src.batch(1)
    ids = src.image_ids(1)
    np.testing.assert_allclose(b["image"] * np.float32(flat.std(axis=0)) + np.float32(flat.mean(axis=0)), train_x[ids], atol=1e-3)
    np.testing.assert_array_equal(b["label"], train_y[ids])
    assert b["image"].dtype == np.float32 and b["label"].dtype == np.int32 and b["image"].shape == (4, 20, 20, 3)
    # Opening again uses the store (no rebuild).
    mtime = os.stat(os.path.join(src.store.path, "manifest.json")).st_mtime_ns
    again = make_source(_hf_cfg(tmp / "pics"), data_root=tmp / "store")
    assert again.store.path == src.store.path and os.stat(os.path.join(src.store.path, "manifest.json")).st_mtime_ns == mtime


def test_hf_image_batches_are_epochs_split_across_processes_and_eval_ignores_the_batch(folder_store):
    tmp, _, src = folder_store
    n = src.n_images
    first_epoch = np.concatenate([src.image_ids(s) for s in range(n // 4 + 1)])[:n]
    assert sorted(first_epoch) == list(range(n))  # without replacement within an epoch
    assert src.epoch(n // 4) == pytest.approx((n // 4) * 4 / n)
    for step in (0, 3, 7):
        parts = [src.batch(step, i, 2) for i in range(2)]
        np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), src.batch(step)["image"])
    big = make_source(_hf_cfg(tmp / "pics", global_batch=8), data_root=tmp / "store")
    np.testing.assert_array_equal(big.eval_rows(2, 4)["image"], src.eval_rows(0, 8)["image"][2:6])
    assert big.store.path == src.store.path  # the batch is not part of the store's identity
    aug = make_source(_hf_cfg(tmp / "pics", augment="crop_flip"), data_root=tmp / "store")
    np.testing.assert_array_equal(aug.batch(5)["image"], augment(src.batch(5)["image"], 5 * 4 + np.arange(4), 0, "crop_flip", 2))
    np.testing.assert_array_equal(aug.batch(5)["image"], make_source(_hf_cfg(tmp / "pics", augment="crop_flip"), data_root=tmp / "store").batch(5)["image"])
    np.testing.assert_array_equal(aug.eval_rows(0, 4)["image"], src.eval_rows(0, 4)["image"])


def test_hf_images_are_resized_by_the_shorter_side_and_center_cropped_and_grayscale_stays_one_channel(tmp_path):
    from PIL import Image

    _write_folder(tmp_path / "wide", size=(24, 20), per_class=2)
    src = make_source(_hf_cfg(tmp_path / "wide", image_size=10, holdout_fraction=0.5, global_batch=2), data_root=tmp_path / "s")
    stored = np.concatenate([src._train[0], src._eval[0]])
    expected = [np.asarray(Image.open(p).resize((12, 10), Image.Resampling.BILINEAR))[:, 1:11] for p in sorted((tmp_path / "wide").glob("*/*.png"))]
    assert sorted(x.tobytes() for x in stored) == sorted(x.tobytes() for x in expected)
    made = _write_folder(tmp_path / "gray", mode="L", per_class=3)
    gray = make_source(_hf_cfg(tmp_path / "gray", image_channels=1, holdout_fraction=0.3, global_batch=2), data_root=tmp_path / "s")
    assert gray.image_shape == (20, 20, 1) and gray.batch(0)["image"].shape == (2, 20, 20, 1)
    assert sorted(x[..., 0].tobytes() for x in np.concatenate([gray._train[0], gray._eval[0]])) == sorted(made)


@pytest.mark.parametrize("kw, match", [
    (dict(label_field="klass"), r"data\.label_field: 'klass' is not a column .* its columns are image, label"),
    (dict(image_field="picture"), r"data\.image_field: 'picture' is not a column"),
    (dict(image_channels=1), r"data\.image_channels: .* colour .* set data\.image_channels=3"),
    (dict(num_classes=5), r"data\.num_classes=5 does not match .* 3 classes"),
    (dict(holdout_fraction=0.001), r"data\.holdout_fraction: .* holds no images"),
    (dict(global_batch=64), r"data\.global_batch: .* fewer than one global batch"),
    (dict(eval_split="validation"), r"data\.eval_split: split 'validation' is not in"),
])
def test_bad_hf_image_input_is_a_named_error(folder_store, kw, match):
    tmp, _, _ = folder_store
    with pytest.raises(ConfigError, match=match):
        make_source(_hf_cfg(tmp / "pics", **kw), data_root=tmp / "store")


def test_grayscale_data_for_an_rgb_model_empty_folders_and_bad_labels_are_named_errors(tmp_path):
    import datasets

    _write_folder(tmp_path / "gray", mode="L", per_class=2)
    with pytest.raises(ConfigError, match=r"data\.image_channels: .* grayscale .* set data\.image_channels=1"):
        make_source(_hf_cfg(tmp_path / "gray"), data_root=tmp_path / "s")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"data\.dataset: could not load 'imagefolder'"):
        make_source(_hf_cfg(tmp_path / "empty"), data_root=tmp_path / "s")
    # Integer labels without class names: the classes are 0..max; a -1 (unlabelled) is named.
    from PIL import Image

    pics = [Image.fromarray(np.full((4, 4, 3), i, np.uint8)) for i in range(6)]
    for name, labels in (("ok", [0, 4, 1, 2, 4, 0]), ("bad", [0, 1, -1, 2, 1, 0])):
        ds = datasets.Dataset.from_dict({"image": pics, "label": labels}, features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.Value("int64")}))
        ds.to_parquet(str(tmp_path / f"{name}.parquet"))
    cfg = dict(dataset="parquet", image_size=4, holdout_fraction=0.3, global_batch=2)
    ok = make_source(_hf_cfg(tmp_path / "ok.parquet", **cfg), data_root=tmp_path / "s")
    assert ok.num_classes == 5 and ok.describe()["class_names"] is None
    with pytest.raises(ConfigError, match=r"data\.label_field: label -1 of image 2 .* outside 0 or more"):
        make_source(_hf_cfg(tmp_path / "bad.parquet", **cfg), data_root=tmp_path / "s")


def test_an_imagefolder_with_train_and_test_folders_holds_out_its_test_split(tmp_path):
    train = _write_folder(tmp_path / "pics" / "train", per_class=3, seed=1)
    test = _write_folder(tmp_path / "pics" / "test", per_class=2, seed=2)
    src = make_source(_hf_cfg(tmp_path / "pics", eval_split="test", global_batch=2), data_root=tmp_path / "s")
    assert sorted(x.tobytes() for x in src._train[0]) == sorted(train) and sorted(x.tobytes() for x in src._eval[0]) == sorted(test)
    assert [test[x.tobytes()] for x in src._eval[0]] == list(src._eval[1])
    assert src.describe()["held_out"] == "split test"
