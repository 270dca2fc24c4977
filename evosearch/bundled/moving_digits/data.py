"""Data of the moving-digits world: a digit sliding across a 16x16 canvas.

scikit-learn's ``load_digits`` sprites (8x8, the fixed split of
:func:`evosearch.bundled.digits.data.digits_split`) pasted on a black 16x16 canvas at a
random position and moved by a constant velocity in {-1, 0, 1}^2 pixels per frame (not both
0), bouncing off the borders (:func:`moving_digit_videos`); :func:`training_batch` cuts them
into the generator's segments, :func:`crop_digit` finds the digit again for the judge.
"""

from __future__ import annotations

import numpy as np
import torch

from ...core.validation import check_choice
from ..digits.data import digits_split

CANVAS = 16
DIGIT = 8
SEGMENT_FRAMES = 4
CONTEXT_FRAMES = 2
NUM_SEGMENTS = 4


def load_digit_sprites(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(sprites (N, 8, 8) float32 in [0, 1], labels (N,)) of ``load_digits`` on the fixed split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    check_choice("split", split, ("all", "train", "test"))
    idx = {"all": np.arange(len(d.target)), "train": digits_split()[0], "test": digits_split()[1]}[split]
    return (d.images[idx] / 16.0).astype(np.float32), d.target[idx].astype(np.int64)


def moving_digit_videos(sprites: np.ndarray, num_frames: int, rng: np.random.Generator,
                        canvas: int = CANVAS) -> np.ndarray:
    """Videos (N, num_frames, canvas, canvas) in [0, 1]: each sprite at a random start, moving by a random
    velocity in {-1, 0, 1}^2 (not both 0) per frame and bouncing off the borders."""
    n, s = sprites.shape[0], sprites.shape[-1]
    room = canvas - s
    out = np.zeros((n, num_frames, canvas, canvas), dtype=np.float32)
    for k in range(n):
        pos = rng.integers(0, room + 1, size=2)
        vel = np.zeros(2, dtype=np.int64)
        while not vel.any():
            vel = rng.integers(-1, 2, size=2)
        for f in range(num_frames):
            y, x = pos
            out[k, f, y:y + s, x:x + s] = sprites[k]
            nxt = pos + vel
            for a in range(2):
                if not 0 <= nxt[a] <= room:
                    vel[a] = -vel[a]
            pos = pos + vel
    return out


def training_batch(sprites: np.ndarray, labels: np.ndarray, batch_size: int, rng: np.random.Generator,
                   p_first: float = 0.3, segment_frames: int = SEGMENT_FRAMES, context_frames: int = CONTEXT_FRAMES):
    """One batch (target (B, f, 16, 16) in [-1, 1], context (B, c + 1, 16, 16), labels (B,)): a first segment
    (zero context, flag 0) with probability ``p_first``, else the f frames after c context frames."""
    idx = rng.integers(0, len(sprites), size=batch_size)
    videos = moving_digit_videos(sprites[idx], context_frames + segment_frames, rng) * 2 - 1
    first = rng.random(batch_size) < p_first
    target = np.where(first[:, None, None, None], videos[:, :segment_frames], videos[:, context_frames:])
    ctx = np.where(first[:, None, None, None], 0.0, videos[:, :context_frames])
    flag = np.broadcast_to((~first).astype(np.float32)[:, None, None, None], (batch_size, 1, CANVAS, CANVAS))
    context = np.concatenate([ctx, flag], axis=1).astype(np.float32)
    return torch.from_numpy(target.astype(np.float32)), torch.from_numpy(context), torch.from_numpy(labels[idx])


def crop_digit(frames: torch.Tensor, size: int = DIGIT, center: tuple[float, float] = (3.5, 3.5)) -> torch.Tensor:
    """(M, C, H, W) in [0, 1] -> (M, 1, size, size): the window placing the frame's centre of mass (grayscale
    ink) at ``center`` of the window, as in the 8x8 sprites (whose mean centre of mass is about (3.5, 3.5))."""
    x = frames.float().mean(dim=1, keepdim=True) if frames.shape[1] != 1 else frames.float()
    x = x.clamp(0, 1)
    m, _, h, w = x.shape
    mass = x.sum(dim=(1, 2, 3)).clamp_min(1e-6)
    cy = (x.sum(dim=(1, 3)) * torch.arange(h, dtype=x.dtype)).sum(-1) / mass
    cx = (x.sum(dim=(1, 2)) * torch.arange(w, dtype=x.dtype)).sum(-1) / mass
    ys = (cy - center[0]).round().clamp(0, h - size).long().tolist()
    xs = (cx - center[1]).round().clamp(0, w - size).long().tolist()
    return torch.stack([x[k, :, y:y + size, xx:xx + size] for k, (y, xx) in enumerate(zip(ys, xs))])
