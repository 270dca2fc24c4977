"""Weighted combination of rewards after per-reward, per-batch normalisation.

Normalisation and reward scales
-------------------------------
Rewards live on very different scales, so raw weighted sums let one reward's units drown
the others. The built-in rewards return (higher is better):

=====================  ==========================================  =========================
reward                 score                                       typical values
=====================  ==========================================  =========================
CLIPScore              100 * cos(image, text), not clamped         25-35 (ViT-B/32, matching)
Aesthetic              LAION MLP rating                            4-7 (a 1-10 scale)
PickScore              logit_scale.exp() * cos = 100 * cos         18-24
HPSv2                  cos(image, text), as ``hpsv2.score``        0.20-0.35
ImageReward            (MLP - 0.1672) / 1.0333, ~ a z-score        -2 to 2
DigitClassifierReward  log p(digit) (or p)                         -10 to 0 (0 to 1)
=====================  ==========================================  =========================

Selection methods (best-of-N, EvoSearch's elitism and tournaments, tree pruning, zero-order
pivots) only compare the samples of one batch, so :class:`Ensemble` normalises each
reward over the batch before weighting — ``normalize="rank"`` (:func:`rank_normalize`,
ranks in [0, 1]: scale- and outlier-free, the default) or ``"zscore"``
(:func:`zscore_normalize`: keeps relative gaps) — and the weights then mean "relative
importance", whatever the units. The price is batch dependence (see :class:`Ensemble`).

Potential-based methods (particle resampling / FK steering, TTS-VAR) use the raw score in
``exp(lambda * r)`` and compare it across steps, so per-batch normalisation does not
apply there: ``lambda`` is in inverse reward units. ``lambda = 10`` suits a spread of order
1 (ImageReward, PickScore differences); for HPSv2 (spreads ~0.01) use ~100x larger, for
CLIPScore ~10x smaller, or rescale the reward by a fixed factor (a FunctionReward) first.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..core.validation import check_choice, check_number
from .base import ImagesLike, Reward, as_reward, broadcast_prompts, is_video_batch, to_tensor_images, to_tensor_videos

__all__ = ["Ensemble", "NORMALIZE_MODES", "rank_normalize", "zscore_normalize"]

NORMALIZE_MODES = ("rank", "zscore", "none")


def rank_normalize(x: torch.Tensor) -> torch.Tensor:
    """Ranks scaled to [0, 1]: the lowest score -> 0, the highest -> 1; ties share their average rank.

    A batch of one sample, or of all-equal scores, maps to 0.5.
    """
    x = x.double().reshape(-1)
    n = x.shape[0]
    if n == 1:
        return torch.full_like(x, 0.5)
    less = (x[None, :] < x[:, None]).sum(1).double()
    equal = (x[None, :] == x[:, None]).sum(1).double()
    return (less + (equal - 1) / 2) / (n - 1)


def zscore_normalize(x: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` over the batch (population std).

    When the scores are (numerically) constant — std <= 1e-9 * max(1, max|x|) — every
    sample gets 0 instead of dividing by ~0.
    """
    x = x.double().reshape(-1)
    mean = x.mean()
    std = x.std(unbiased=False) if x.shape[0] > 1 else torch.zeros((), dtype=x.dtype)
    if std <= 1e-9 * max(1.0, float(x.abs().max())):
        return torch.zeros_like(x)
    return (x - mean) / std


_NORMALIZERS = {"rank": rank_normalize, "zscore": zscore_normalize, "none": lambda x: x.double().reshape(-1)}


class Ensemble(Reward):
    """A weighted sum of rewards, each normalised over the batch being scored.

    ``score = sum_k w_k * normalize(r_k(images, prompts))`` with ``normalize`` one of

    - ``"rank"`` (default): each reward's ranks within the batch, scaled to [0, 1]
      (ties share the average rank). Insensitive to the scale and outliers of each reward.
    - ``"zscore"``: ``(r - mean) / std`` within the batch (population std); a reward that is
      constant over the batch contributes 0.
    - ``"none"``: raw scores (only sensible when rewards share a scale).

    **The normalisation is per batch, so a sample's ensemble score depends on the other
    samples it was scored with.** Within one ``__call__`` the scores are comparable; across
    calls (different generations of a search, different particles' batches, an archive of
    earlier winners) they are not — the same image can score 1.0 in one batch and 0.0 in
    another. A search method that keeps a best-so-far across batches should re-score the
    contenders together, or use ``normalize="none"``, or log :meth:`components` (raw, batch
    independent scores) and compare those.

    Args:
        rewards: a list of Rewards or callables ``fn(images, prompts) -> (N,)`` (wrapped with
            :func:`~evosearch.rewards.base.as_reward`), or a list of ``(reward, weight)`` pairs.
        weights: one non-negative finite weight per reward (default 1 each); not allowed
            together with ``(reward, weight)`` pairs. At least one weight must be positive.
        normalize: ``"rank"``, ``"zscore"`` or ``"none"``.
    """

    #: videos go to each component whole (each then scores them as it does: frames or whole videos)
    video_input = True

    def __init__(self, rewards: Sequence, weights: Sequence[float] | None = None, normalize: str = "rank"):
        if isinstance(rewards, (Reward, str)) or callable(rewards) or not isinstance(rewards, Sequence):
            raise ValueError("rewards: expected a list of rewards or of (reward, weight) pairs, "
                             f"got {type(rewards).__name__}")
        if len(rewards) == 0:
            raise ValueError("rewards: expected at least one reward, got an empty list")
        pairs = [isinstance(r, tuple) for r in rewards]
        if any(pairs):
            if not all(pairs) or any(len(r) != 2 for r in rewards):
                raise ValueError("rewards: mix of rewards and non-pairs; pass either all rewards or all "
                                 "(reward, weight) pairs")
            if weights is not None:
                raise ValueError("weights: given both as (reward, weight) pairs in rewards and as weights=; "
                                 "pass only one")
            weights = [w for _, w in rewards]
            rewards = [r for r, _ in rewards]
        if weights is None:
            weights = [1.0] * len(rewards)
        weights = list(weights)
        if len(weights) != len(rewards):
            raise ValueError(f"weights: expected {len(rewards)} weights (one per reward), got {len(weights)}")
        clean = []
        for i, w in enumerate(weights):
            try:
                w = float(w)
            except (TypeError, ValueError):
                raise ValueError(f"weights: weight {i} is not a number: {w!r}") from None
            clean.append(check_number("weights", w, lo=0, hint=f" (weight {i})"))
        if not any(w > 0 for w in clean):
            raise ValueError("weights: at least one weight must be positive, all are 0")
        check_choice("normalize", normalize, NORMALIZE_MODES)

        self.rewards = [as_reward(r) for r in rewards]
        self.weights = clean
        self.normalize = normalize
        names, seen = [], {}
        for r in self.rewards:
            base = getattr(r, "name", None) or type(r).__name__
            seen[base] = seen.get(base, 0) + 1
            names.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
        self.names = names
        self.name = "ensemble(" + "+".join(names) + ")"
        self.check_range = all(getattr(r, "check_range", True) for r in self.rewards)  # each checks its own

    def check_prompt(self, prompt) -> None:
        for r in self.rewards:
            r.check_prompt(prompt)

    def _raw(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        # each component goes through Reward.__call__: shape and NaN/inf checks name the component
        return {n: r(images, prompts) for n, r in zip(self.names, self.rewards)}

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        raw = self._raw(images, prompts)
        norm = _NORMALIZERS[self.normalize]
        total = torch.zeros(images.shape[0], dtype=torch.float64)
        for w, s in zip(self.weights, raw.values()):
            if w:
                total += w * norm(s)
        return total.float()

    @torch.no_grad()
    def components(self, images: ImagesLike, prompts: str | Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Each component's raw (un-normalised, batch-independent) scores, keyed by reward name."""
        x = (to_tensor_videos if is_video_batch(images) else to_tensor_images)(images, self.check_range)
        return self._raw(x, broadcast_prompts(prompts, x.shape[0]))

    def __repr__(self) -> str:
        parts = ", ".join(f"({r!r}, {w:g})" for r, w in zip(self.rewards, self.weights))
        return f"Ensemble([{parts}], normalize={self.normalize!r})"
