"""Data sources behind one interface (see `Source` in lib/data/base.py).

`make_source(data_cfg)` builds the source a config names; `resolve_vocab(run_cfg)` fills
`model.vocab_size` from it, so the vocabulary flows from the data into the model.

May import: lib.config, lib.store.storage (paths that may be gs://).
"""

from __future__ import annotations

import dataclasses

from lib.config import IMAGE_SOURCES, ConfigError, DataConfig, RunConfig
from lib.data import image_store, images, synthetic, text
from lib.data.base import Source, SourceSpec

# The registered sources (config: data.source); each declares its task, factory and fields' checks in
# a marked section at the end of its file. Their heavy libraries (datasets, PIL, tokenizers) load lazily.
SOURCES: dict[str, SourceSpec] = {s.name: s for s in (synthetic.SOURCE, text.SOURCE, images.SOURCE, image_store.SOURCE)}
assert {n for n, s in SOURCES.items() if s.task == "classify"} == set(IMAGE_SOURCES), \
    "lib.config.IMAGE_SOURCES (which lib.tasks reads) must be the registered sources of task classify"


def source_spec(name: str) -> SourceSpec:
    if name not in SOURCES:
        raise ConfigError(f"data.source: unknown value '{name}'; choose one of {', '.join(SOURCES)}")
    return SOURCES[name]


def make_source(cfg: DataConfig, data_root: str | None = None) -> Source:
    return source_spec(cfg.source).make(cfg, data_root)


def resolve_vocab(cfg: RunConfig, source: Source) -> RunConfig:
    """Set model.vocab_size from the source; a different explicit size is an error, not a fallback."""
    if cfg.model.vocab_size in (0, source.vocab_size):
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=source.vocab_size))
    raise ConfigError(
        f"model.vocab_size={cfg.model.vocab_size} does not match the data's vocabulary ({source.vocab_size}); "
        "leave model.vocab_size at 0 to take it from the data"
    )
