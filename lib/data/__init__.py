"""Data sources behind one interface (see `Source` in lib/data/base.py).

`make_source(data_cfg)` builds the source a config names; `resolve_vocab(run_cfg)` fills
`model.vocab_size` from it, so the vocabulary flows from the data into the model.

May import: lib.config, lib.store.storage (paths that may be gs://).
"""

from __future__ import annotations

import dataclasses

from lib.config import ConfigError, DataConfig, RunConfig
from lib.data.base import Source


def make_source(cfg: DataConfig, data_root: str | None = None) -> Source:
    if cfg.source == "synthetic":
        from lib.data.synthetic import PhraseLanguage

        return PhraseLanguage(cfg)
    if cfg.source == "hf":
        from lib.data.text import TextSource  # noqa: PLC0415  (pulls in datasets/tokenizers lazily)

        return TextSource(cfg, data_root=data_root)
    if cfg.source == "synthetic_images":
        from lib.data.images import SyntheticImages

        return SyntheticImages(cfg)
    if cfg.source == "hf_images":
        from lib.data.image_store import ImageSource  # noqa: PLC0415  (pulls in datasets/PIL lazily)

        return ImageSource(cfg, data_root=data_root)
    raise ConfigError(f"data.source: unknown value '{cfg.source}'; choose one of synthetic, hf, synthetic_images, hf_images")


def resolve_vocab(cfg: RunConfig, source: Source) -> RunConfig:
    """Set model.vocab_size from the source; a different explicit size is an error, not a fallback."""
    if cfg.model.vocab_size in (0, source.vocab_size):
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=source.vocab_size))
    raise ConfigError(
        f"model.vocab_size={cfg.model.vocab_size} does not match the data's vocabulary ({source.vocab_size}); "
        "leave model.vocab_size at 0 to take it from the data"
    )
