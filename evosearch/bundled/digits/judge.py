"""The digits world's judge, independent of the reward (also used for the VAR digits model).

:class:`DigitJudge` is a scikit-learn SVC trained (at construction, in well under a
second) on the original 8x8 ``load_digits`` images of the fixed train split. It is not
a neural network and shares neither weights, input resolution nor training code with
the reward classifier, so it measures whether search really made the requested digit
more often, or only found images that fool the reward.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...rewards.base import ImagesLike, to_tensor_images
from .data import digits_split, to_gray
from .prompt import parse_digit


class DigitJudge:
    """SVC (RBF, gamma=0.001, C=10) on the 8x8 digits; images are area-downsampled to 8x8, scaled to 0..16.

    ``split="train"`` (default) fits on the fixed train split of load_digits (1200 images)
    and keeps the other 597 as held-out data (:meth:`heldout_accuracy`); ``split="all"``
    fits on all 1797.
    """

    def __init__(self, split: str = "train", gamma: float = 0.001, C: float = 10.0):
        from sklearn.datasets import load_digits
        from sklearn.svm import SVC

        if split not in ("train", "all"):
            raise ValueError(f"split: expected 'train' or 'all', got {split!r}")
        d = load_digits()
        X = d.data.astype(np.float64)
        y = d.target
        train, test = digits_split()
        if split == "all":
            train = np.arange(len(y))
        self.split = split
        self.svc = SVC(gamma=gamma, C=C).fit(X[train], y[train])
        self._heldout = (X[test], y[test])

    @staticmethod
    def to_features(images: ImagesLike) -> np.ndarray:
        """Images -> (N, 64) features in the dataset's 0..16 range (grayscale, 8x8)."""
        x = to_tensor_images(images)
        x = to_gray(x)
        if tuple(x.shape[-2:]) != (8, 8):
            h, w = x.shape[-2:]
            if h % 8 == 0 and w % 8 == 0:
                x = F.interpolate(x, size=(8, 8), mode="area")
            else:
                x = F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False, antialias=True)
        return (x.clamp(0, 1) * 16.0).reshape(x.shape[0], 64).double().numpy()

    def predict(self, images: ImagesLike) -> np.ndarray:
        """The digit (0-9) the judge sees in each image, as an int array (N,)."""
        return self.svc.predict(self.to_features(images)).astype(np.int64)

    def accuracy(self, images: ImagesLike, targets) -> float:
        """Fraction of images judged to show their target; targets: ints, prompts, or one for all."""
        pred = self.predict(images)
        t = _targets(targets, len(pred))
        return float((pred == t).mean()) if len(pred) else float("nan")

    def __call__(self, images: ImagesLike, prompts) -> list[dict]:
        """One verdict per image: ``correct`` (the judge reads the prompt's digit), ``valid`` (always
        True: any image reads as some digit), ``category`` "digit", ``seen`` (the digit it reads)."""
        pred = self.predict(images)
        t = _targets(prompts, len(pred))
        return [{"correct": bool(p == d), "valid": True, "category": "digit", "seen": int(p),
                 "reason": None if p == d else f"reads as {int(p)}"} for p, d in zip(pred, t)]

    def heldout_accuracy(self) -> float:
        """Accuracy on the real held-out 8x8 digits (597 images of the fixed split)."""
        X, y = self._heldout
        return float((self.svc.predict(X) == y).mean())

    def __repr__(self) -> str:
        return f"DigitJudge(split={self.split!r})"


def _targets(targets, n: int) -> np.ndarray:
    if isinstance(targets, torch.Tensor):
        targets = targets.cpu().numpy()
    if isinstance(targets, (str, int, np.integer)):
        return np.full(n, parse_digit(targets), dtype=np.int64)
    t = np.array([parse_digit(v.item() if isinstance(v, np.generic) else v) for v in list(targets)], dtype=np.int64)
    if len(t) == 1 and n != 1:
        t = np.full(n, t[0])
    if len(t) != n:
        raise ValueError(f"targets: expected 1 or {n} targets (one per image), got {len(t)}")
    return t
