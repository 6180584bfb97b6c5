"""Image classification datasets from Hugging Face: decoded once into a memory-mapped store, then batches.

    --set data.source=hf_images --set data.dataset=uoft-cs/cifar10 --set data.image_field=img --set data.image_size=32
    --set data.source=hf_images --set data.dataset=ylecun/mnist --set data.image_channels=1 --set data.image_size=28
    --set data.source=hf_images --set data.dataset=imagefolder --set data.data_files=/data/pets   (class folders)

Store: every image of the split is decoded by PIL (datasets' Image feature), converted to the
configured channels, resized (shorter side to image_size, bilinear, antialiased) and center-cropped
to image_size x image_size, and written as uint8 [N, H, W, C] with int32 labels, train and held-out
apart, once per (dataset, split, fields, size, channels, holdout) under the data root: hashed,
verified and published atomically by lib/data/token_store.py, memory-mapped by every run and host.
The per-channel mean and std of the training images (in the manifest) normalise on read.

Channels: an RGB store (image_channels=3) takes colour images as they are (RGBA, palette, CMYK
converted to RGB) and replicates a grayscale image into three channels when the dataset mixes them;
a dataset whose first image is grayscale is a named error there (set data.image_channels=1), as is
any colour image in a grayscale store (image_channels=1): no silent change of what the model sees.

Batches: global row r of step s is sample g = s * B + r, reading example perm_e[g mod n] of epoch
e (lib/data/base.py EpochSampler), then augmented (lib/data/augment.py) as a function of (seed, g).
Eval row i is held-out example i mod n_eval, in dataset order, never augmented.
"""

from __future__ import annotations

import os
import time

import numpy as np

from lib.config import ConfigError, DataConfig
from lib.data import corpus
from lib.data.augment import augment
from lib.data.base import EpochSampler, local_rows
from lib.data.text import _data_root
from lib.data.token_store import open_or_build, store_key

TRAIN_IMAGES, TRAIN_LABELS, EVAL_IMAGES, EVAL_LABELS = "images.bin", "labels.bin", "eval_images.bin", "eval_labels.bin"
STORE_FILES = (TRAIN_IMAGES, TRAIN_LABELS, EVAL_IMAGES, EVAL_LABELS)
RESIZE = "pil-bilinear-shorter-side-center-crop-v1"  # part of the store key: change it when the decoding changes
IMAGES_PER_BATCH = 512
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


class ImageSource:
    kind = "images"

    def __init__(self, cfg: DataConfig, data_root: str | os.PathLike | None = None):
        self.cfg = cfg
        root = _data_root(cfg, data_root)
        self._hf_cache = corpus.configure_hf_cache(root)
        inputs = store_inputs(cfg)
        key = store_key(inputs, label=f"{cfg.dataset.rsplit('/', 1)[-1]}-img{cfg.image_size}x{cfg.image_channels}")
        self.store = open_or_build(root, key, lambda tmp: build_store(cfg, inputs, tmp, self._hf_cache), required=STORE_FILES)
        m = self.store.manifest
        self.num_classes = int(m["num_classes"])
        if cfg.num_classes not in (0, self.num_classes):
            raise ConfigError(
                f"data.num_classes={cfg.num_classes} does not match {cfg.dataset}'s {self.num_classes} classes; "
                "leave data.num_classes at 0 to take it from the dataset"
            )
        self.vocab_size = self.num_classes
        self.image_shape = (cfg.image_size, cfg.image_size, cfg.image_channels)
        self.entropy_floor = None  # unknown for real images
        self.bayes_error = None
        self._mean = np.asarray(m["channel_mean"], np.float32)
        self._inv_std = np.float32(1) / np.maximum(np.asarray(m["channel_std"], np.float32), np.float32(1e-3))
        self._train = self._arrays(TRAIN_IMAGES, TRAIN_LABELS, m["counts"]["train_images"])
        self._eval = self._arrays(EVAL_IMAGES, EVAL_LABELS, m["counts"]["eval_images"])
        self.n_images, self.n_eval_images = len(self._train[1]), len(self._eval[1])
        self._check_sizes()
        self._sampler = EpochSampler(self.n_images, cfg.global_batch, cfg.seed)

    # -- the Source interface ---------------------------------------------------------------------
    def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict:
        samples = self._sampler.samples(step, process_index, process_count)
        ids = self._sampler.ids_of(samples)
        out = self._read(self._train, ids)
        out["image"] = augment(out["image"], samples, self.cfg.seed, self.cfg.augment, self.cfg.crop_pad)
        return out

    def eval_rows(self, start_row: int, n_rows: int, process_index: int = 0, process_count: int = 1) -> dict:
        rows = local_rows(n_rows, process_index, process_count)
        samples = start_row + np.arange(rows.start, rows.stop, dtype=np.int64)
        return self._read(self._eval, samples % self.n_eval_images)

    def epoch(self, step: int) -> float:
        return self._sampler.epoch(step)

    def image_ids(self, step: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
        """Stored training examples of this process's rows of batch `step`."""
        return self._sampler.ids(step, process_index, process_count)

    def describe(self) -> dict:
        c, m = self.cfg, self.store.manifest
        return {
            "source": "hf_images",
            "dataset": c.dataset,
            "dataset_config": c.dataset_config or None,
            "data_files": c.data_files or None,
            "split": c.split,
            "held_out": f"split {c.eval_split}" if c.eval_split else f"{c.holdout_fraction:g} of the images",
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "class_names": m["class_names"],
            "augment": c.augment,
            "store": self.store.path,
            "store_key": self.store.key,
            "train_images": self.n_images,
            "eval_images": self.n_eval_images,
            "steps_per_epoch": self.n_images / c.global_batch,
            "channel_mean": m["channel_mean"],  # uint8 units, over the training images
            "channel_std": m["channel_std"],
            "gray_to_rgb": m["counts"]["gray_to_rgb"],
        }

    # -- internals ------------------------------------------------------------------------------------
    def _arrays(self, images_file: str, labels_file: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n == 0:
            return np.zeros((0, *self.image_shape), np.uint8), np.zeros(0, np.int32)
        path = self.store.path
        return (np.memmap(os.path.join(path, images_file), np.uint8, "r", shape=(n, *self.image_shape)),
                np.memmap(os.path.join(path, labels_file), np.int32, "r", shape=(n,)))

    def _read(self, arrays: tuple[np.ndarray, np.ndarray], ids: np.ndarray) -> dict:
        images, labels = arrays
        x = (images[ids].astype(np.float32) - self._mean) * self._inv_std
        return {"image": x, "label": np.asarray(labels[ids], np.int32)}

    def _check_sizes(self) -> None:
        c = self.cfg
        if self.n_images < c.global_batch:
            raise ConfigError(
                f"data.global_batch: {c.dataset} [{c.split}] has {self.n_images} training images, fewer than one "
                f"global batch of {c.global_batch}; lower data.global_batch or use more images"
            )
        if self.n_eval_images == 0:
            field, what = ("data.eval_split", f"split '{c.eval_split}'") if c.eval_split else ("data.holdout_fraction", f"the held-out {c.holdout_fraction:g} of the images")
            raise ConfigError(f"{field}: {what} holds no images; raise data.holdout_fraction or name a non-empty data.eval_split")


# ================================================================================================
# building the store
# ================================================================================================
def store_inputs(cfg: DataConfig) -> dict:
    """Everything that determines the stored images (not the batch, seed or augmentation)."""
    return {
        "kind": "images",
        "dataset": cfg.dataset,
        "dataset_config": cfg.dataset_config,
        "data_files": corpus.files_fingerprint(cfg),
        "split": cfg.split,
        "eval_split": cfg.eval_split,
        "holdout_fraction": None if cfg.eval_split else cfg.holdout_fraction,
        "image_field": cfg.image_field,
        "label_field": cfg.label_field,
        "image_size": cfg.image_size,
        "image_channels": cfg.image_channels,
        "resize": RESIZE,
    }


def build_store(cfg: DataConfig, inputs: dict, tmp: str, hf_cache: str) -> dict:
    """Decode the split(s) into `tmp`; returns the manifest's fields."""
    t0 = time.perf_counter()
    train_ds = corpus.load_split(cfg, cfg.split, "data.split", hf_cache)
    eval_ds = corpus.load_split(cfg, cfg.eval_split, "data.eval_split", hf_cache) if cfg.eval_split else None
    where = f"{cfg.dataset} [{cfg.split}]"
    names = _check_columns(cfg, train_ds, where)
    if eval_ds is not None:
        _check_columns(cfg, eval_ds, f"{cfg.dataset} [{cfg.eval_split}]")
    counts = {"rows": 0, "train_images": 0, "eval_images": 0, "gray_to_rgb": 0}
    sums = np.zeros((2, cfg.image_channels))  # per channel: sum of pixels, of squared pixels (train)
    max_label = -1
    with _Writer(tmp, TRAIN_IMAGES, TRAIN_LABELS) as train, _Writer(tmp, EVAL_IMAGES, EVAL_LABELS) as held_out:
        holdout = None if eval_ds is not None else cfg.holdout_fraction
        for images, labels, held in _decoded(cfg, train_ds, where, holdout, counts, names):
            train.write(images[~held], labels[~held])
            held_out.write(images[held], labels[held])
            x = images[~held].reshape(-1, cfg.image_channels).astype(np.float64)
            sums += (x.sum(axis=0), (x * x).sum(axis=0))
            max_label = max(max_label, int(labels.max(initial=-1)))
        if eval_ds is not None:
            for images, labels, _ in _decoded(cfg, eval_ds, f"{cfg.dataset} [{cfg.eval_split}]", None, counts, names):
                held_out.write(images, labels)
                max_label = max(max_label, int(labels.max(initial=-1)))
    counts["train_images"], counts["eval_images"] = train.n, held_out.n
    if train.n == 0:
        field = "data.data_files" if corpus.is_local_builder(cfg) else "data.dataset"
        raise ConfigError(f"{field}: {where} has no training images ({counts['rows']} rows read); check the dataset, split and files")
    num_classes = len(names) if names else max_label + 1
    if max_label >= num_classes:  # a ClassLabel's ids are < its names; checked anyway
        raise ConfigError(f"data.label_field: label {max_label} of {where} is outside the {num_classes} classes its '{cfg.label_field}' feature names")
    n_pixels = train.n * cfg.image_size * cfg.image_size
    mean = sums[0] / n_pixels
    std = np.sqrt(np.maximum(sums[1] / n_pixels - mean**2, 0.0))
    return {
        "inputs": inputs,
        "dtype": "uint8",
        "image_shape": [cfg.image_size, cfg.image_size, cfg.image_channels],
        "num_classes": num_classes,
        "class_names": names,
        "channel_mean": mean.tolist(),
        "channel_std": std.tolist(),
        "counts": counts,
        "decode_seconds": round(time.perf_counter() - t0, 3),
    }


def _check_columns(cfg: DataConfig, ds, where: str) -> list[str] | None:
    """Named errors for missing columns and a non-integer label; returns the class names when the dataset has them."""
    columns = ds.column_names
    features = getattr(ds, "features", None)
    if columns is None:  # a stream that does not know its columns yet: checked on the first rows
        return _class_names(features, cfg.label_field)
    for field, name in (("data.image_field", cfg.image_field), ("data.label_field", cfg.label_field)):
        if name not in columns:
            raise ConfigError(f"{field}: '{name}' is not a column of {where}; its columns are {', '.join(columns)}; set --set {field}=<one of them>")
    if features is not None:
        import datasets  # noqa: PLC0415

        image, label = features[cfg.image_field], features[cfg.label_field]
        if not isinstance(image, datasets.Image):
            raise ConfigError(f"data.image_field: column '{cfg.image_field}' of {where} holds {image}, not images; pick an Image column")
        if not (isinstance(label, datasets.ClassLabel) or (isinstance(label, datasets.Value) and label.dtype.startswith(("int", "uint")))):
            raise ConfigError(f"data.label_field: column '{cfg.label_field}' of {where} holds {label}, not integer class labels; pick a label column")
    return _class_names(features, cfg.label_field)


def _class_names(features, label_field: str) -> list[str] | None:
    import datasets  # noqa: PLC0415

    label = features.get(label_field) if features is not None else None
    return list(label.names) if isinstance(label, datasets.ClassLabel) else None


def _decoded(cfg: DataConfig, ds, where: str, holdout: float | None, counts: dict, names: list[str] | None):
    """Batches (uint8 [n, S, S, C], int32 labels, held-out mask) of `ds`, decoded, converted and resized."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    if ds.column_names is not None:
        ds = ds.select_columns([cfg.image_field, cfg.label_field])
    total = len(ds) if hasattr(ds, "__len__") else None
    first = 0
    with tqdm(total=total, desc=f"decoding {where}", unit="img", disable=not corpus.show_progress()) as bar:
        for rows in ds.iter(batch_size=IMAGES_PER_BATCH):
            for field, name in (("data.image_field", cfg.image_field), ("data.label_field", cfg.label_field)):
                if name not in rows:
                    raise ConfigError(f"{field}: '{name}' is not a column of {where}; its columns are {', '.join(rows)}")
            labels = np.asarray(rows[cfg.label_field])
            if labels.dtype.kind not in "iu":
                raise ConfigError(f"data.label_field: column '{cfg.label_field}' of {where} holds {labels.dtype} values, not integer class labels")
            bad = (labels < 0) | (labels >= len(names) if names else False)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                span = f"0..{len(names) - 1}" if names else "0 or more"
                raise ConfigError(
                    f"data.label_field: label {int(labels[i])} of image {first + i} in {where} is outside {span}; "
                    "unlabelled splits (label -1) cannot train or evaluate a classifier: pick a labelled split"
                )
            images = np.stack([_to_array(img, cfg, where, first + i, counts) for i, img in enumerate(rows[cfg.image_field])])
            held = corpus.held_out_mask(np.arange(first, first + len(labels)), holdout)
            first += len(labels)
            counts["rows"] += len(labels)
            bar.update(len(labels))
            yield images, labels.astype(np.int32), held


def _to_array(img, cfg: DataConfig, where: str, index: int, counts: dict) -> np.ndarray:
    """One PIL image -> uint8 [S, S, C]: channels checked/converted, shorter side resized, center-cropped."""
    from PIL import Image  # noqa: PLC0415

    if img is None:
        raise ConfigError(f"data.image_field: image {index} of {where} is missing (null); drop such rows from the dataset")
    if not isinstance(img, Image.Image):
        raise ConfigError(f"data.image_field: column '{cfg.image_field}' of {where} holds {type(img).__name__}, not images")
    gray = img.mode in _GRAY_MODES
    if cfg.image_channels == 1:
        if not gray:
            raise ConfigError(
                f"data.image_channels: image {index} of {where} is colour (mode {img.mode}) but data.image_channels=1; "
                "set data.image_channels=3"
            )
        img = img.convert("L")
    else:
        if gray and index == 0:
            raise ConfigError(
                f"data.image_channels: {where} holds grayscale images (mode {img.mode}) but data.image_channels=3; "
                "set data.image_channels=1"
            )
        counts["gray_to_rgb"] += gray
        img = img.convert("RGB")
    S, (w, h) = cfg.image_size, img.size
    scale = S / min(w, h)
    w2, h2 = max(S, round(w * scale)), max(S, round(h * scale))
    if (w2, h2) != (w, h):
        img = img.resize((w2, h2), Image.Resampling.BILINEAR)
    left, top = (w2 - S) // 2, (h2 - S) // 2
    x = np.asarray(img.crop((left, top, left + S, top + S)), np.uint8)
    return x.reshape(S, S, cfg.image_channels)


class _Writer:
    """Appends uint8 images and int32 labels to two files of the store."""

    def __init__(self, folder: str, images_file: str, labels_file: str):
        self._images = open(os.path.join(folder, images_file), "wb")
        self._labels = open(os.path.join(folder, labels_file), "wb")
        self.n = 0

    def write(self, images: np.ndarray, labels: np.ndarray) -> None:
        self._images.write(np.ascontiguousarray(images, np.uint8).tobytes())
        self._labels.write(np.ascontiguousarray(labels, np.int32).tobytes())
        self.n += len(labels)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for f in (self._images, self._labels):
            f.flush()
            os.fsync(f.fileno())
            f.close()


# == configuration: the rules lib/config_rules.py runs for data.source=hf_images =======================
from lib.config import require  # noqa: E402  (the config section sits at the end)
from lib.data.augment import check_image_fields  # noqa: E402
from lib.data.base import SourceSpec  # noqa: E402


def _check(d: DataConfig) -> None:
    check_image_fields(d)
    require(bool(d.dataset), "data.dataset", "set a hub name (e.g. uoft-cs/cifar10) or imagefolder with data.data_files=<folder>")


SOURCE = SourceSpec(name="hf_images", task="classify", make=lambda cfg, data_root: ImageSource(cfg, data_root=data_root), validate=_check)
