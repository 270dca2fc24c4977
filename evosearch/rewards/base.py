"""The Reward interface: (images or videos, prompts) -> one float per sample, higher is better."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

ImagesLike = torch.Tensor | np.ndarray | Sequence[Image.Image]


def to_tensor_images(images: ImagesLike) -> torch.Tensor:
    """Convert images to a float tensor (N, 3, H, W) in [0, 1] on the CPU.

    Accepts a tensor (N, C, H, W) in [0, 1] (C = 1 or 3), a numpy array (N, H, W, C)
    in [0, 1] or uint8, or a list of PIL images.
    """
    if isinstance(images, torch.Tensor):
        x = images.detach().float().cpu()
    elif isinstance(images, np.ndarray):
        arr = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
        if arr.ndim == 3:
            arr = arr[..., None]
        x = torch.from_numpy(arr).permute(0, 3, 1, 2)
    else:
        arrs = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
    if x.ndim != 4:
        raise ValueError(f"images: expected a batch of shape (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        raise ValueError(f"images: expected 1 or 3 channels, got {x.shape[1]}")
    return x


def broadcast_prompts(prompts: str | Sequence[str] | None, n: int) -> list[str]:
    """One prompt per image: a single prompt is repeated n times."""
    if prompts is None:
        return [""] * n
    if isinstance(prompts, str):
        return [prompts] * n
    prompts = list(prompts)
    if len(prompts) == 1:
        return prompts * n
    if len(prompts) != n:
        raise ValueError(f"prompts: expected 1 or {n} prompts (one per image), got {len(prompts)}")
    return prompts


class Reward:
    """Base class. Subclasses implement :meth:`score`.

    ``reward(images, prompts)`` returns a float tensor of shape (N,) on the CPU,
    higher is better. Images arrive as a float tensor (N, 3, H, W) in [0, 1].

    Non-finite scores (NaN, +/-inf) raise :class:`ValueError` naming the reward:
    a silent worst-score would let a broken reward steer a search without anyone
    noticing.
    """

    name: str = "reward"

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, images: ImagesLike, prompts: str | Sequence[str] | None = None) -> torch.Tensor:
        x = to_tensor_images(images)
        scores = self.score(x, broadcast_prompts(prompts, x.shape[0]))
        scores = torch.as_tensor(scores, dtype=torch.float32).detach().cpu().reshape(-1)
        if scores.shape[0] != x.shape[0]:
            raise ValueError(f"{self.name}: returned {scores.shape[0]} scores for {x.shape[0]} images")
        if not torch.isfinite(scores).all():
            bad = [i for i, v in enumerate(scores.tolist()) if not math.isfinite(v)]
            raise ValueError(f"{self.name}: returned non-finite scores (NaN or inf) for samples {bad}")
        return scores

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FunctionReward(Reward):
    """Wrap any callable ``fn(images: Tensor (N,3,H,W) in [0,1], prompts: list[str]) -> (N,) scores``."""

    def __init__(self, fn: Callable[[torch.Tensor, list[str]], torch.Tensor | Sequence[float]], name: str | None = None):
        if not callable(fn):
            raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "function_reward")

    def score(self, images, prompts):
        return self.fn(images, prompts)


def as_reward(reward) -> Reward:
    """A Reward, or a plain callable wrapped as a FunctionReward."""
    if isinstance(reward, Reward):
        return reward
    if callable(reward):
        return FunctionReward(reward)
    raise TypeError(f"reward: expected an evosearch Reward or a callable, got {type(reward).__name__}")
