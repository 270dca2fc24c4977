"""Video rewards: image rewards aggregated over frames, and temporal consistency.

Videos are float tensors (N, F, 3, H, W) in [0, 1] (what video Steppers' ``finish``
returns; :func:`~evosearch.rewards.base.to_tensor_videos` converts other forms). Any image
reward already scores videos by the mean over frames; :class:`FrameReward` chooses the
aggregate and the frames, :class:`TemporalConsistency` scores how similar consecutive
frames are, and :class:`~evosearch.rewards.Ensemble` combines them::

    reward = Ensemble([(FrameReward(CLIPScore(), "mean"), 1.0), (TemporalConsistency(), 0.5)])
"""

from __future__ import annotations

from numbers import Integral
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..core.validation import check_choice, check_int
from .base import Reward, as_reward

__all__ = ["FrameReward", "TemporalConsistency", "AGGREGATES", "frame_indices", "consecutive_similarity"]

AGGREGATES = ("mean", "min", "max", "median", "last")


def frame_indices(num_frames: int, frames: int | Sequence[int] | None) -> list[int]:
    """Frames to score: all (None), ``k`` evenly spaced ones including the first and last (an int),
    or explicit indices (negative ones count from the end)."""
    if frames is None:
        return list(range(num_frames))
    if isinstance(frames, Integral):
        k = min(check_int("frames", frames, lo=1, hint=" (a number of frames)"), num_frames)
        if k == 1:
            return [0]
        return sorted({round(j * (num_frames - 1) / (k - 1)) for j in range(k)})
    idx = [int(i) for i in frames]
    if not idx or any(not -num_frames <= i < num_frames for i in idx):
        raise ValueError(f"frames: indices must be in [-{num_frames}, {num_frames}), got {list(frames)}")
    return [i % num_frames for i in idx]


class FrameReward(Reward):
    """An image reward applied to frames of each video, aggregated per video.

    Args:
        reward: an image Reward or callable ``fn(images (M, 3, H, W), prompts) -> (M,)``.
        aggregate: ``"mean"`` (default), ``"min"`` (the worst frame: penalises any broken
            frame), ``"max"``, ``"median"`` or ``"last"`` (the final frame).
        frames: which frames to score — None (all), an int k (k evenly spaced frames, first and
            last included: cheaper verifiers on long videos), or a list of indices.

    Images (N, 3, H, W) are scored as one-frame videos.
    """

    video_input = True

    def __init__(self, reward, aggregate: str = "mean", frames: int | Sequence[int] | None = None):
        check_choice("aggregate", aggregate, AGGREGATES)
        if isinstance(frames, Integral):
            frames = check_int("frames", frames, lo=1, hint=", None or a list of indices")
        elif frames is not None:
            frames = [int(i) for i in frames]
        self.reward = as_reward(reward)
        self.aggregate = aggregate
        self.frames = frames
        self.name = f"{aggregate}_frames({getattr(self.reward, 'name', type(self.reward).__name__)})"

    def frame_scores(self, videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(N, K) scores of the chosen frames of each video."""
        if videos.ndim == 4:
            videos = videos[:, None]
        n, f = videos.shape[:2]
        idx = frame_indices(f, self.frames)
        frames = videos[:, idx].flatten(0, 1)
        scores = self.reward(frames, [p for p in prompts for _ in idx])
        return scores.reshape(n, len(idx))

    def score(self, videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        s = self.frame_scores(videos, prompts)
        if self.aggregate == "mean":
            return s.mean(dim=1)
        if self.aggregate == "min":
            return s.min(dim=1).values
        if self.aggregate == "max":
            return s.max(dim=1).values
        if self.aggregate == "median":
            return s.median(dim=1).values
        return s[:, -1]

    def __repr__(self) -> str:
        return f"FrameReward({self.reward!r}, aggregate={self.aggregate!r}, frames={self.frames!r})"

    def check_prompt(self, prompt) -> None:
        self.reward.check_prompt(prompt)


def consecutive_similarity(features: torch.Tensor) -> torch.Tensor:
    """(N, F, D) features -> (N, F - 1) cosine similarities of consecutive frames."""
    a = F.normalize(features[:, :-1].double(), dim=-1)
    b = F.normalize(features[:, 1:].double(), dim=-1)
    return (a * b).sum(-1)


class TemporalConsistency(Reward):
    """Mean (or minimum) cosine similarity of consecutive frames' features, in [-1, 1].

    Args:
        features: ``"pixel"`` (default: each frame's pixels as a vector), a CLIP reward or
            backbone (anything with ``.clip.encode_images`` or ``.encode_images``: CLIPScore,
            Aesthetic, a CLIPBackbone — CLIP image embeddings), or a callable
            ``fn(frames (M, 3, H, W)) -> (M, D)``.
        center: subtract each frame's mean feature before the cosine (default True for pixels,
            where it turns the cosine into a correlation, so a uniform brightness does not make
            every pair look alike; ignored for other features).
        aggregate: ``"mean"`` over the F - 1 pairs (default) or ``"min"`` (the worst cut).

    A one-frame video (or an image) scores 1.0. This reward only sees motion smoothness:
    a still video scores highest, so combine it with a content reward (Ensemble).
    """

    video_input = True
    name = "temporal_consistency"

    def __init__(self, features: str | Callable | object = "pixel", center: bool = True, aggregate: str = "mean",
                 batch_size: int = 64):
        if aggregate not in ("mean", "min"):
            raise ValueError(f"aggregate: expected 'mean' or 'min', got {aggregate!r}")
        if isinstance(features, str):
            if features != "pixel":
                raise ValueError(f"features: expected 'pixel', a CLIP reward/backbone or a callable, got {features!r}")
            self._encode = lambda x: x.flatten(1)
            self.kind = "pixel"
        elif hasattr(features, "clip") and hasattr(features.clip, "encode_images"):
            self._encode = lambda x, m=features.clip: m.encode_images(x).float().cpu()
            self.kind = "clip"
        elif hasattr(features, "encode_images"):
            self._encode = lambda x, m=features: m.encode_images(x).float().cpu()
            self.kind = "clip"
        elif callable(features):
            self._encode = features
            self.kind = getattr(features, "__name__", "custom")
        else:
            raise ValueError(f"features: expected 'pixel', a CLIP reward/backbone or a callable, "
                             f"got {type(features).__name__}")
        self.center = bool(center) and self.kind == "pixel"
        self.aggregate = aggregate
        self.batch_size = int(batch_size)

    def features(self, videos: torch.Tensor) -> torch.Tensor:
        """(N, F, D) per-frame features."""
        n, f = videos.shape[:2]
        flat = videos.flatten(0, 1)
        feats = torch.cat([torch.as_tensor(self._encode(flat[i:i + self.batch_size])).float().cpu().reshape(
            min(self.batch_size, flat.shape[0] - i), -1) for i in range(0, flat.shape[0], self.batch_size)])
        feats = feats.reshape(n, f, -1)
        if self.center:
            feats = feats - feats.mean(dim=-1, keepdim=True)
        return feats

    def score(self, videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if videos.ndim == 4 or videos.shape[1] < 2:
            return torch.ones(videos.shape[0])
        sims = consecutive_similarity(self.features(videos))
        out = sims.mean(dim=1) if self.aggregate == "mean" else sims.min(dim=1).values
        return out.float()

    def __repr__(self) -> str:
        return f"TemporalConsistency(features={self.kind!r}, center={self.center}, aggregate={self.aggregate!r})"
