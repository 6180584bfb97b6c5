"""The functional forms a scaling law can take, and how each is parameterised for fitting.

Every law is fitted in log space: the model predicts log L from the logs of its inputs, written
with log-sum-exp so no term ever under/overflows (Hoffmann et al. 2022, appendix D.2):

  chinchilla  L(N, D) = E + A/N^alpha + B/D^beta
              log L = LSE(a - alpha log N, b - beta log D, e),  A = e^a, B = e^b, E = e^e
  power-X     L(X) = E + A X^-alpha  for X in N, D or C
              log L = LSE(a - alpha log X, e)
  kaplan      L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D   (Kaplan et al. 2020, eq. 1.5)
  chinchilla-tied   L(N, D) = E + A/N^alpha + B/D^alpha   (one exponent; Gadre et al. 2024)
  data-constrained  L(N, D, U) = E + A/N^alpha + B/D'^beta, D' = U + U R* (1 - exp(-(D/U - 1)/R*))
              (Muennighoff et al. 2023, eq. 5; U unique tokens, D/U epochs; R* = e^log_R_star)
              log L = alpha_D LSE((alpha_N/alpha_D)(n_c - log N), d_c - log D),
              N_c = e^n_c, D_c = e^d_c, alpha_N = e^u, alpha_D = e^v (exponents kept positive)

A `Law` carries the fitting ("raw") parameter names, the reported ("natural") names, the
conversions between the two, and its grid of starting points. `log_predict` takes an array module
(numpy or jax.numpy) so the fitter and the plots share one formula.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

# Chinchilla's grid of starts (Hoffmann et al. 2022, appendix D.2):
# alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}: 4,500 starts.
_EXPONENTS = (0.0, 0.5, 1.0, 1.5, 2.0)
_LOG_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
_LOG_COEF = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)


@dataclass(frozen=True)
class Law:
    name: str
    formula: str
    inputs: tuple[str, ...]  # data columns the law reads, in order (e.g. ("N", "D"))
    raw_names: tuple[str, ...]  # the parameters L-BFGS moves
    names: tuple[str, ...]  # the parameters reported in fit.json
    log_predict: Callable  # (theta[..., k], logX[n_inputs, n], xp) -> log L [..., n]
    to_natural: Callable[[np.ndarray], dict]  # raw [..., k] -> {name: array [...]}
    from_natural: Callable[[Mapping[str, float]], np.ndarray]
    grid: tuple[tuple[float, ...], ...]  # one tuple of start values per raw parameter

    @property
    def n_params(self) -> int:
        return len(self.raw_names)

    def grid_points(self) -> np.ndarray:
        """Every combination of the grid's values: [n_starts, k]."""
        mesh = np.meshgrid(*[np.asarray(g, dtype=np.float64) for g in self.grid], indexing="ij")
        return np.stack([m.ravel() for m in mesh], axis=-1)

    def predict(self, natural: Mapping[str, float], **inputs) -> np.ndarray:
        """L at the given inputs (numpy), from natural parameters, e.g. predict(p, N=..., D=...)."""
        theta = self.from_natural(natural)
        log_x = np.stack([np.log(np.asarray(inputs[c], dtype=np.float64)) for c in self.inputs])
        return np.exp(self.log_predict(theta, log_x, np))


def log_sum_exp(xp, *terms):
    """log(sum exp(terms)) shifted by the largest term. The shift carries no gradient (it cancels
    exactly), which keeps XLA from differentiating through max; cheaper than nested logaddexp."""
    m = terms[0]
    for t in terms[1:]:
        m = xp.maximum(m, t)
    if xp is not np:
        import jax

        m = jax.lax.stop_gradient(m)
    total = 0.0
    for t in terms:
        total = total + xp.exp(t - m)
    return m + xp.log(total)


# ------------------------------------------------------------------------------------------------
def _chinchilla_log_predict(theta, log_x, xp):
    a, b, e, alpha, beta = (theta[..., i : i + 1] for i in range(5))
    log_n, log_d = log_x[0], log_x[1]
    return log_sum_exp(xp, a - alpha * log_n, b - beta * log_d, e)


def _chinchilla_natural(raw):
    raw = np.asarray(raw, dtype=np.float64)
    with np.errstate(over="ignore"):  # a runaway bootstrap sample's coefficient overflows to inf; the intervals skip non-finite samples
        return {
            "E": np.exp(raw[..., 2]),
            "A": np.exp(raw[..., 0]),
            "B": np.exp(raw[..., 1]),
            "alpha": raw[..., 3],
            "beta": raw[..., 4],
        }


def _chinchilla_raw(p):
    return np.array(
        [np.log(p["A"]), np.log(p["B"]), np.log(p["E"]), p["alpha"], p["beta"]], dtype=np.float64
    )


CHINCHILLA = Law(
    name="chinchilla",
    formula="L(N, D) = E + A/N^alpha + B/D^beta",
    inputs=("N", "D"),
    raw_names=("a", "b", "e", "alpha", "beta"),
    names=("E", "A", "B", "alpha", "beta"),
    log_predict=_chinchilla_log_predict,
    to_natural=_chinchilla_natural,
    from_natural=_chinchilla_raw,
    grid=(_LOG_COEF, _LOG_COEF, _LOG_E, _EXPONENTS, _EXPONENTS),
)


# ------------------------------------------------------------------------------------------------
def _power_log_predict(theta, log_x, xp):
    a, e, alpha = (theta[..., i : i + 1] for i in range(3))
    return log_sum_exp(xp, a - alpha * log_x[0], e)


def _power_natural(raw):
    raw = np.asarray(raw, dtype=np.float64)
    return {"E": np.exp(raw[..., 1]), "A": np.exp(raw[..., 0]), "alpha": raw[..., 2]}


def _power_raw(p):
    return np.array([np.log(p["A"]), np.log(p["E"]), p["alpha"]], dtype=np.float64)


def _power_law(x: str) -> Law:
    # Exponents in one variable are smaller than Chinchilla's (e.g. ~0.05 in C), so the grid adds
    # small values; a spans further because A multiplies x^-alpha with log x up to ~60.
    return Law(
        name=f"power-{x}",
        formula=f"L({x}) = E + A*{x}^(-alpha)",
        inputs=(x,),
        raw_names=("a", "e", "alpha"),
        names=("E", "A", "alpha"),
        log_predict=_power_log_predict,
        to_natural=_power_natural,
        from_natural=_power_raw,
        grid=(_LOG_COEF, _LOG_E, (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0)),
    )


# ------------------------------------------------------------------------------------------------
def _kaplan_log_predict(theta, log_x, xp):
    n_c, d_c, u, v = (theta[..., i : i + 1] for i in range(4))
    alpha_n, alpha_d = xp.exp(u), xp.exp(v)
    log_n, log_d = log_x[0], log_x[1]
    return alpha_d * log_sum_exp(xp, (alpha_n / alpha_d) * (n_c - log_n), d_c - log_d)


def _kaplan_natural(raw):
    raw = np.asarray(raw, dtype=np.float64)
    return {
        "N_c": np.exp(raw[..., 0]),
        "D_c": np.exp(raw[..., 1]),
        "alpha_N": np.exp(raw[..., 2]),
        "alpha_D": np.exp(raw[..., 3]),
    }


def _kaplan_raw(p):
    return np.log(np.array([p["N_c"], p["D_c"], p["alpha_N"], p["alpha_D"]], dtype=np.float64))


_LN10 = float(np.log(10.0))
KAPLAN = Law(
    name="kaplan",
    formula="L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D",
    inputs=("N", "D"),
    raw_names=("n_c", "d_c", "log_alpha_N", "log_alpha_D"),
    names=("N_c", "D_c", "alpha_N", "alpha_D"),
    log_predict=_kaplan_log_predict,
    to_natural=_kaplan_natural,
    from_natural=_kaplan_raw,
    # Kaplan et al. found N_c ~ 6e13, D_c ~ 2e13, alpha_N ~ 0.08, alpha_D ~ 0.1.
    grid=(
        tuple(_LN10 * k for k in (6.0, 9.0, 12.0, 15.0, 18.0)),
        tuple(_LN10 * k for k in (6.0, 9.0, 12.0, 15.0, 18.0)),
        tuple(float(np.log(x)) for x in (0.03, 0.1, 0.3, 1.0)),
        tuple(float(np.log(x)) for x in (0.03, 0.1, 0.3, 1.0)),
    ),
)

# ------------------------------------------------------------------------------------------------
def _tied_log_predict(theta, log_x, xp):
    a, b, e, alpha = (theta[..., i : i + 1] for i in range(4))
    return log_sum_exp(xp, a - alpha * log_x[0], b - alpha * log_x[1], e)


def _tied_natural(raw):
    raw = np.asarray(raw, dtype=np.float64)
    with np.errstate(over="ignore"):
        return {"E": np.exp(raw[..., 2]), "A": np.exp(raw[..., 0]), "B": np.exp(raw[..., 1]), "alpha": raw[..., 3]}


def _tied_raw(p):
    return np.array([np.log(p["A"]), np.log(p["B"]), np.log(p["E"]), p["alpha"]], dtype=np.float64)


# Gadre et al. 2024 ("Language models scale reliably with over-training and on downstream tasks"):
# one exponent for N and D, so the compute-optimal tokens per parameter is a constant.
CHINCHILLA_TIED = Law(
    name="chinchilla-tied",
    formula="L(N, D) = E + A/N^alpha + B/D^alpha",
    inputs=("N", "D"),
    raw_names=("a", "b", "e", "alpha"),
    names=("E", "A", "B", "alpha"),
    log_predict=_tied_log_predict,
    to_natural=_tied_natural,
    from_natural=_tied_raw,
    grid=(_LOG_COEF, _LOG_COEF, _LOG_E, _EXPONENTS),
)


# ------------------------------------------------------------------------------------------------
def effective_data(U, D, r_star, xp=np):
    """Muennighoff et al. 2023, eq. 5: the data D' that D tokens drawn from U unique tokens are
    worth, D' = U + U R* (1 - exp(-R / R*)) with R = D/U - 1 the repetitions past the first epoch
    (D <= U: D' = D, no repetition). R* is where repeated tokens' value has decayed by 1/e."""
    U = xp.minimum(U, D)
    R = D / U - 1.0
    return U * (1.0 + r_star * -xp.expm1(-R / r_star))


def _constrained_log_predict(theta, log_x, xp):
    a, b, e, alpha, beta, log_r = (theta[..., i : i + 1] for i in range(6))
    log_n, log_d, log_u = log_x[0], log_x[1], xp.minimum(log_x[2], log_x[1])
    r_star = xp.exp(log_r)
    R = xp.exp(log_d - log_u) - 1.0  # repetitions past the first epoch
    log_d_eff = log_u + xp.log1p(r_star * -xp.expm1(-R / r_star))
    return log_sum_exp(xp, a - alpha * log_n, b - beta * log_d_eff, e)


def _constrained_natural(raw):
    raw = np.asarray(raw, dtype=np.float64)
    with np.errstate(over="ignore"):
        return {**_chinchilla_natural(raw[..., :5]), "R_star": np.exp(raw[..., 5])}


def _constrained_raw(p):
    return np.concatenate([_chinchilla_raw(p), [np.log(p["R_star"])]]) if np.ndim(p["A"]) == 0 else \
        np.concatenate([_chinchilla_raw(p), np.log(np.asarray(p["R_star"], dtype=np.float64))[None]])


# Muennighoff et al. 2023 ("Scaling data-constrained language models"), eq. 5 for the data term
# only: parameters are not discounted (their N' = N), so a model larger than the data warrant is
# not penalised. Inputs: N, D (tokens trained on) and U (unique tokens; U = D when nothing repeats).
DATA_CONSTRAINED = Law(
    name="data-constrained",
    formula="L(N, D, U) = E + A/N^alpha + B/D'^beta,  D' = U + U R* (1 - exp(-(D/U - 1)/R*))",
    inputs=("N", "D", "U"),
    raw_names=("a", "b", "e", "alpha", "beta", "log_R_star"),
    names=("E", "A", "B", "alpha", "beta", "R_star"),
    log_predict=_constrained_log_predict,
    to_natural=_constrained_natural,
    from_natural=_constrained_raw,
    # Muennighoff et al. fitted R*_D = 15.4; starts a factor 5 either side
    grid=(_LOG_COEF, _LOG_COEF, _LOG_E, _EXPONENTS, _EXPONENTS, tuple(float(np.log(x)) for x in (3.0, 15.0, 75.0))),
)

LAWS: dict[str, Law] = {
    law.name: law for law in (CHINCHILLA, _power_law("N"), _power_law("D"), _power_law("C"), KAPLAN, CHINCHILLA_TIED, DATA_CONSTRAINED)
}


def get_law(name: str) -> Law:
    if name not in LAWS:
        from analysis.errors import AnalysisError

        raise AnalysisError(f"unknown law {name!r}; choose one of {', '.join(LAWS)}")
    return LAWS[name]


# ------------------------------------------------------------------------------------------------
def chinchilla_fixed_E(E: float) -> Law:
    """Chinchilla's law with E held at a known floor (a data source's exact entropy floor, or a
    value the user gives): A, B, alpha, beta are fitted, E is reported as given. Researchers pin E
    where a free fit trades it against the exponents (a free E anywhere from 0.46 to 1.17 on the
    same command's runs, with the floor known exactly, is the case it is for)."""
    if not (np.isfinite(E) and E > 0):
        from analysis.errors import AnalysisError

        raise AnalysisError(f"a fixed E must be a positive loss (the floor under the law), not {E}")
    log_e = float(np.log(E))

    def log_predict(theta, log_x, xp):
        a, b, alpha, beta = (theta[..., i : i + 1] for i in range(4))
        return log_sum_exp(xp, a - alpha * log_x[0], b - beta * log_x[1], log_e + 0.0 * a)

    def to_natural(raw):
        raw = np.asarray(raw, dtype=np.float64)
        full = np.concatenate([raw[..., :2], np.full(raw.shape[:-1] + (1,), log_e), raw[..., 2:]], axis=-1)
        return _chinchilla_natural(full)

    def from_natural(p):
        return _chinchilla_raw({**p, "E": E})[[0, 1, 3, 4]]

    return Law(
        name="chinchilla-fixed-E",
        formula=f"L(N, D) = E + A/N^alpha + B/D^beta, E = {E:.6g} fixed",
        inputs=("N", "D"),
        raw_names=("a", "b", "alpha", "beta"),
        names=("E", "A", "B", "alpha", "beta"),
        log_predict=log_predict,
        to_natural=to_natural,
        from_natural=from_natural,
        grid=(_LOG_COEF, _LOG_COEF, _EXPONENTS, _EXPONENTS),
    )
