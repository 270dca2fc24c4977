"""Closed forms for checking search methods on the testbed: the tilted mixture and the
order statistics of Best-of-N with a projection reward (see :mod:`evosearch.testbed`)."""

from __future__ import annotations

import numpy as np

from .mixture import GaussianMixture

__all__ = ["tilted_mixture", "best_of_n_mode_probs", "best_of_n_reward_cdf"]


def tilted_mixture(mixture: GaussianMixture, lam: float, w=None, mode_rewards=None) -> GaussianMixture:
    """The tilted distribution ``p(x) exp(lam r(x)) / Z`` as a mixture.

    * ``w`` (D,): the linear reward ``r(x) = w . x`` -- EXACT. Component k's mean moves to
      ``mu_k + lam var_k * w`` and its weight becomes proportional to
      ``pi_k exp(lam w . mu_k + lam^2 w^T diag(var_k) w / 2)``.
    * ``mode_rewards`` (K,): a reward constant on each component, ``r = c_k`` -- exact for a
      reward of the latent component label; for ``r(x) = c[mode_of(x)]`` it is exact only
      up to the components' overlap (use well-separated components). Weights become
      proportional to ``pi_k exp(lam c_k)``.
    Both may be given (the reward is their sum).
    """
    lam = float(lam)
    logw = np.log(np.maximum(mixture.weights, 1e-300))
    means = mixture.means.copy()
    if w is not None:
        w = np.asarray(w, dtype=np.float64).reshape(mixture.dim)
        logw = logw + lam * (mixture.means @ w) + 0.5 * lam * lam * (mixture.variances @ (w * w))
        means = means + lam * mixture.variances * w[None]
    if mode_rewards is not None:
        c = np.asarray(mode_rewards, dtype=np.float64).reshape(mixture.num_components)
        logw = logw + lam * c
    logw -= logw.max()
    return GaussianMixture(np.exp(logw), means, mixture.variances)


def _norm_cdf(z):
    from scipy.special import ndtr

    return ndtr(z)


def best_of_n_mode_probs(mixture: GaussianMixture, w, n: int) -> np.ndarray:
    """P(the Best-of-n winner under ``r(x) = w . x`` was drawn from component k), (K,).

    With ``y = w . x``: component k's projection has density ``f_k`` (normal), the mixture's
    CDF is ``F = sum_j pi_j Phi_j``, and ``P_k = int n pi_k f_k(y) F(y)^(n-1) dy`` (integrated
    numerically to ~1e-10)."""
    from scipy import integrate
    from scipy.stats import norm

    m, sd = mixture.projection(w)

    def cdf(y):
        return float(np.dot(mixture.weights, _norm_cdf((y - m) / sd)))

    probs = []
    for k in range(mixture.num_components):
        lo, hi = m[k] - 12 * sd[k], m[k] + 12 * sd[k]
        val, _ = integrate.quad(lambda y: n * mixture.weights[k] * norm.pdf(y, m[k], sd[k]) * cdf(y) ** (n - 1),
                                lo, hi, epsabs=1e-12, epsrel=1e-10, limit=200)
        probs.append(val)
    return np.asarray(probs)


def best_of_n_reward_cdf(mixture: GaussianMixture, w, n: int, y) -> np.ndarray:
    """CDF of the Best-of-n winner's reward ``max_i w . x_i`` at ``y``: ``F(y)^n``."""
    m, sd = mixture.projection(w)
    y = np.asarray(y, dtype=np.float64)
    f = (mixture.weights * _norm_cdf((y[..., None] - m) / sd)).sum(-1)
    return f ** n
