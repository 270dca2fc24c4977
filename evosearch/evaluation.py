"""Statistics for comparing search methods: cluster-bootstrap confidence intervals, paired by
(prompt, seed) and clustered by prompt.

A benchmark keeps one record per winner: ``{"prompt", "seed", "method", "K", "judge", ...}``.
Two methods at the same K are compared on the (prompt, seed) pairs both ran; the difference of
their judge verdicts is averaged over all pairs, and its 95% interval comes from resampling
*prompts* with replacement (seeds of one prompt are not independent draws: a prompt that is
easy for one method is easy for the other). An interval that holds 0 is a tie.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A mean and its bootstrap interval (``low``, ``high``) over ``n`` values in ``clusters`` clusters."""

    mean: float
    low: float
    high: float
    n: int
    clusters: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def cluster_bootstrap(values: Sequence[float], clusters: Sequence, n_boot: int = 4000, level: float = 0.95,
                      seed: int = 0) -> Interval:
    """Mean of ``values`` with a percentile bootstrap interval that resamples whole ``clusters``
    (one label per value) with replacement. Deterministic for a given ``seed``."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) != len(clusters):
        raise ValueError(f"values, clusters: need two sequences of one length, got {values.shape} and {len(clusters)}")
    if len(values) == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, 0)
    groups: dict = defaultdict(list)
    for v, c in zip(values, clusters):
        groups[c].append(v)
    sums = np.array([np.sum(g) for g in groups.values()])
    counts = np.array([len(g) for g in groups.values()])
    rng = np.random.default_rng(seed)
    pick = rng.integers(len(sums), size=(n_boot, len(sums)))
    boot = sums[pick].sum(1) / counts[pick].sum(1)
    alpha = (1 - level) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha])
    return Interval(float(values.mean()), float(low), float(high), len(values), len(sums))


def pair(records: Iterable[dict], method: str, baseline: str, k, key: str = "judge") -> tuple[list[float], list]:
    """(differences ``method - baseline`` of ``key``, their prompts) over the (prompt, seed) pairs
    where both ran at budget ``k``."""
    by = {}
    for r in records:
        if r["K"] == k and r["method"] in (method, baseline):
            by[(r["method"], r["prompt"], r["seed"])] = float(r[key])
    diffs, prompts = [], []
    for (m, prompt, seed), v in sorted(by.items()):
        if m == method and (baseline, prompt, seed) in by:
            diffs.append(v - by[(baseline, prompt, seed)])
            prompts.append(prompt)
    return diffs, prompts


def paired_difference(records: Iterable[dict], method: str, baseline: str, k, key: str = "judge",
                      **bootstrap) -> Interval:
    """``method`` minus ``baseline`` at budget ``k``, paired on (prompt, seed), clustered by prompt."""
    diffs, prompts = pair(list(records), method, baseline, k, key)
    return cluster_bootstrap(diffs, prompts, **bootstrap)


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """scikit-learn's ROC AUC (the chance that a random positive outscores a random negative), or
    NaN when one class is missing (a prompt whose samples are all right or all wrong)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels, dtype=bool)
    return float(roc_auc_score(y, scores)) if 0 < y.sum() < len(y) else float("nan")
