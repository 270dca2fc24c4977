"""State changes that lineage events make (any tensor layout; the noise is passed in).

These are the operators behind the event kinds of :mod:`evosearch.core.lineage`; search
methods never call them directly, they add events and let the engine apply them.
"""

from __future__ import annotations

import math

import torch


def vp_mutation(x: torch.Tensor, noise: torch.Tensor, rate: float) -> torch.Tensor:
    """Variance-preserving mutation of Gaussian noise: sqrt(1 - rate^2) x + rate * noise."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"mutation_rate: must be in [0, 1], got {rate}")
    return math.sqrt(1.0 - rate * rate) * x + rate * noise.to(x.dtype)


def sigma_mutation(x: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """Mutation of an intermediate state by the sampler's own step std: x + sigma * noise
    (the EvoSearch authors' operator; it adds variance, so the state leaves the sampler's law)."""
    return x + sigma * noise.to(x.dtype)


def resample_mutation(x: torch.Tensor, injected: torch.Tensor, noise: torch.Tensor, c: float,
                      rate: float) -> torch.Tensor:
    """Re-draw a fraction ``rate`` (beta) of the noise ``injected`` (z_e) that the step into x put in
    with std ``c``: ``x + c ((sqrt(1 - beta^2) - 1) z_e + beta z')``. The result is the same step
    with noise sqrt(1 - beta^2) z_e + beta z' ~ N(0, I), so its law given the parent state is
    the sampler's own."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"mutation_rate: must be in [0, 1], got {rate}")
    keep = math.sqrt(1.0 - rate * rate)
    return x + c * ((keep - 1.0) * injected.to(x.dtype) + rate * noise.to(x.dtype))


def _row_sum(t: torch.Tensor) -> torch.Tensor:
    """Per-row sum over every dimension but the first, kept for broadcasting."""
    return t.sum(dim=tuple(range(1, t.dim())), keepdim=True) if t.dim() > 1 else t


def sphere_neighbor(x: torch.Tensor, noise: torch.Tensor, cos: float) -> torch.Tensor:
    """A neighbour of each row of ``x`` on the sphere of its own norm at cosine ``cos``
    (zero-order search, Ma et al. 2025)::

        u_perp = noise - (<noise, x> / |x|^2) x          (the part of the noise orthogonal to x)
        x'     = cos * x + sqrt(1 - cos^2) * |x| * u_perp / |u_perp|

    so that cos(x', x) = ``cos`` and |x'| = |x| (row-wise; computed in float32)."""
    if not 0.0 <= cos < 1.0:
        raise ValueError(f"lambda_: the cosine similarity to the pivot must be in [0, 1), got {cos}")
    x32 = x.float()
    u = noise.to(device=x.device, dtype=torch.float32)
    xx = _row_sum(x32 * x32)
    u_perp = u - _row_sum(u * x32) / xx * x32
    direction = u_perp / _row_sum(u_perp * u_perp).sqrt()
    return (cos * x32 + math.sqrt(1.0 - cos * cos) * xx.sqrt() * direction).to(x.dtype)
