"""A reward on its own device: a big verifier beside a big generator (``reward_device="cuda:1"``)."""

from __future__ import annotations

import math

import torch

from ..core.validation import ParameterError, describe
from .base import Reward, RewardError, as_reward, broadcast_prompts, is_video_batch, to_tensor_images, to_tensor_videos

def check_reward_device(device) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (or a torch.device) that this machine has; errors name
    ``reward_device`` (the CLI's own device check)."""
    from ..core.validation import check_device

    return torch.device(check_device(str(device) if isinstance(device, torch.device) else device, "reward_device"))


def move_to(obj, device: torch.device, depth: int = 3, seen=None) -> None:
    """Move a reward's modules and tensors to ``device`` in place: attributes that are torch modules
    or tensors, a ``device`` attribute, and (a few levels down) the objects and lists that hold them
    (a CLIP backbone, an ensemble's members)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth < 0:
        return
    seen.add(id(obj))
    items = list(vars(obj).items()) if hasattr(obj, "__dict__") else []
    for name, value in items:
        if isinstance(value, torch.nn.Module):
            value.to(device)
        elif isinstance(value, torch.Tensor):
            setattr(obj, name, value.to(device))
        elif isinstance(value, torch.device) and name == "device":
            setattr(obj, name, device)
        elif isinstance(value, (list, tuple)):
            for v in value:
                if hasattr(v, "__dict__") and not isinstance(v, type):
                    move_to(v, device, depth - 1, seen)
        elif hasattr(value, "__dict__") and not isinstance(value, (type, str)) and not callable(value):
            move_to(value, device, depth - 1, seen)


class RewardOnDevice(Reward):
    """``reward`` run on ``device``: its modules moved there once, and the samples sent there
    ``batch_size`` at a time (so the reward's device holds one micro-batch of images, not the
    population). Scores come back as (N,) on the CPU, as from any Reward."""

    def __init__(self, reward, device, batch_size: int = 16):
        self.reward = as_reward(reward)
        self.device = check_reward_device(device)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ParameterError(f"batch_size: must be a positive integer, got {describe(batch_size)}")
        self.batch_size = batch_size
        self.name = self.reward.name
        self.video_input = True  # videos go to the wrapped reward whole
        move_to(self.reward, self.device)

    def __getattr__(self, name):  # features(), checkpoints, ...: the wrapped reward's
        if name == "reward":
            raise AttributeError(name)
        return getattr(self.reward, name)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Images (N, 3, H, W) go to the device in micro-batches, straight to the wrapped reward's
        ``score``; videos (N, F, 3, H, W) to its ``__call__`` (which averages frames where it must)."""
        out = []
        for lo in range(0, images.shape[0], self.batch_size):
            part, texts = images[lo:lo + self.batch_size], prompts[lo:lo + self.batch_size]
            if part.ndim == 5:
                out.append(self.reward(part, texts))
            else:
                out.append(self.reward._as_scores(self.reward.score(part.to(self.device), texts), len(part)))
        return torch.cat(out) if out else torch.zeros(0)

    @torch.no_grad()
    def __call__(self, images, prompts=None) -> torch.Tensor:
        x = to_tensor_videos(images) if is_video_batch(images) else to_tensor_images(images)
        scores = self._as_scores(self.score(x, broadcast_prompts(prompts, x.shape[0])), x.shape[0])
        if not torch.isfinite(scores).all():
            bad = [i for i, v in enumerate(scores.tolist()) if not math.isfinite(v)]
            raise RewardError(f"reward: {self.name} returned non-finite scores (NaN or inf) for samples {bad}")
        return scores

    def __repr__(self) -> str:
        return f"RewardOnDevice({self.reward!r}, device='{self.device}')"


__all__ = ["RewardOnDevice", "check_reward_device", "move_to"]
