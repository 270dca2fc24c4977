"""The moving-digits world's judge, independent of the reward: an SVC on the 8x8 window around the digit."""

from __future__ import annotations

import numpy as np
import torch

from ...rewards.base import to_tensor_videos
from ..digits.prompt import parse_digit
from .data import DIGIT, crop_digit, load_digit_sprites


class MovingDigitJudge:
    """Independent judge: a scikit-learn SVC (RBF, gamma=0.001, C=10, as
    :class:`~evosearch.bundled.digits.DigitJudge`) fitted on the 8x8 sprites of the fixed train split and their
    1-pixel shifts, applied to the 8x8 window around each frame's centre of mass (:func:`crop_digit`); 98.8% of
    held-out clean frames are read correctly. It shares no weights, resolution or training code with the reward (a CNN on 16x16 canvases).
    ``frame_accuracy``: fraction of frames read as the target; ``video_accuracy``: fraction of videos with at
    least ``min_fraction`` of their frames read as the target (default 1.0: every frame)."""

    SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))

    def __init__(self, gamma: float = 0.001, C: float = 10.0):
        from sklearn.svm import SVC

        sprites, labels = load_digit_sprites("train")
        X = []
        for dy, dx in self.SHIFTS:
            shifted = np.zeros_like(sprites)
            src = sprites[:, max(0, -dy):DIGIT - max(0, dy), max(0, -dx):DIGIT - max(0, dx)]
            shifted[:, max(0, dy):DIGIT - max(0, -dy), max(0, dx):DIGIT - max(0, -dx)] = src
            X.append(shifted.reshape(len(sprites), -1) * 16.0)
        self.svc = SVC(gamma=gamma, C=C).fit(np.concatenate(X), np.tile(labels, len(self.SHIFTS)))

    def predict_frames(self, frames: torch.Tensor) -> np.ndarray:
        """(M, C, H, W) frames in [0, 1] -> (M,) digits seen."""
        crops = crop_digit(frames)
        return self.svc.predict(crops.reshape(crops.shape[0], -1).double().numpy() * 16.0).astype(np.int64)

    def predict(self, videos) -> np.ndarray:
        """(N, F) digits seen in each frame of each video."""
        v = to_tensor_videos(videos)
        n, f = v.shape[:2]
        return self.predict_frames(v.flatten(0, 1)).reshape(n, f)

    def frame_accuracy(self, videos, target) -> float:
        return float((self.predict(videos) == parse_digit(target)).mean())

    def video_accuracy(self, videos, target, min_fraction: float = 1.0) -> float:
        hits = (self.predict(videos) == parse_digit(target)).mean(axis=1)
        return float((hits >= min_fraction - 1e-9).mean())

    def __call__(self, videos, prompts) -> list[dict]:
        """One verdict per video: ``correct`` when every frame reads as the prompt's digit, ``valid``
        True, ``category`` "digit", ``frame_accuracy`` the fraction of frames that do."""
        prompts = [prompts] * len(to_tensor_videos(videos)) if isinstance(prompts, (str, int)) else list(prompts)
        seen = self.predict(videos)
        out = []
        for frames, prompt in zip(seen, prompts):
            hits = float((frames == parse_digit(prompt)).mean())
            out.append({"correct": hits == 1.0, "valid": True, "category": "digit", "frame_accuracy": hits,
                        "reason": None if hits == 1.0 else f"{1 - hits:.0%} of frames read otherwise"})
        return out
