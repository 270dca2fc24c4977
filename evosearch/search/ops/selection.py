"""Selection operators: who survives and who becomes a parent. Randomness comes from the
``numpy.random.Generator`` passed in."""

from __future__ import annotations

import warnings

import numpy as np

from ...core.validation import check_int


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


def kmeans_select(features: np.ndarray, k: int, random_state: int, n_init: int = 3) -> np.ndarray:
    """k distinct row indices: k-means (scikit-learn) on ``features`` (N, D), then the member
    nearest each centre. Empty or duplicate clusters (identical features) are filled with the
    remaining rows nearest any centre. Sorted ascending."""
    from sklearn.cluster import KMeans

    X = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    n = len(X)
    k = check_int("k", k, lo=1, hi=n, hint=f" (survivors from {n} samples)")
    if k == n:
        return np.arange(n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer distinct points than clusters: handled below
        km = KMeans(n_clusters=k, random_state=int(random_state), n_init=n_init).fit(X)
    centres, labels = km.cluster_centers_, km.labels_
    dist = np.linalg.norm(X[:, None, :] - centres[None, :, :], axis=-1)  # (N, k)
    chosen: list[int] = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        members = members[~np.isin(members, chosen)]
        if len(members):
            chosen.append(int(members[np.argmin(dist[members, c])]))
    if len(chosen) < k:
        rest = [j for j in np.argsort(dist.min(axis=1), kind="stable") if j not in chosen]
        chosen += [int(j) for j in rest[: k - len(chosen)]]
    return np.sort(np.asarray(chosen, dtype=np.int64))
