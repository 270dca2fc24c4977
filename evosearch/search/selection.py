"""Selection operators: who survives and who becomes a parent. Randomness comes from the
``numpy.random.Generator`` passed in."""

from __future__ import annotations

import numpy as np


def elites(rewards: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest rewards, best first (ties keep the earlier index)."""
    order = np.argsort(-np.asarray(rewards, dtype=np.float64), kind="stable")
    return order[:k]


def tournament(rewards: np.ndarray, n: int, rng: np.random.Generator, fraction: float = 0.9) -> np.ndarray:
    """n parent indices, each the argmax of a random subset holding ``fraction`` of the
    population (at least 2 when the population allows), as in the EvoSearch authors' code."""
    rewards = np.asarray(rewards, dtype=np.float64)
    size = len(rewards)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"tournament_fraction: must be in (0, 1], got {fraction}")
    k = min(size, max(2, int(round(fraction * size))))
    out = np.empty(n, dtype=np.int64)
    for j in range(n):
        subset = rng.choice(size, size=k, replace=False)
        out[j] = subset[np.argmax(rewards[subset])]
    return out
