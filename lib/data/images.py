"""The embedded image data: Zipfian modes of random textures, with a loss floor in closed form.

An example is drawn from (seed, stream, row) alone, so nothing is stored and `batch(step)` is pure:

    mode     rank r in 1..M (M = synth_img_modes, by default 2^62 - 1), truncated Pareto like the text
             language's phrases: P(rank >= r) = (r^-a - R^-a) / (1 - R^-a), R = M + 1, a = zipf - 1
    class    c(r) = a hash of (seed, r) mod K: the label is a property of the mode, learnt by memorising it
    image    a * roll(P_r, shift) + b + noise, scaled to unit variance per pixel, where
               P_r    mode r's prototype: a random real image whose spectrum holds only the spatial
                      frequencies 0 < max(|ky|, |kx|) <= F (F = synth_img_band), amplitudes ~ 1/|k|,
                      normalised to RMS 1 (per-channel mean 0): a smooth coloured texture
               shift  a uniform circular shift over all H x W positions
               a      contrast, uniform in [0.5, 1.5]; b brightness per channel, uniform in [-0.5, 0.5]
               noise  Gaussian pixel noise with every frequency of the band (and the mean) removed,
                      per-pixel std synth_img_noise: white noise projected off the band
    label    c(r), replaced with probability eps = synth_img_label_noise by a uniform draw over K

Why this shape:
- The floor is exact and closed form. The noise lives in the orthogonal complement of the band, so
  the band (a Fourier projection of x) is a * roll(P_r, shift) exactly, plus b in the mean; the
  prototypes are continuous random draws, so with probability 1 one (r, shift) explains it and the
  Bayes posterior of the true class is one-hot. The label noise alone is then irreducible:
      p(y | x) = (1 - eps) [y = c(r)] + eps / K
      floor      = -(1 - eps + eps/K) log(1 - eps + eps/K) - (K - 1) (eps/K) log(eps/K)   nats/image
      bayes_error = eps (K - 1) / K
  whatever M, zipf, band, noise or image size are. (tests/test_data_images.py checks it by Monte
  Carlo: on a small config the test recovers each image's mode by brute-force template matching.)
- Loss falls as a power law in model size and images seen for the text language's reason: a model
  that has not memorised modes beyond rank r pays ~log K on the tail mass P(rank > r), whose
  local exponent stays at -a for every r from 10^2 to 10^9 (within 1%); a mode of
  probability p needs ~1/p images before it can be learnt. Memorising a mode means storing its
  texture (2 F (F + 1) complex coefficients per channel) in a shift-invariant way: capacity.
- `data.augment` applies to training batches here too (lib/data/augment.py); the floor is that of
  the un-augmented distribution, which is what eval_rows() serves.
- Generation is cheap: the prototype's band coefficients (144 normals for F=3, RGB) and the pixel
  noise come from counter-based hashes, the noise drawn directly in the Fourier domain, then one irfft2
  per batch, all row by row (bit-identical rows whatever the batch or host count).
"""

from __future__ import annotations

import math

import numpy as np

from lib.config import SYNTH_IMG_DEFAULT_CLASSES, ConfigError, DataConfig
from lib.data.augment import augment
from lib.data.base import local_rows
from lib.data.synthetic import _hash, _splitmix, _uniform

_TRAIN_STREAM, _EVAL_STREAM = 0, 1
_DEFAULT_MODES = (1 << 62) - 1  # ranks stay int64; the truncation bends the tail by < 0.2% up to 10^9
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
# Hash purposes.
_RANK, _SHIFT, _CONTRAST, _BRIGHT, _NOISE, _FLIP_LABEL, _NOISY_LABEL, _PROTO, _CLASS = range(11, 20)
_CONTRAST_LO, _CONTRAST_HI, _BRIGHT_HALF = 0.5, 1.5, 0.5


class SyntheticImages:
    kind = "images"

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.num_classes = K = cfg.num_classes or SYNTH_IMG_DEFAULT_CLASSES
        H = W = cfg.image_size
        C = cfg.image_channels
        F = cfg.synth_img_band
        if K < 2 or not 1 <= F < H / 2:  # validate() says so first; a bare DataConfig may skip it
            raise ConfigError(f"data.num_classes / data.synth_img_band: need >= 2 classes and 1 <= band < image_size/2, got {K}, {F}")
        self.vocab_size = K
        self.image_shape = (H, W, C)
        self.n_modes = cfg.synth_img_modes or _DEFAULT_MODES
        self.alpha = cfg.synth_img_zipf - 1.0
        self._r_pow = (self.n_modes + 1.0) ** -self.alpha  # R^-a
        eps = cfg.synth_img_label_noise
        hit = 1.0 - eps + eps / K
        self.entropy_floor = float(-hit * math.log(hit) - ((K - 1) * (eps / K) * math.log(eps / K) if eps > 0 else 0.0))
        self.bayes_error = eps * (K - 1) / K
        # The band in rfft2 layout [H, W//2+1]: independent bins (kx >= 1 any ky; kx = 0 with ky > 0),
        # and the kx = 0, ky < 0 bins that mirror (conjugate) the latter.
        ky, kx = np.meshgrid(np.arange(-F, F + 1), np.arange(0, F + 1), indexing="ij")
        ky, kx = ky.ravel(), kx.ravel()
        independent = (kx > 0) | (ky > 0)
        self._ky, self._kx = ky[independent], kx[independent]
        self._mirror = np.flatnonzero(self._kx == 0)  # independent bins whose conjugate sits at -ky
        self._amplitude = 1.0 / np.hypot(self._ky, self._kx)  # ~1/|k|, as in natural images
        self._band_ky = np.concatenate([self._ky, -self._ky[self._mirror]]) % H
        self._band_kx = np.concatenate([self._kx, self._kx[self._mirror]])
        self.band_dims = 2 * len(self._ky)  # real degrees of freedom per channel: (2F+1)^2 - 1
        # Pixel noise: white with std s0, minus its band and mean, keeps the fraction 1 - (band + 1)/(HW) of its power.
        self._noise_std = cfg.synth_img_noise / math.sqrt(1.0 - (self.band_dims + 1) / (H * W))
        mean_sq_contrast = (_CONTRAST_HI**3 - _CONTRAST_LO**3) / (3 * (_CONTRAST_HI - _CONTRAST_LO))
        self._scale = 1.0 / math.sqrt(mean_sq_contrast + _BRIGHT_HALF**2 / 3 + cfg.synth_img_noise**2)  # unit pixel variance
        key = _splitmix(np.array([cfg.seed], dtype=np.uint64) ^ np.uint64(0x1A6E5))
        self._stream_keys = {s: _hash(key, np.uint64(s)) for s in (_TRAIN_STREAM, _EVAL_STREAM)}
        self._proto_key, self._class_key = _hash(key, np.uint64(_PROTO)), _hash(key, np.uint64(_CLASS))

    # -- the Source interface ---------------------------------------------------------------------
    def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict:
        """Rows step*B .. step*B+B-1 of the training stream (this process's block), augmented per data.augment."""
        B = self.cfg.global_batch
        mine = local_rows(B, process_index, process_count)
        rows = step * B + np.arange(mine.start, mine.stop, dtype=np.int64)
        out = self._examples(_TRAIN_STREAM, rows)
        out["image"] = augment(out["image"], rows, self.cfg.seed, self.cfg.augment, self.cfg.crop_pad)
        return out

    def eval_rows(self, start_row: int, n_rows: int, process_index: int = 0, process_count: int = 1) -> dict:
        """Held-out rows start_row .. start_row+n_rows-1 (this process's block), never augmented."""
        mine = local_rows(n_rows, process_index, process_count)
        return self._examples(_EVAL_STREAM, start_row + np.arange(mine.start, mine.stop, dtype=np.int64))

    def epoch(self, step: int) -> None:
        return None  # infinite: every batch is fresh

    def describe(self) -> dict:
        c = self.cfg
        return {
            "source": "synthetic_images",
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "modes": self.n_modes,
            "zipf": c.synth_img_zipf,
            "band": c.synth_img_band,
            "pixel_noise": c.synth_img_noise,
            "label_noise": c.synth_img_label_noise,
            "augment": c.augment,
            "entropy_floor": self.entropy_floor,  # Bayes cross-entropy, nats per image
            "bayes_error": self.bayes_error,  # Bayes top-1 error
        }

    # -- the generative model (public for tests and analysis) ---------------------------------------
    def mode_probs(self, ranks) -> np.ndarray:
        r = np.asarray(ranks, dtype=np.float64)
        return (r**-self.alpha - (r + 1) ** -self.alpha) / (1.0 - self._r_pow)

    def tail_mass(self, ranks) -> np.ndarray:
        """P(rank > r): the probability of the modes a model that knows ranks 1..r has not memorised."""
        r = np.asarray(ranks, dtype=np.float64)
        return np.maximum((r + 1) ** -self.alpha - self._r_pow, 0.0) / (1.0 - self._r_pow)

    def mode_classes(self, ranks) -> np.ndarray:
        return (_hash(self._class_key, np.asarray(ranks, dtype=np.uint64)) % np.uint64(self.num_classes)).astype(np.int32)

    def prototypes(self, ranks) -> np.ndarray:
        """[n, H, W, C] unshifted prototypes (RMS 1, each channel mean 0)."""
        coef = self._coefficients(np.asarray(ranks, dtype=np.int64))
        n, C = coef.shape[:2]
        return self._to_pixels(self._scatter(coef, np.ones((n, 1, 1))), np.zeros((n, C)))

    def sample(self, stream: int, rows: np.ndarray) -> dict:
        """Examples with their latents (rank, class, shift, contrast, brightness): for tests."""
        return self._examples(stream, np.asarray(rows, dtype=np.int64), latents=True)

    # -- internals ------------------------------------------------------------------------------------
    def _examples(self, stream: int, rows: np.ndarray, latents: bool = False) -> dict:
        H, W, C = self.image_shape
        K, eps = self.num_classes, self.cfg.synth_img_label_noise
        h = _hash(self._stream_keys[stream], rows.astype(np.uint64))
        ranks = self._ranks(h)
        hs = _hash(h, np.uint64(_SHIFT))
        dy = (hs % np.uint64(H)).astype(np.int64)
        dx = ((hs >> np.uint64(32)) % np.uint64(W)).astype(np.int64)
        contrast = _CONTRAST_LO + (_CONTRAST_HI - _CONTRAST_LO) * _uniform(_hash(h, np.uint64(_CONTRAST)))
        bright = _BRIGHT_HALF * (2 * _uniform(_hash(h[:, None], np.uint64(_BRIGHT), np.arange(C, dtype=np.uint64)[None, :])) - 1)
        # Shift as a phase: rolling by (dy, dx) multiplies bin (ky, kx) by exp(-2 pi i (ky dy / H + kx dx / W)).
        phase = np.exp(-2j * np.pi * (np.outer(dy, self._band_ky) / H + np.outer(dx, self._band_kx) / W)).astype(np.complex64)
        spectrum = self._scatter(self._coefficients(ranks), contrast.astype(np.float32)[:, None, None] * phase[:, None, :])
        noise = self._white_spectrum(_hash(h, np.uint64(_NOISE)))
        noise[:, :, self._band_ky, self._band_kx] = 0  # off the band
        noise[:, :, 0, 0] = 0  # and the mean
        image = self._to_pixels(spectrum + noise, bright.astype(np.float32)) * np.float32(self._scale)
        classes = self.mode_classes(ranks)
        flip = _uniform(_hash(h, np.uint64(_FLIP_LABEL))) < eps
        noisy = (_hash(h, np.uint64(_NOISY_LABEL)) % np.uint64(K)).astype(np.int32)
        out = {"image": image.astype(np.float32), "label": np.where(flip, noisy, classes).astype(np.int32)}
        if latents:
            out.update(rank=ranks, mode_class=classes, shift=np.stack([dy, dx], 1), contrast=contrast, brightness=bright, relabelled=flip)
        return out

    def ranks(self, stream: int, rows) -> np.ndarray:
        """The modes of these rows of a stream (0 train, 1 eval), without rendering them."""
        return self._ranks(_hash(self._stream_keys[stream], np.asarray(rows, dtype=np.uint64)))

    def _ranks(self, h: np.ndarray) -> np.ndarray:
        # Inverse CDF of the continuous Pareto on [1, R), floored: exactly the discrete law.
        w = 1.0 - _uniform(_hash(h, np.uint64(_RANK)))  # (0, 1]
        return np.clip(np.floor((self._r_pow + w * (1.0 - self._r_pow)) ** (-1.0 / self.alpha)), 1, self.n_modes).astype(np.int64)

    def _coefficients(self, ranks: np.ndarray) -> np.ndarray:
        """[n, C, bins] complex band coefficients of each rank's prototype, scaled to RMS 1."""
        C, nb = self.image_shape[2], len(self._ky)
        z = _normals(_hash(self._proto_key, ranks.astype(np.uint64)), 2 * C * nb).reshape(len(ranks), C, nb, 2)
        coef = (z[..., 0] + 1j * z[..., 1]) * self._amplitude
        # Parseval: mean square over H*W*C pixels = sum over the full spectrum / (HW)^2 / C, and every
        # independent bin appears twice there (itself and its conjugate).
        H, W, _ = self.image_shape
        mean_sq = 2 * (np.abs(coef) ** 2).sum(axis=(1, 2)) / (H * W) ** 2 / C
        return (coef / np.sqrt(mean_sq)[:, None, None]).astype(np.complex64)

    def _white_spectrum(self, key: np.ndarray) -> np.ndarray:
        """rfft2 [n, C, H, W//2+1] of white noise with std s0 per pixel, drawn in the Fourier domain.

        The columns 0 < kx < W/2 of a real field's rfft2 are independent complex Gaussians with
        E|X|^2 = HW s0^2; column kx = 0 (and W/2 for even W) is the length-H DFT of the field's row
        sums (alternating sums), real white noise of variance W s0^2. So H*W normals, as in pixel
        space, but only short column FFTs: cheaper than rfft2 of a pixel-space draw. Each row is
        transformed alone, so its pixels are bit-identical however many rows are built together."""
        H, W, C = self.image_shape
        n, m = len(key), W // 2 + 1
        special = [0] + ([W // 2] if W % 2 == 0 else [])  # the self-conjugate columns
        inner = m - len(special)
        z = _normals(key, C * H * W)
        s0 = np.float32(self._noise_std)
        pairs = z[:, : 2 * C * H * inner].reshape(n, C, H, inner, 2) * (s0 * np.float32(math.sqrt(H * W / 2)))
        columns = z[:, 2 * C * H * inner:].reshape(n, C, len(special), H) * (s0 * np.float32(math.sqrt(W)))
        out = np.empty((n, C, H, m), np.complex64)
        out[..., 1 : 1 + inner] = pairs[..., 0] + 1j * pairs[..., 1]
        out[..., special] = np.fft.fft(columns, axis=-1).transpose(0, 1, 3, 2)
        return out

    def _scatter(self, coef: np.ndarray, factor: np.ndarray) -> np.ndarray:
        """rfft2-layout spectra [n, C, H, W//2+1] with the band set to coef (and mirrors) times factor [n, 1|C, band bins]."""
        H, W, C = self.image_shape
        band = np.concatenate([coef, np.conj(coef[:, :, self._mirror])], axis=2) * factor
        spectrum = np.zeros((len(coef), C, H, W // 2 + 1), np.complex64)
        spectrum[:, :, self._band_ky, self._band_kx] = band
        return spectrum

    def _to_pixels(self, spectrum: np.ndarray, bright: np.ndarray) -> np.ndarray:
        H, W, _ = self.image_shape
        return np.fft.irfft2(spectrum, s=(H, W)).transpose(0, 2, 3, 1) + bright[:, None, None, :]


def _normals(key: np.ndarray, count: int) -> np.ndarray:
    """[n, count] float32 standard normals from each key: Box-Muller on 24-bit uniforms of counter hashes.

    Word j of key k is splitmix64(k + j * golden): the generator splitmix64 is, counter-based. 24-bit
    uniforms cap |z| at 5.8 (a 1e-8 tail), which noise and random textures do not miss."""
    words = _splitmix(key[:, None] + np.arange((count + 1) // 2, dtype=np.uint64)[None, :] * _GOLDEN)
    u1 = ((words >> np.uint64(40)).astype(np.float32) + np.float32(1)) * np.float32(2.0**-24)  # (0, 1]
    angle = (words & np.uint64(0xFFFFFF)).astype(np.float32) * np.float32(2 * np.pi * 2.0**-24)
    radius = np.sqrt(np.float32(-2) * np.log(u1))
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1)[:, :count]


# == configuration: the rules lib/config_rules.py runs for data.source=synthetic_images ================
from lib.config import require  # noqa: E402  (the config section sits at the end)
from lib.data.augment import check_image_fields  # noqa: E402
from lib.data.base import SourceSpec  # noqa: E402


def _check(d: DataConfig) -> None:
    check_image_fields(d)
    require(d.num_classes != 1, "data.num_classes", "a classification task needs at least 2 classes (0: 10)")
    require(d.synth_img_modes == 0 or d.synth_img_modes >= 2, "data.synth_img_modes", f"needs at least 2 modes (0: 2^62 - 1), got {d.synth_img_modes}")
    require(1.0 < d.synth_img_zipf <= 10.0 and math.isfinite(d.synth_img_zipf), "data.synth_img_zipf",
            f"must be in (1, 10] so the mode law has a finite mean tail, got {d.synth_img_zipf}; e.g. 1.3")
    require(1 <= d.synth_img_band and 2 * d.synth_img_band < d.image_size, "data.synth_img_band",
            f"must be in 1..{(d.image_size - 1) // 2} (below half the image size {d.image_size}), got {d.synth_img_band}")
    require(d.synth_img_noise >= 0 and math.isfinite(d.synth_img_noise), "data.synth_img_noise", f"must be >= 0, got {d.synth_img_noise}")
    require(0.0 <= d.synth_img_label_noise < 1.0, "data.synth_img_label_noise", f"must be in [0, 1), got {d.synth_img_label_noise}")


SOURCE = SourceSpec(name="synthetic_images", task="classify", make=lambda cfg, data_root: SyntheticImages(cfg), validate=_check)
