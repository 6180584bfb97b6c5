"""The embedded default data: a synthetic "phrase language" with an exactly computable loss floor.

Text is an endless sequence of phrases drawn i.i.d., each followed by the boundary token 0. The
phrase of rank r = 1, 2, ... is generated from (seed, r) alone, so the lexicon is never stored:

    ID      the n base-b digits of r, most significant first (n = 1 + floor(log_b r)), each digit
            relabelled by a keyed affine permutation chosen by a hash of its node in the digit trie;
            tokens 1..b with b = (synth_vocab - 1) // 2
    filler  synth_filler_len tokens hashed from (seed, r); tokens b+1..synth_vocab-1
    0       the boundary

Ranks follow a discrete Pareto law truncated at b^D (D = synth_id_digits, by default the most
digits an int64 rank holds: 12 for vocab 64, 7 for vocab 512):

    P(rank >= r) = (r^-a - b^-aD) / (1 - b^-aD),    a = synth_zipf - 1,
    p_r = (r^-a - (r+1)^-a) / (1 - b^-aD)          (~ a r^-zipf: Zipf's law).

Why this shape:
- Distinct by construction, and prefix-free: ranks have distinct digit strings, the relabelling is
  a bijection at every node, and the first filler token (never an ID token) ends the ID. So the
  text decodes uniquely and the boundary after a phrase carries no information.
- The tail the model has not memorised follows ONE power law: the mass beyond rank r is
  P(rank > r) = ((r+1)^-a - b^-aD) / (1 - b^-aD), whose local exponent d log P / d log r stays
  within 1% of -a for every r from 10^2 to 10^9 (zipf 1.3, vocab 64 or 512: -0.297 at 10^2 from
  the +1, -0.3006 / -0.3013 at 10^9 from the truncation). The old 20,000-phrase Zipf(1.3) lexicon
  went from -0.38 at r=10^2 to -0.51 at 10^3 and -2.1 at 10^4; the old 1M-phrase Zipf(1.1) one
  from -0.34 at 3e4 to -0.88 at 3e5. Mapping model size to a memorised rank with ~2 bits of
  storage per parameter (Allen-Zhu & Li 2024) and synth_filler_len * log2(filler tokens) bits per
  phrase (25 for vocab 64, 40 for vocab 512), r ~ 2N / bits: quickstart's 4k..150k parameters
  reach ranks ~300..12,000, where the local exponent is -0.2990..-0.3000, and isoflop_gpu's
  0.6M..270M parameters ranks ~3e4..1.4e7, where it is -0.3000..-0.3004 (tests check both).
- Everything the floor needs is closed form. The ranks below the ID prefix s (t digits) are s and
  the intervals [s b^k, (s+1) b^k), so the prefix has probability
      N_t(s) = p~(s) (1 - b^-a(D-t+1)) / (1 - b^-a) / (1 - b^-aD),    p~(s) = s^-a - (s+1)^-a;
  once the first filler token is seen the phrase is known (probability p_r) and the rest is free.
  Sums over a digit block [b^(n-1), b^n) are exact below 2^21 terms and a Gauss-Legendre
  integral of the smooth summand beyond (error < 1e-12; tests compare both on one block).
- Sampling is counter-based: the uniforms of row i of a stream are a hash of (seed, stream, i,
  phrase slot), so `batch(step)` is a pure function of (seed, step), any process builds only its
  own rows, and eval rows do not depend on the batch size.

Theory: the exponents a scaling fit should find (Hutter 2021, "Learning curve theory"). A model
gets a phrase's filler right only if it has memorised that phrase; everything else in the language
(the ID digits' trie, the boundary) the floor already charges for. With a = synth_zipf - 1:
- Capacity. A model that stores the k most frequent phrases (k ~ N: a phrase costs a fixed number of
  bits) misses the tail mass P(rank > k) ~ k^-a, so L(N) - E ~ N^-alpha with alpha = a (0.30).
- Data. D tokens hold M = D / mean_tokens_per_phrase phrases; the mass of the phrases never seen is
      U(M) = sum_r p_r (1 - p_r)^M ~ a^(1/(1+a)) / (1+a) * Gamma(a/(1+a)) * M^-(a/(1+a))
  (the sum taken as an integral with u = M p_r), so beta = a / (1 + a) (0.23).
- Allocation. With L = E + A N^-alpha + B D^-beta, N_opt ~ C^a' with a' = beta / (alpha + beta)
  = 1 / (2 + a) (0.43).
U(M) follows its power law closely at any size that trains (`unseen_mass` is exact: its local
exponent is beta within 0.001 for M = 1e3..1e11, tests check it). The capacity argument is the
asymptotic one: a small model still spends parameters on the digits' structure, not on phrases.
A lower bound on the data term at any D, free of those caveats: a never-seen phrase has a filler
the model cannot know (a hash of its rank), so each of its F filler tokens costs at least
log(filler tokens) nats above the floor (an unknown uniform draw: no fixed guess does better on
average), and per token
      excess(D) >= U(M) * F * log(filler tokens) / mean_tokens_per_phrase    (`never_seen_bound`),
0.181 / 0.125 / 0.074 nats/token at D = 1e6 / 5e6 / 5e7 for the quickstart's language (vocab 64,
F 5). It counts only phrases seen zero times; a phrase seen once need not be memorised either.

Two floors (nats/token):
    entropy_rate   H(phrase) / E[length + 1]: the infinite stream's rate, what long windows reach.
    entropy_floor  the best achievable MEAN loss over a row's seq_len predicted tokens, rows starting
                   at a boundary (what a run's loss is compared with). It is higher than the rate:
                   a phrase cut by the window end pays for its ID digits (the costly part) but not
                   for its free filler. A renewal recursion over phrase lengths computes it
                   exactly: f(t) = expected loss of the first t tokens after a boundary,
                     f(t) = g(t) + sum_n [n+F+1 <= t] (A_n + pi_n f(t - n - F - 1))
                   with pi_n = P(n ID digits), A_n = sum over n-digit ranks of -p log p, and
                   g(t) = E[-log P(first t tokens of a phrase); length >= t]; floor = f(T) / T.
"""

from __future__ import annotations

import math

import numpy as np

from lib.config import ConfigError, DataConfig
from lib.data.base import local_rows

BOUNDARY = 0
_TRAIN_STREAM, _EVAL_STREAM = 0, 1
# What a predicted token is (PhraseLanguage.target_roles).
ROLE_ID, ROLE_FIRST_FILLER, ROLE_LATER_FILLER, ROLE_BOUNDARY = 0, 1, 2, 3
ROLE_NAMES = ("id", "first_filler", "later_filler", "boundary")
# A rank's leading digits, up to the first that carries more than 2^32, come from the inverse CDF in
# float64: each value of them is hit by a grid of uniforms fine enough that its probability is right
# to 3e-5 (vocab 64) / 2e-3 (vocab 512) relative. Its other digits are drawn uniformly: over such a
# run of ranks p_r varies by < (1 + a) / b^(digits - 1) relative (1.5e-9 / 3e-10). Either error
# moves a loss by < 1e-8 nats.
_EXACT_BITS = 32
_EXACT_SUM_TERMS = 1 << 21  # digit blocks up to this size are summed term by term
# Hash "purposes": independent streams of 64-bit words per (row, slot) or per rank / trie node.
_DIGITS, _BLOCK, _LOW, _SCRAMBLE, _FILLER = 1, 2, 3, 4, 5


class PhraseLanguage:
    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.vocab_size = cfg.synth_vocab
        self.base = b = (cfg.synth_vocab - 1) // 2  # ID digits are tokens 1..b, filler tokens b+1..vocab-1
        self.filler_vocab = cfg.synth_vocab - 1 - b
        self.filler_len = F = cfg.synth_filler_len
        self.alpha = a = cfg.synth_zipf - 1.0
        limit = synth_max_id_digits(cfg.synth_vocab)  # b^D <= 2^62: ranks and trie nodes are int64
        if not 0 <= cfg.synth_id_digits <= limit:  # validate() says so first; a bare DataConfig may skip it
            raise ConfigError(f"data.synth_id_digits: got {cfg.synth_id_digits}; use 1..{limit}, or 0 for {limit}")
        self.id_digits = D = cfg.synth_id_digits or limit
        self.n_phrases = b**D - 1
        self._pow = np.array([b**k for k in range(D + 1)], dtype=np.int64)
        self._z = -math.expm1(-a * D * math.log(b))  # 1 - b^-aD: the truncated law's total mass
        # Per digit count n = 1..D: P(n digits) and sum over n-digit ranks of -p~ log p~ (unnormalised).
        edges = np.exp(-a * np.log(b) * np.arange(D + 1))  # b^-a k
        self._block_mass = edges[:-1] - edges[1:]  # sum of p~ over [b^(n-1), b^n)
        self._block_plogp = np.array([_sum_neg_plogp(a, b ** (n - 1), b**n - 1) for n in range(1, D + 1)])
        self.digit_probs = self._block_mass / self._z  # pi_n
        self._digit_cdf = np.cumsum(self.digit_probs)
        self._digit_cdf[-1] = 1.0
        # A_n = sum over n-digit ranks of -p log p with p = p~ / z.
        self._phrase_plogp = (self._block_plogp + math.log(self._z) * self._block_mass) / self._z
        # H_node(t) = sum over depth-t trie nodes of -N log N, N = c_t p~.
        t = np.arange(1, D + 1)
        self._node_scale = -np.expm1(-a * math.log(b) * (D - t + 1)) / -math.expm1(-a * math.log(b)) / self._z
        self._node_plogp = self._node_scale * (self._block_plogp - np.log(self._node_scale) * self._block_mass)
        self.mean_id_digits = float(t @ self.digit_probs)
        self.mean_tokens_per_phrase = self.mean_id_digits + F + 1  # with the boundary
        self.phrase_entropy = float(self._phrase_plogp.sum())
        self.entropy_rate = self.phrase_entropy / self.mean_tokens_per_phrase
        self.entropy_floor = self.window_floor(cfg.seq_len)
        # Enough phrase slots to fill a row even if every phrase is the shortest (1 digit + F + boundary).
        self._slots_per_row = -(-cfg.seq_len // (F + 2))
        # Per-node relabelling of digits: d -> (u d + c) mod b with u a unit mod b.
        self._units = np.array([u for u in range(1, b) if math.gcd(u, b) == 1] or [1], dtype=np.int64)
        self._unit_inverse = np.array([pow(int(u), -1, b) if b > 1 else 0 for u in self._units], dtype=np.int64)
        key = _splitmix(np.array([cfg.seed], dtype=np.uint64) ^ np.uint64(0xC0FFEE))
        # Keys of the hash streams, mixed once: words are hashed as _hash(key, word1, word2, ...).
        self._stream_keys = {s: _hash(key, np.uint64(s)) for s in (_TRAIN_STREAM, _EVAL_STREAM)}
        self._scramble_key, self._filler_key = _hash(key, np.uint64(_SCRAMBLE)), _hash(key, np.uint64(_FILLER))
        self._unigram_entropy = None

    # -- the Source interface ---------------------------------------------------------------------
    def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
        """Rows step*B .. step*B+B-1 of the training stream (this process's block of them)."""
        B = self.cfg.global_batch
        mine = local_rows(B, process_index, process_count)
        return self._rows(_TRAIN_STREAM, step * B + np.arange(mine.start, mine.stop, dtype=np.int64))

    def eval_rows(self, start_row: int, n_rows: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
        """This process's block of held-out rows start_row .. start_row+n_rows-1 (independent of the batch size)."""
        mine = local_rows(n_rows, process_index, process_count)
        return self._rows(_EVAL_STREAM, start_row + np.arange(mine.start, mine.stop, dtype=np.int64))

    def epoch(self, step: int) -> None:
        return None  # infinite: every batch is fresh

    def describe(self) -> dict:
        c = self.cfg
        return {
            "source": "synthetic",
            "vocab_size": self.vocab_size,
            "zipf": c.synth_zipf,
            "id_digits": self.id_digits,
            "phrases": self.n_phrases,
            "filler_len": self.filler_len,
            "entropy_floor": self.entropy_floor,  # best mean loss over a row of seq_len tokens
            "entropy_rate": self.entropy_rate,  # the infinite stream's rate
            "unigram_entropy": self.unigram_entropy(),
            "theory": self.theory(),
        }

    # -- exact quantities ---------------------------------------------------------------------------
    def window_floor(self, seq_len: int) -> float:
        """Best achievable mean loss (nats/token) over seq_len tokens that start after a boundary."""
        D, F = self.id_digits, self.filler_len
        n = np.arange(1, D + 1)
        # g(t): the phrase (possibly) cut by the window end after t tokens. t <= n: an ID prefix
        # (a trie node); n < t <= n + F: the ID is complete, the phrase known.
        g = np.zeros(seq_len + 1)
        for t in range(1, seq_len + 1):
            g[t] = (self._node_plogp[t - 1] if t <= D else 0.0) + self._phrase_plogp[(n < t) & (t <= n + F)].sum()
        f = np.zeros(seq_len + 1)
        for t in range(1, seq_len + 1):
            whole = n + F + 1 <= t  # phrases ending (with their boundary) inside the window
            f[t] = g[t] + (self._phrase_plogp[whole] + self.digit_probs[whole] * f[t - n[whole] - F - 1]).sum()
        return float(f[seq_len] / seq_len)

    def theory(self) -> dict:
        """The asymptotic exponents of L(N, D) = E + A N^-alpha + B D^-beta on this language and the
        allocation exponent a (N_opt ~ C^a) they imply; derived in the module docstring."""
        alpha = self.alpha
        beta = alpha / (1.0 + alpha)
        return {"alpha": alpha, "beta": beta, "a": beta / (alpha + beta)}

    def unseen_mass(self, phrases: float) -> float:
        """E[mass of the phrases that `phrases` i.i.d. draws never hit] = sum_r p_r (1 - p_r)^M."""
        M, a, z = float(phrases), self.alpha, self._z

        def summand(x):
            p = _p_tilde(x, a) / z
            return p * np.exp(M * np.log1p(-p))

        return _sum_smooth(summand, 1, self.n_phrases)

    def never_seen_bound(self, tokens: float) -> float:
        """A lower bound (nats/token) on the loss above the floor after training on `tokens` tokens:
        the filler of every never-seen phrase costs log(filler tokens) per token (module docstring)."""
        per_phrase = self.mean_tokens_per_phrase
        return self.unseen_mass(tokens / per_phrase) * self.filler_len * math.log(self.filler_vocab) / per_phrase

    def target_roles(self, tokens_BT1) -> np.ndarray:
        """[B, T] role of each predicted token of rows [B, T+1] (rows open with a boundary): ROLE_ID (an
        ID digit), ROLE_FIRST_FILLER (the filler token that ends the ID), ROLE_LATER_FILLER (filler
        tokens 2..F: given the ID they are fixed, so their Bayes loss is exactly 0 and a model's loss on
        them is what it has not memorised), ROLE_BOUNDARY. Read from token values alone (the classes'
        token ranges are disjoint)."""
        tokens_BT1 = np.asarray(tokens_BT1)
        prev_BT, next_BT = tokens_BT1[:, :-1], tokens_BT1[:, 1:]
        filler_BT = next_BT > self.base
        roles_BT = np.where(next_BT == BOUNDARY, ROLE_BOUNDARY, ROLE_ID)
        roles_BT = np.where(filler_BT, np.where(prev_BT > self.base, ROLE_LATER_FILLER, ROLE_FIRST_FILLER), roles_BT)
        return roles_BT.astype(np.int8)

    def target_ranks(self, tokens_BT1) -> np.ndarray:
        """[B, T] rank of the phrase each predicted token's filler belongs to (its ID decoded from the
        row's tokens, not from how the row was drawn), -1 for ID digits and boundaries."""
        tokens_BT1 = np.asarray(tokens_BT1)
        ranks_BT = np.full((tokens_BT1.shape[0], tokens_BT1.shape[1] - 1), -1, np.int64)
        decoded: dict = {}
        for i, row in enumerate(tokens_BT1.tolist()):
            digits, rank = [], -1
            for t, token in enumerate(row[1:]):  # row[0] is the opening boundary
                if token == BOUNDARY:
                    digits, rank = [], -1
                elif token <= self.base:
                    digits.append(token)
                else:
                    if rank < 0:
                        key = tuple(digits)
                        if key not in decoded:
                            decoded[key] = self._decode_id(key) or -1
                        rank = decoded[key]
                    ranks_BT[i, t] = rank
        return ranks_BT

    def tail_mass(self, rank) -> np.ndarray:
        """P(a phrase's rank > `rank`) = ((rank+1)^-a - b^-aD) / (1 - b^-aD): the mass a model that
        knows exactly the `rank` most frequent phrases has not memorised (any real rank >= 0)."""
        edge = math.exp(-self.alpha * self.id_digits * math.log(self.base))
        return (np.power(np.asarray(rank, dtype=np.float64) + 1.0, -self.alpha) - edge) / self._z

    def memory_beyond(self, rank) -> np.ndarray:
        """Nats per predicted token lost on filler tokens 2..F (Bayes loss 0) by a model that knows
        exactly the `rank` most frequent phrases and nothing of the others (a uniform guess over the
        filler alphabet): tail_mass(rank) (F - 1) log(filler tokens) / tokens per phrase."""
        return self.tail_mass(rank) * (self.filler_len - 1) * math.log(self.filler_vocab) / self.mean_tokens_per_phrase

    def rank_of_prob(self, prob) -> np.ndarray:
        """The (real) rank r with p_r = `prob` under the smooth law p~(r) = r^-a - (r+1)^-a (bisection
        in log r; 1 where prob is above p_1)."""
        prob = np.asarray(prob, dtype=np.float64)
        lo, hi = np.zeros_like(prob), np.full_like(prob, math.log(float(self.n_phrases)))
        for _ in range(80):
            mid = (lo + hi) / 2
            above = _p_tilde(np.exp(mid), self.alpha) / self._z > prob
            lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
        return np.exp((lo + hi) / 2)

    def rank_probs(self, ranks) -> np.ndarray:
        return _p_tilde(np.asarray(ranks, dtype=np.float64), self.alpha) / self._z

    def phrase_tokens(self, ranks) -> list[tuple[int, ...]]:
        """The phrase of each rank (without its boundary)."""
        tokens = self._phrase_table(np.asarray(ranks, dtype=np.int64).reshape(-1))
        return [tuple(int(x) for x in row[(row >= 0)][:-1]) for row in tokens]

    def prefix_mass(self, prefix) -> float:
        """P(a phrase starts with `prefix`) (tokens of one phrase, no boundary), in closed form."""
        prefix = [int(x) for x in prefix]
        if not prefix:
            return 1.0
        b, n_id = self.base, 0
        while n_id < len(prefix) and 1 <= prefix[n_id] <= b:
            n_id += 1
        if n_id == 0 or n_id > self.id_digits:
            return 0.0
        s = self._decode_id(prefix[:n_id])
        if s is None:
            return 0.0
        if n_id == len(prefix):  # an ID prefix: the trie node s at depth n_id
            return float(self._node_scale[n_id - 1] * _p_tilde(np.float64(s), self.alpha))
        full = self.phrase_tokens([s])[0]
        return float(self.rank_probs(s)) if tuple(prefix) == full[: len(prefix)] else 0.0

    def window_loss(self, row) -> float:
        """The optimal predictor's total loss (nats) on tokens 1.. of a row that starts at a boundary."""
        row = [int(x) for x in row]
        assert row[0] == BOUNDARY
        loss, start = 0.0, 1
        for i in range(1, len(row) + 1):
            if i == len(row) or row[i] == BOUNDARY:
                part = row[start:i]
                if i < len(row):  # a whole phrase and its boundary
                    ids = [x for x in part if x <= self.base]
                    loss -= math.log(self.rank_probs(self._decode_id(ids)))
                elif part:  # cut by the window end
                    loss -= math.log(self.prefix_mass(part))
                start = i + 1
        return loss

    def unigram_entropy(self) -> float:
        """Entropy of the stationary token frequencies (what a context-free model can reach).

        Expected token counts per phrase: the boundary once; filler tokens exactly for the top
        2^18 ranks, the remaining mass spread uniformly (its hashed tokens are uniform); ID tokens
        exactly for every child of the trie nodes below S = max(64, 2^17 / b) (4228 for vocab 64, 514
        for 512), evenly for the children of larger nodes, whose masses differ by < 1.3/S relative.
        A reference number, accurate to ~1e-5 nats.
        """
        if self._unigram_entropy is None:
            self._unigram_entropy = self._compute_unigram_entropy()
        return self._unigram_entropy

    # -- internals --------------------------------------------------------------------------------------
    def _rows(self, stream: int, rows: np.ndarray) -> np.ndarray:
        T, K = self.cfg.seq_len, self._slots_per_row
        key_RK = _hash(_hash(self._stream_keys[stream], rows.astype(np.uint64))[:, None], np.arange(K, dtype=np.uint64)[None, :])
        tokens = self._phrase_table(self._sample_ranks(key_RK.reshape(-1))).reshape(len(rows), -1)
        keep = tokens >= 0
        flat = tokens[keep]
        starts = np.concatenate([[0], np.cumsum(keep.sum(axis=1))[:-1]])
        # Each row opens with a boundary so position 0 is in phase with the phrase stream.
        body = flat[starts[:, None] + np.arange(T)[None, :]]
        return np.concatenate([np.full((len(rows), 1), BOUNDARY, np.int32), body], axis=1).astype(np.int32)

    def _sample_ranks(self, key: np.ndarray) -> np.ndarray:
        """Exact inverse-CDF draws: the digit count n, then the rank within [b^(n-1), b^n)."""
        b, a = self.base, self.alpha
        n = np.searchsorted(self._digit_cdf, _uniform(_hash(key, np.uint64(_DIGITS))), side="right") + 1
        # Within the block, y = rank / b^(n-1) has P(y >= z) = (z^-a - b^-a) / (1 - b^-a) for z in [1, b].
        lo = b**-a
        w = 1.0 - _uniform(_hash(key, np.uint64(_BLOCK)))  # (0, 1]
        y = (lo + w * (1.0 - lo)) ** (-1.0 / a)
        top = np.minimum(n, max(1, int(_EXACT_BITS / math.log2(b)) + 1))  # digits drawn from the exact law
        m = n - top  # low digits drawn uniformly
        hi = np.clip(np.floor(self._pow[top - 1] * y).astype(np.int64), self._pow[top - 1], self._pow[top] - 1)
        ranks = hi * self._pow[m]
        for j in range(int(m.max(initial=0))):
            digit = (_hash(key, np.uint64(_LOW), np.uint64(j)) % np.uint64(b)).astype(np.int64)
            ranks += np.where(j < m, digit * self._pow[np.maximum(m - 1 - j, 0)], 0)
        return ranks

    def _id_digits(self, ranks: np.ndarray):
        """Digits (most significant first), their trie nodes (the value of the digits before), the digit count."""
        D, b = self.id_digits, self.base
        n = np.searchsorted(self._pow, ranks, side="right")  # b^(n-1) <= r < b^n
        e = n[:, None] - 1 - np.arange(D)[None, :]  # the power of b each digit position carries
        head = ranks[:, None] // self._pow[np.maximum(e, 0)]  # the digits up to and including this one
        nodes = head // b
        return head - nodes * b, nodes, n, e >= 0

    def _relabel(self, nodes: np.ndarray):
        h = _hash(self._scramble_key, nodes.astype(np.uint64))
        which = (h % np.uint64(len(self._units))).astype(np.int64)
        shift = ((h >> np.uint64(32)) % np.uint64(self.base)).astype(np.int64)
        return which, shift

    def _phrase_table(self, ranks: np.ndarray) -> np.ndarray:
        """[P, D+F+1] tokens of each rank's phrase: ID digits, filler, boundary, then -1 padding."""
        D, F, b = self.id_digits, self.filler_len, self.base
        digits, nodes, n, valid = self._id_digits(ranks)
        which, shift = self._relabel(nodes)
        id_tokens = 1 + (self._units[which] * digits + shift) % b
        filler = self._filler(ranks)
        out = np.full((len(ranks), D + F + 1), -1, np.int32)
        out[:, :D] = np.where(valid, id_tokens, -1)
        p = np.arange(len(ranks))
        for k in range(F):
            out[p, n + k] = filler[:, k]
        out[p, n + F] = BOUNDARY
        return out

    def _filler(self, ranks: np.ndarray) -> np.ndarray:
        words = _hash(_hash(self._filler_key, ranks.astype(np.uint64))[:, None], np.arange(self.filler_len, dtype=np.uint64)[None, :])
        return (self.base + 1 + words % np.uint64(self.filler_vocab)).astype(np.int32)

    def _decode_id(self, tokens) -> int | None:
        """The rank whose ID tokens these are (None if no rank has them)."""
        b, s = self.base, 0
        for token in tokens:
            which, shift = self._relabel(np.array([s], dtype=np.int64))
            d = int(self._unit_inverse[which[0]] * (token - 1 - shift[0]) % b)
            if s == 0 and d == 0:
                return None  # a leading zero digit
            s = s * b + d
        return s if s > 0 else None

    def _compute_unigram_entropy(self) -> float:
        b, F, D = self.base, self.filler_len, self.id_digits
        counts = np.zeros(self.vocab_size)
        counts[BOUNDARY] = 1.0
        # Filler tokens: the top ranks exactly, the rest of the mass uniformly.
        top = np.arange(1, min(1 << 18, self.n_phrases) + 1, dtype=np.int64)
        p_top = self.rank_probs(top)
        filler = self._filler(top)
        for k in range(F):
            np.add.at(counts, filler[:, k], p_top)
        counts[b + 1:] += (1.0 - p_top.sum()) * F / self.filler_vocab
        # ID tokens: a child node c = s*b + d at depth t has mass N_t(c); small parents exactly.
        small = max(64, (1 << 17) // b)
        for t in range(1, D + 1):
            lo_node, hi_node = b ** (t - 1), b**t  # depth-t nodes
            exact_hi = min(hi_node, small * b)
            if lo_node < exact_hi:
                child = np.arange(lo_node, exact_hi, dtype=np.int64)
                parent, d = child // b, child % b
                which, shift = self._relabel(parent)
                token = 1 + (self._units[which] * d + shift) % b
                np.add.at(counts, token, self._node_scale[t - 1] * _p_tilde(child.astype(np.float64), self.alpha))
            rest_from = max(lo_node, exact_hi)
            if rest_from < hi_node:  # sum of N_t over nodes [rest_from, b^t), spread evenly over the b digits
                rest = self._node_scale[t - 1] * (rest_from ** -self.alpha - b ** (-self.alpha * t))
                counts[1 : b + 1] += rest / b
        freq = counts / counts.sum()
        nz = freq[freq > 0]
        return float(-(nz * np.log(nz)).sum())


# ---- closed forms -------------------------------------------------------------------------------
def _p_tilde(x, a: float):
    """x^-a - (x+1)^-a without cancellation for large x."""
    return x**-a * -np.expm1(-a * np.log1p(1.0 / x))


def _neg_plogp(x, a: float):
    p = _p_tilde(x, a)
    return -p * np.log(p)


def _sum_neg_plogp(a: float, first: int, last: int) -> float:
    """sum_{s=first}^{last} -p~(s) log p~(s) (see _sum_smooth)."""
    return _sum_smooth(lambda x: _neg_plogp(x, a), first, last)


def _sum_smooth(f, first: int, last: int) -> float:
    """sum_{s=first}^{last} f(s) for a summand f smooth in log s (vectorised over float64 arrays).

    Term by term for short ranges; otherwise the exact head and, from s0 = 2^16 on, the midpoint
    Euler-Maclaurin form sum_{s0}^{last} f(s) = integral_{s0-1/2}^{last+1/2} f - (f'(last+1/2) - f'(s0-1/2))/24 + R
    with |R| ~ |f'''(s0)| ~ f(s0) / s0^3 < 1e-20. The integral is taken in u = log x by composite
    24-point Gauss-Legendre on panels 1/8 wide (the integrand is smooth); f' by a central difference.
    """
    if last - first + 1 <= _EXACT_SUM_TERMS:
        return float(f(np.arange(first, last + 1, dtype=np.float64)).sum())
    s0 = max(first, 1 << 16)
    head = float(f(np.arange(first, s0, dtype=np.float64)).sum()) if s0 > first else 0.0
    lo, hi = math.log(s0 - 0.5), math.log(last + 0.5)
    panels = max(1, math.ceil((hi - lo) * 8))
    nodes, weights = np.polynomial.legendre.leggauss(24)
    edges = np.linspace(lo, hi, panels + 1)
    half = (edges[1:] - edges[:-1])[:, None] / 2
    u = (edges[:-1, None] + edges[1:, None]) / 2 + half * nodes[None, :]
    x = np.exp(u)
    integral = float((half * weights[None, :] * f(x) * x).sum())

    def slope(x0: float) -> float:
        h = 1e-3 * x0
        return float((f(x0 + h) - f(x0 - h)) / (2 * h))

    return head + integral - (slope(last + 0.5) - slope(s0 - 0.5)) / 24


# ---- counter-based hashing ------------------------------------------------------------------------
def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijective, well-mixed map of uint64 words (arrays wrap mod 2^64 silently)."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _hash(key, *words) -> np.ndarray:
    h = np.asarray(key, dtype=np.uint64)
    for w in words:
        h = _splitmix(h ^ np.asarray(w, dtype=np.uint64))
    return h


def _uniform(h: np.ndarray) -> np.ndarray:
    """[0, 1) from the top 53 bits."""
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


# == configuration: the rules lib/config_rules.py runs for data.source=synthetic =======================
from lib.config import require  # noqa: E402  (the config section sits at the end)
from lib.data.base import SourceSpec  # noqa: E402


def synth_max_id_digits(vocab: int) -> int:
    """The synthetic language's ID digits are base b = (vocab - 1) // 2; ranks b^digits <= 2^62 fit int64."""
    base, n = (vocab - 1) // 2, 1
    while base ** (n + 1) <= 1 << 62:
        n += 1
    return n


def _check(d: DataConfig) -> None:
    require(d.synth_vocab >= 5, "data.synth_vocab", f"needs at least 5 tokens (boundary, 2 ID digits, 2 filler tokens), got {d.synth_vocab}")
    require(
        1.0 < d.synth_zipf <= 10.0 and math.isfinite(d.synth_zipf),
        "data.synth_zipf",
        f"must be in (1, 10] so the rank law has a finite entropy, got {d.synth_zipf}; e.g. 1.3",
    )
    require(d.synth_filler_len >= 1, "data.synth_filler_len", f"needs at least 1 filler token (it ends the ID), got {d.synth_filler_len}")
    limit = synth_max_id_digits(d.synth_vocab)
    require(
        0 <= d.synth_id_digits <= limit,
        "data.synth_id_digits",
        f"got {d.synth_id_digits}; ranks of more than {limit} base-{(d.synth_vocab - 1) // 2} digits overflow int64: "
        f"use 1..{limit}, or 0 for {limit}",
    )


SOURCE = SourceSpec(name="synthetic", task="lm", make=lambda cfg, data_root: PhraseLanguage(cfg), validate=_check)
