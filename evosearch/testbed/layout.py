"""The testbed's state layout: a sample x in R^D is the state ``(1, 1, D)`` (see :mod:`evosearch.testbed`)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["samples_from", "samples_to_states", "projection_reward"]


def samples_from(images) -> torch.Tensor:
    """(N, D) samples from states or Stepper images ``(N, C, 1, D)`` (or pass (N, D) through)."""
    x = torch.as_tensor(images)
    if x.ndim == 4:
        return x[:, 0, 0, :]
    if x.ndim == 2:
        return x
    raise ValueError(f"images: expected (N, C, 1, D) states/images or (N, D) samples, got shape {tuple(x.shape)}")


def samples_to_states(x) -> torch.Tensor:
    """(N, D) samples -> (N, 1, 1, D) states."""
    x = torch.as_tensor(x)
    return x.reshape(x.shape[0], 1, 1, x.shape[-1])


def projection_reward(w, name: str = "projection"):
    """A FunctionReward ``r(x) = w . x`` on the testbed's images (raw samples, not pixels: no range check)."""
    from ..rewards.base import FunctionReward

    w = torch.as_tensor(np.asarray(w, dtype=np.float64))

    def fn(images, prompts):
        return samples_from(images).double() @ w

    return FunctionReward(fn, name=name, check_range=False)
