"""The Gaussian mixture ``p(x) = sum_k pi_k N(x; mu_k, diag(var_k))`` and its exact posterior mean
(see :mod:`evosearch.testbed`)."""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["GaussianMixture"]

_LOG_2PI = math.log(2 * math.pi)


class GaussianMixture:
    """A mixture of K Gaussians in D dimensions with diagonal covariances (float64 numpy).

    Args:
        weights: (K,) non-negative, normalised here.
        means: (K, D).
        variances: a scalar (isotropic, shared), (K,) (isotropic per component) or (K, D)
            (diagonal per component).
    """

    def __init__(self, weights, means, variances=1.0):
        means = np.asarray(means, dtype=np.float64)
        if means.ndim != 2:
            raise ValueError(f"means: expected shape (K, D), got {means.shape}")
        k, d = means.shape
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        if weights.shape != (k,) or (weights < 0).any() or weights.sum() <= 0 or not np.isfinite(weights).all():
            raise ValueError(f"weights: expected {k} non-negative finite numbers (one per mean), got {weights}")
        var = np.asarray(variances, dtype=np.float64)
        if var.ndim == 0:
            var = np.full((k, d), float(var))
        elif var.shape == (k,):
            var = np.repeat(var[:, None], d, axis=1)
        if var.shape != (k, d) or (var <= 0).any() or not np.isfinite(var).all():
            raise ValueError(f"variances: expected positive numbers of shape (), ({k},) or ({k}, {d}), "
                             f"got shape {np.shape(variances)}")
        self.weights = weights / weights.sum()
        self.means = means
        self.variances = var

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def to_config(self) -> dict:
        return {"weights": self.weights.tolist(), "means": self.means.tolist(), "variances": self.variances.tolist()}

    @classmethod
    def from_config(cls, config) -> "GaussianMixture":
        return cls(config["weights"], config["means"], config["variances"])

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.num_components}, D={self.dim}, weights={np.round(self.weights, 4).tolist()})"

    # -- sampling and densities --------------------------------------------------------
    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``n`` exact samples (n, D) and their component labels (n,)."""
        rng = np.random.default_rng(rng)
        labels = rng.choice(self.num_components, size=n, p=self.weights)
        x = self.means[labels] + np.sqrt(self.variances[labels]) * rng.standard_normal((n, self.dim))
        return x, labels

    def noised(self, a: float, s: float) -> "GaussianMixture":
        """The marginal of ``x_t = a x0 + s eps``: again a mixture."""
        return GaussianMixture(self.weights, a * self.means, a * a * self.variances + s * s)

    def component_log_prob(self, x) -> np.ndarray:
        """(n, K): log N(x; mu_k, var_k) (without the weights)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.dim)
        diff = x[:, None, :] - self.means[None]
        return -0.5 * ((diff ** 2 / self.variances[None]).sum(-1) + np.log(self.variances).sum(-1)[None]
                       + self.dim * _LOG_2PI)

    def log_prob(self, x) -> np.ndarray:
        """Exact log density (n,)."""
        lp = self.component_log_prob(x) + np.log(np.maximum(self.weights, 1e-300))[None]
        m = lp.max(axis=1, keepdims=True)
        return (m + np.log(np.exp(lp - m).sum(axis=1, keepdims=True)))[:, 0]

    def responsibilities(self, x) -> np.ndarray:
        """(n, K): posterior probability of each component given x."""
        lp = self.component_log_prob(x) + np.log(np.maximum(self.weights, 1e-300))[None]
        lp -= lp.max(axis=1, keepdims=True)
        p = np.exp(lp)
        return p / p.sum(axis=1, keepdims=True)

    def mode_of(self, x) -> np.ndarray:
        """(n,): the component with the largest posterior responsibility."""
        return self.responsibilities(x).argmax(axis=1)

    # -- the exact denoiser (torch, float64 inside) ------------------------------------
    def posterior_mean(self, x: torch.Tensor, a, s) -> torch.Tensor:
        """E[x0 | x_t = x] for ``x_t = a x0 + s eps``; ``x`` (n, D), ``a``/``s`` scalars or (n,)."""
        return _posterior_mean(x, a, s, torch.as_tensor(self.weights), torch.as_tensor(self.means),
                               torch.as_tensor(self.variances))

    # -- projections (for order statistics) -------------------------------------------
    def projection(self, w) -> tuple[np.ndarray, np.ndarray]:
        """Means (K,) and stds (K,) of the components of ``y = w . x``."""
        w = np.asarray(w, dtype=np.float64).reshape(self.dim)
        return self.means @ w, np.sqrt(self.variances @ (w * w))


def _posterior_mean(x: torch.Tensor, a, s, weights: torch.Tensor, means: torch.Tensor,
                    variances: torch.Tensor) -> torch.Tensor:
    dtype = x.dtype
    x = x.to(torch.float64)
    n = x.shape[0]
    a = torch.as_tensor(a, dtype=torch.float64, device=x.device).reshape(-1, 1, 1).expand(n, 1, 1)
    s = torch.as_tensor(s, dtype=torch.float64, device=x.device).reshape(-1, 1, 1).expand(n, 1, 1)
    mu = means.to(x.device, torch.float64)[None]                 # (1, K, D)
    var = variances.to(x.device, torch.float64)[None]            # (1, K, D)
    logw = torch.log(weights.to(x.device, torch.float64).clamp_min(1e-300))[None]
    var_t = a * a * var + s * s                                   # (n, K, D)
    diff = x[:, None, :] - a * mu                                 # (n, K, D)
    logits = logw - 0.5 * (diff * diff / var_t + torch.log(var_t)).sum(-1)
    resp = torch.softmax(logits, dim=1)                           # (n, K)
    m = mu + a * var * diff / var_t                               # (n, K, D)
    return (resp[..., None] * m).sum(1).to(dtype)
