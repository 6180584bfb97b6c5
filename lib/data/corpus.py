"""Documents from Hugging Face `datasets`: a Hub name or local files, in batches, with a held-out part.

`data.dataset` is either a local builder -- `text` (one document per line, as datasets does it),
`json` (one per record), `parquet`, `csv` -- reading `data.data_files` (comma-separated paths or
globs; `train=a.txt,validation=b.txt` names splits; for `imagefolder`, image files or one folder of
class folders, read as datasets' data_dir: its train/ test/ subfolders become splits), or a Hub name (or local dataset folder)
loaded with `load_dataset(name, data.dataset_config, split=..., streaming=...)`.

The held-out part is the dataset's own split (`data.eval_split`) or, when that is empty, the
documents whose index hashes below `data.holdout_fraction`: deterministic, independent of the
tokenizer and of how the corpus is batched, and decidable while streaming.

Nothing lands in ~/.cache: unless the user set HF_HOME / HF_DATASETS_CACHE they point under the
data root, and the datasets cache folder is also passed explicitly (datasets reads the environment
only when it is first imported).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import sys
from typing import Iterator

import numpy as np

from lib.config import ConfigError, DataConfig

LOCAL_BUILDERS = ("text", "json", "parquet", "csv", "imagefolder")
DOCS_PER_BATCH = 2048
_NAMED_SPLIT = re.compile(r"^([A-Za-z_][\w.-]*)=(.+)$")


# ================================================================================================
# where things are cached
# ================================================================================================
def configure_hf_cache(data_root: str) -> str:
    """Point Hugging Face caches under `data_root` unless the user chose; returns the datasets cache."""
    hf_home = os.environ.setdefault("HF_HOME", os.path.join(data_root, "hf"))
    return os.environ.get("HF_DATASETS_CACHE") or os.path.join(hf_home, "datasets")


def hub_cache() -> str:
    return os.environ.get("HF_HUB_CACHE") or os.path.join(os.environ["HF_HOME"], "hub")


def show_progress() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


# ================================================================================================
# data files
# ================================================================================================
def is_local_builder(cfg: DataConfig) -> bool:
    return cfg.dataset in LOCAL_BUILDERS


def image_folder(cfg: DataConfig) -> str | None:
    """The folder `data.data_files` names for the imagefolder builder (None: it names files)."""
    entries = [e.strip() for e in cfg.data_files.split(",") if e.strip()]
    if cfg.dataset != "imagefolder" or len(entries) != 1:
        return None
    path = os.path.abspath(os.path.expanduser(entries[0]))
    return path if os.path.isdir(path) else None


def data_files(cfg: DataConfig) -> list[str] | dict[str, list[str]] | None:
    """`data.data_files` parsed: a list of entries, or {split: entries} when splits are named.

    For local builders every entry is resolved to existing files (globs expanded, sorted)."""
    entries = [e.strip() for e in cfg.data_files.split(",") if e.strip()]
    if not entries:
        if is_local_builder(cfg):
            raise ConfigError(
                f"data.data_files: the '{cfg.dataset}' builder reads local files; set them, "
                f"e.g. --set data.data_files=/path/corpus.txt (comma-separated, globs allowed)"
            )
        return None
    named = [_NAMED_SPLIT.match(e) if not os.path.exists(e) else None for e in entries]
    if any(named) and not all(named):
        raise ConfigError(
            f"data.data_files: '{cfg.data_files}' names splits for some entries only; "
            "name all (train=a.txt,validation=b.txt) or none"
        )
    resolve = _existing_files if is_local_builder(cfg) else (lambda e: [e])
    if not any(named):
        return [f for e in entries for f in resolve(e)]
    by_split: dict[str, list[str]] = {}
    for m in named:
        by_split.setdefault(m.group(1), []).extend(resolve(m.group(2)))
    return by_split


def files_fingerprint(cfg: DataConfig) -> list:
    """What identifies the input for the store key: local files by path, size and mtime."""
    folder = image_folder(cfg)
    if folder:
        found = sorted(os.path.join(d, f) for d, _, names in os.walk(folder) for f in names)
        return [["", p, os.path.getsize(p), os.stat(p).st_mtime_ns] for p in found]
    files = data_files(cfg)
    if not is_local_builder(cfg):
        return files or []
    split_files = files.items() if isinstance(files, dict) else [("", files)]
    out = []
    for split, paths in split_files:
        for p in paths:
            st = os.stat(p)
            out.append([split, p, st.st_size, st.st_mtime_ns])
    return out


def _existing_files(entry: str) -> list[str]:
    pattern = os.path.abspath(os.path.expanduser(entry))
    matches = sorted(glob.glob(pattern, recursive=True))
    if not matches:
        raise ConfigError(
            f"data.data_files: no file matches '{entry}' (looked for {pattern}); check the path, "
            "or give a glob such as /data/corpus/*.txt"
        )
    folders = [m for m in matches if os.path.isdir(m)]
    if folders:
        raise ConfigError(f"data.data_files: '{folders[0]}' is a folder; give the files in it, e.g. {folders[0]}/*.txt")
    return matches


# ================================================================================================
# loading a split
# ================================================================================================
def load_split(cfg: DataConfig, split: str, field: str, cache_dir: str):
    """`datasets.load_dataset` for one split; failures become ConfigErrors naming the field to fix."""
    folder = image_folder(cfg)
    files = None if folder else data_files(cfg)
    import datasets  # noqa: PLC0415  (heavy; only text sources need it)

    kwargs = dict(split=split, streaming=cfg.streaming, cache_dir=cache_dir)
    try:
        if folder:
            return datasets.load_dataset(cfg.dataset, data_dir=folder, **kwargs)
        if is_local_builder(cfg):
            return datasets.load_dataset(cfg.dataset, data_files=files, **kwargs)
        return datasets.load_dataset(cfg.dataset, cfg.dataset_config or None, data_files=files, **kwargs)
    except ValueError as e:
        if "split" not in str(e).lower():
            raise ConfigError(f"data.dataset: could not load '{cfg.dataset}': {e}") from e
        hint = " (local files have only 'train' unless data_files names splits, e.g. train=a.txt,validation=b.txt)" if is_local_builder(cfg) else ""
        raise ConfigError(f"{field}: split '{split}' is not in '{cfg.dataset}': {e}{hint}") from e
    except Exception as e:  # noqa: BLE001  (network, missing dataset, bad files: all mean "cannot load")
        offline = " (offline mode is on: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE; it must already be cached)" if _offline() else ""
        raise ConfigError(
            f"data.dataset: could not load '{cfg.dataset}'{offline}: {type(e).__name__}: {e}. "
            "Check the Hub name (and data.dataset_config), the network, or use local files with "
            "--set data.dataset=text --set data.data_files=/path/corpus.txt"
        ) from e


def _offline() -> bool:
    from lib.data.tokenizer import hub_offline  # noqa: PLC0415

    return hub_offline()


# ================================================================================================
# documents in batches
# ================================================================================================
@dataclasses.dataclass
class DocumentBatch:
    train: list[str]
    held_out: list[str]
    rows: int  # rows read, including empty ones
    empty: int  # rows without text (empty string or null), skipped


def document_batches(ds, text_field: str, holdout_fraction: float | None, desc: str, action: str = "tokenizing") -> Iterator[DocumentBatch]:
    """Batches of documents from `ds`, split into train / held-out by `held_out_mask`."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    if check_text_field(ds, text_field, desc):
        ds = ds.select_columns([text_field])
    total = len(ds) if hasattr(ds, "__len__") else None
    first = 0
    with tqdm(total=total, desc=f"{action} {desc}", unit="doc", disable=not show_progress()) as bar:
        for rows in ds.iter(batch_size=DOCS_PER_BATCH):
            if text_field not in rows:  # streaming datasets may not know their columns up front
                raise _missing_field(text_field, desc, list(rows))
            texts = rows[text_field]
            held = held_out_mask(np.arange(first, first + len(texts)), holdout_fraction)
            first += len(texts)
            batch = DocumentBatch([], [], len(texts), 0)
            for text, is_held in zip(texts, held):
                if not text:
                    batch.empty += 1
                elif not isinstance(text, str):
                    raise ConfigError(
                        f"data.text_field: column '{text_field}' of {desc} holds {type(text).__name__} values, "
                        "not text; pick a string column"
                    )
                else:
                    (batch.held_out if is_held else batch.train).append(text)
            bar.update(len(texts))
            yield batch


def check_text_field(ds, text_field: str, desc: str) -> bool:
    """Raise if `ds` is known to lack the text column; False when its columns are not known yet."""
    if ds.column_names is None:
        return False
    if text_field not in ds.column_names:
        raise _missing_field(text_field, desc, ds.column_names)
    return True


def _missing_field(text_field: str, desc: str, columns: list[str]) -> ConfigError:
    return ConfigError(
        f"data.text_field: '{text_field}' is not a column of {desc}; its columns are "
        f"{', '.join(columns)}; set --set data.text_field=<one of them>"
    )


def held_out_mask(doc_index: np.ndarray, fraction: float | None) -> np.ndarray:
    """True for documents held out: a splitmix64 hash of the index, below `fraction` of its range."""
    if not fraction:
        return np.zeros(len(doc_index), bool)
    z = doc_index.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) < fraction * float(1 << 53)
