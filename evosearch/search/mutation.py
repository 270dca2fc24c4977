"""Mutation operators on states (any tensor layout; the noise is passed in)."""

from __future__ import annotations

import math

import torch


def vp_mutation(x: torch.Tensor, noise: torch.Tensor, rate: float) -> torch.Tensor:
    """Variance-preserving mutation of Gaussian noise: sqrt(1 - rate^2) x + rate * noise."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"mutation_rate: must be in [0, 1], got {rate}")
    return math.sqrt(1.0 - rate * rate) * x + rate * noise.to(x.dtype)


def sigma_mutation(x: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """Mutation of an intermediate state by the sampler's own step std: x + sigma * noise."""
    return x + sigma * noise.to(x.dtype)


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


def forward_renoise(x: torch.Tensor, noise: torch.Tensor, a_from: float, s_from: float, a_to: float,
                    s_to: float) -> torch.Tensor:
    """Move a state back to a noisier level with the forward process. With the schedule
    ``x_t = a_t x0 + s_t eps``, from level j (a_from, s_from) to a noisier level k
    (a_to, s_to)::

        x_k = (a_k / a_j) x_j + sqrt(s_k^2 - (a_k s_j / a_j)^2) * noise

    which gives x_k = a_k x0 + (noise of variance s_k^2): the marginal of level k."""
    if a_from <= 0.0:
        raise ValueError(f"from_step: cannot re-noise from a level with signal coefficient a = {a_from} (pure noise)")
    ratio = a_to / a_from
    var = s_to * s_to - (ratio * s_from) ** 2
    if var < -1e-9 * max(1.0, s_to * s_to):
        raise ValueError(f"to_step: re-noising must go to a noisier level (s/a must grow): from s/a = "
                         f"{s_from / a_from:.4g} to {s_to / max(a_to, 1e-300):.4g}")
    return ratio * x + math.sqrt(max(var, 0.0)) * noise.to(x.dtype)
