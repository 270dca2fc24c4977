"""Resampling for particle methods (FK steering, TTS-VAR): weights, effective sample size and
resampling schemes. Pure numpy; every random number comes from the ``numpy.random.Generator``
passed in."""

from __future__ import annotations

import numpy as np

from ...core.validation import check_choice, check_int

SCHEMES = ("multinomial", "systematic", "stratified")


# -- weights ------------------------------------------------------------------------------
def normalize_log_weights(log_w) -> np.ndarray:
    """Normalised weights (sum 1) from log weights, computed stably. -inf entries get weight 0;
    if every entry is -inf (or the input holds NaN) a clear ValueError is raised."""
    log_w = np.asarray(log_w, dtype=np.float64)
    if log_w.ndim != 1 or len(log_w) == 0:
        raise ValueError(f"log_weights: must be a non-empty 1-D array, got shape {log_w.shape}")
    if np.isnan(log_w).any() or np.isposinf(log_w).any():
        raise ValueError(f"log_weights: must not hold NaN or +inf, got {log_w}")
    top = log_w.max()
    if not np.isfinite(top):
        raise ValueError("log_weights: every particle has weight 0 (all log weights are -inf)")
    w = np.exp(log_w - top)
    return w / w.sum()


def ess(weights) -> float:
    """Effective sample size (sum w)^2 / sum w^2 of (unnormalised, non-negative) weights:
    N for equal weights, 1 when one particle holds all the weight."""
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"weights: must be finite, non-negative and not all zero, got {w}")
    return float(w.sum() ** 2 / np.square(w).sum())


def ess_from_log(log_w) -> float:
    """:func:`ess` of ``exp(log_w)``, computed stably."""
    return ess(normalize_log_weights(log_w))


# -- resampling schemes --------------------------------------------------------------------
def _check(weights, n: int | None) -> tuple[np.ndarray, int]:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"weights: must be a non-empty 1-D array of finite non-negative numbers, not all zero; "
                         f"got {w}")
    return w / w.sum(), len(w) if n is None else check_int("n", n, lo=1)


def _invert(w: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Indices j with cumsum(w)[j-1] <= position < cumsum(w)[j] (positions in [0, 1))."""
    cdf = np.cumsum(w)
    cdf[-1] = 1.0  # guard against rounding: every position < 1 finds a particle
    idx = np.searchsorted(cdf, positions, side="right")
    return np.minimum(idx, len(w) - 1).astype(np.int64)


def multinomial(weights, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """n ancestor indices drawn i.i.d. with probabilities ``weights`` (sorted)."""
    w, n = _check(weights, n)
    return _invert(w, np.sort(rng.random(n)))


def stratified(weights, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """One uniform position in each of n strata [k/n, (k+1)/n): lower variance than multinomial."""
    w, n = _check(weights, n)
    return _invert(w, (np.arange(n) + rng.random(n)) / n)


def systematic(weights, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """Positions (u + k)/n with one uniform u: each particle gets floor(n w) or ceil(n w) copies."""
    w, n = _check(weights, n)
    return _invert(w, (np.arange(n) + rng.random()) / n)


RESAMPLERS = {"multinomial": multinomial, "systematic": systematic, "stratified": stratified}


def resample(weights, scheme: str, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """Ancestor indices (sorted, int64) by ``scheme``: each index j appears N w_j times in
    expectation for every scheme (unbiased)."""
    return RESAMPLERS[check_choice("resampling", scheme, SCHEMES)](weights, rng, n)
