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
