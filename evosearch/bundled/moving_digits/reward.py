"""The moving-digits world's reward: the bundled frame classifier, aggregated over frames.

The classifier is a :class:`~evosearch.bundled.digits.reward.DigitCNN` trained by
``scripts/train_moving_digits.py`` on 16x16 canvases with the digit anywhere (weights in
``evosearch/bundled/assets/moving_digits/classifier/``); :class:`~evosearch.rewards.video.FrameReward`
scores every frame with it and aggregates.
"""

from __future__ import annotations

from pathlib import Path

from ...rewards.video import FrameReward
from ..digits.reward import DigitClassifierReward
from ..paths import asset_path


def moving_digits_reward(path: str | Path | None = None, kind: str = "logprob", aggregate: str = "mean"):
    """The bundled frame classifier's log p(digit) (or p), aggregated over frames (a FrameReward)."""
    path = Path(path) if path is not None else asset_path("moving_digits", "classifier")
    return FrameReward(DigitClassifierReward(path=path, kind=kind), aggregate=aggregate)
