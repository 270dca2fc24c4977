"""Data of the digits worlds: scikit-learn's ``load_digits`` under one fixed split, as images.

The fixed train / held-out split (1200 / 597 of the 1797 images, a seed-0 permutation) is
shared by the generators, the reward classifiers, the judges and the tests.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...core.validation import check_choice

IMAGE_SIZE = 16
SPLIT_SEED = 0
NUM_TRAIN = 1200


def digits_split() -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held-out) of ``load_digits`` under the fixed permutation (seed 0)."""
    perm = np.random.RandomState(SPLIT_SEED).permutation(1797)
    return perm[:NUM_TRAIN], perm[NUM_TRAIN:]


def digits_to_images(x8: np.ndarray | torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """8x8 digits in the dataset's 0..16 range -> float tensor (N, 1, size, size) in [0, 1] (bilinear)."""
    x = torch.as_tensor(np.asarray(x8), dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0.0, 1.0)


def load_digits_images(split: str = "all", size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, size, size) in [0, 1], labels (N,)) of ``load_digits``; split in {"all", "train", "test"}."""
    from sklearn.datasets import load_digits

    check_choice("split", split, ("all", "train", "test"))
    d = load_digits()
    idx = np.arange(len(d.target)) if split == "all" else digits_split()[0 if split == "train" else 1]
    return digits_to_images(d.images[idx], size), torch.as_tensor(d.target[idx], dtype=torch.long)


def to_gray(images: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> (N, 1, size, size) grayscale (mean of channels), area/bilinear resized."""
    x = images.float()
    if x.ndim != 4:
        raise ValueError(f"images: expected shape (N, C, H, W), got {tuple(x.shape)}")
    x = x.mean(dim=1, keepdim=True) if x.shape[1] != 1 else x
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        if x.shape[-1] > size and x.shape[-1] % size == 0 and x.shape[-2] % size == 0:
            x = F.interpolate(x, size=(size, size), mode="area")
        else:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x
