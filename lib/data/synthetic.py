"""The embedded default data: a synthetic "phrase language" with an exactly computable entropy floor.

A fixed lexicon of `synth_phrases` distinct phrases (lengths synth_min_len..synth_max_len over the
tokens 1..V-1) is drawn once from the seed. Text is an endless sequence of phrases drawn i.i.d.
with Zipf(synth_zipf) probabilities, each followed by the boundary token 0.

Because phrases are distinct and each ends with the boundary, the text decodes uniquely into
phrases, so its entropy rate is exactly
    floor = H(phrase distribution) / E[phrase length + 1]     (nats per token).
Loss falls as a power law in model size and tokens because a model must memorise a Zipf-tailed
lexicon: bigger models store more phrases, more tokens reveal rarer ones.
"""

from __future__ import annotations

import numpy as np

from lib.config import DataConfig
from lib.data.base import local_rows

BOUNDARY = 0
_TRAIN_STREAM, _EVAL_STREAM = 0, 1


class PhraseLanguage:
    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.vocab_size = cfg.synth_vocab
        rng = np.random.default_rng([cfg.seed, 0xC0FFEE])
        self.phrases = _distinct_phrases(rng, cfg)
        lengths = np.array([len(p) for p in self.phrases])
        ranks = np.arange(1, len(self.phrases) + 1, dtype=np.float64)
        probs = ranks ** -cfg.synth_zipf
        self.probs = probs / probs.sum()
        self._cdf = np.cumsum(self.probs)
        self._cdf[-1] = 1.0
        # Padded table: phrase tokens, then the boundary, then -1 padding.
        width = cfg.synth_max_len + 1
        self._table = np.full((len(self.phrases), width), -1, dtype=np.int32)
        for i, p in enumerate(self.phrases):
            self._table[i, : len(p)] = p
            self._table[i, len(p)] = BOUNDARY
        self._lengths1 = lengths + 1  # with the boundary
        self.mean_tokens_per_phrase = float(self.probs @ self._lengths1)
        self.phrase_entropy = float(-(self.probs * np.log(self.probs)).sum())
        self.entropy_floor = self.phrase_entropy / self.mean_tokens_per_phrase
        # Enough phrases to fill a row even if all are the shortest.
        self._phrases_per_row = (cfg.seq_len + 1) // (cfg.synth_min_len + 1) + 2

    # -- the Source interface ---------------------------------------------------------------------
    def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
        return self._rows(_TRAIN_STREAM, step, process_index, process_count)

    def eval_batch(self, index: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
        return self._rows(_EVAL_STREAM, index, process_index, process_count)

    def epoch(self, step: int) -> None:
        return None  # infinite: every batch is fresh

    def describe(self) -> dict:
        c = self.cfg
        return {
            "source": "synthetic",
            "vocab_size": self.vocab_size,
            "phrases": len(self.phrases),
            "zipf": c.synth_zipf,
            "phrase_lengths": [c.synth_min_len, c.synth_max_len],
            "entropy_floor": self.entropy_floor,
            "unigram_entropy": self.unigram_entropy(),
        }

    # -- exact quantities for checks ----------------------------------------------------------------
    def unigram_entropy(self) -> float:
        """Entropy of the stationary token frequencies (what a context-free model can reach)."""
        counts = np.zeros(self.vocab_size)
        for p_i, phrase in zip(self.probs, self.phrases):
            np.add.at(counts, np.asarray(phrase), p_i)
        counts[BOUNDARY] += 1.0
        freq = counts / counts.sum()
        nz = freq[freq > 0]
        return float(-(nz * np.log(nz)).sum())

    def sample_phrase_ids(self, rng: np.random.Generator, shape) -> np.ndarray:
        return np.searchsorted(self._cdf, rng.random(shape), side="right")

    # -- internals --------------------------------------------------------------------------------------
    def _rows(self, stream: int, index: int, process_index: int, process_count: int) -> np.ndarray:
        c = self.cfg
        # One generator per (seed, stream, index) draws the whole global batch, so the rows do not
        # depend on how many processes there are; each process then builds only its own rows.
        rng = np.random.default_rng([c.seed, stream, index])
        ids_BK = self.sample_phrase_ids(rng, (c.global_batch, self._phrases_per_row))
        ids_BK = ids_BK[local_rows(c.global_batch, process_index, process_count)]
        tokens = self._table[ids_BK]  # [B, K, width]
        keep = tokens >= 0
        flat = tokens[keep]
        starts = np.concatenate([[0], np.cumsum(keep.sum(axis=(1, 2)))[:-1]])
        # Each row opens with a boundary so position 0 is in phase with the phrase stream.
        body = flat[starts[:, None] + np.arange(c.seq_len)[None, :]]
        return np.concatenate([np.full((len(ids_BK), 1), BOUNDARY, np.int32), body], axis=1).astype(np.int32)


def _distinct_phrases(rng: np.random.Generator, cfg: DataConfig) -> list[tuple[int, ...]]:
    n_possible = sum((cfg.synth_vocab - 1) ** n for n in range(cfg.synth_min_len, cfg.synth_max_len + 1))
    if cfg.synth_phrases > n_possible // 2:
        raise ValueError(
            f"data.synth_phrases={cfg.synth_phrases} is too many distinct phrases for vocab {cfg.synth_vocab} "
            f"and lengths {cfg.synth_min_len}..{cfg.synth_max_len}; lower it or widen the lengths"
        )
    seen: set[tuple[int, ...]] = set()
    out: list[tuple[int, ...]] = []
    while len(out) < cfg.synth_phrases:
        n = int(rng.integers(cfg.synth_min_len, cfg.synth_max_len + 1))
        phrase = tuple(int(t) for t in rng.integers(1, cfg.synth_vocab, size=n))
        if phrase not in seen:
            seen.add(phrase)
            out.append(phrase)
    return out
