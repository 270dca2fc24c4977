"""The digits world: scikit-learn's handwritten digits, a class-conditional pixel diffusion model,
a CNN classifier reward (it saturates near log p = 0 and can be fooled) and an SVC judge that
search never optimises. Weights in ``evosearch/bundled/assets/digits/`` (``scripts/train_digits.py``).

    >>> from evosearch.bundled import digits
    >>> pipe, reward, judge = digits.load_pipeline(), digits.load_reward(), digits.Judge()
    >>> out = SearchPipeline.from_pipe(pipe, reward=reward)("digit 3")
    >>> judge.accuracy(out.images, 3)

Modules: :mod:`.prompt` (prompt -> digit), :mod:`.data` (the fixed split of ``load_digits``, as
images), :mod:`.pipeline` (``DigitsPipeline``), :mod:`.reward` (the classifier), :mod:`.judge` (the SVC).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .data import IMAGE_SIZE, digits_split, digits_to_images, load_digits_images, to_gray
from .judge import DigitJudge
from .pipeline import DigitsPipeline, load_digits_pipeline
from .prompt import DIGITS, NULL_CLASS_LABEL, parse_digit
from .reward import DigitClassifierReward, DigitCNN, load_digit_classifier, save_digit_classifier

Judge = DigitJudge
load_pipeline = load_digits_pipeline


def load_reward(path: str | Path | None = None, target=None, kind: str = "logprob",
                device: str | torch.device = "cpu") -> DigitClassifierReward:
    """The bundled classifier reward (or the classifier saved at ``path``): log p(digit | image), or p."""
    return DigitClassifierReward(path=path, target=target, kind=kind, device=device)


__all__ = ["load_pipeline", "load_reward", "Judge", "DigitsPipeline", "load_digits_pipeline", "DigitClassifierReward",
           "DigitCNN", "load_digit_classifier", "save_digit_classifier", "DigitJudge", "parse_digit", "digits_split",
           "digits_to_images", "load_digits_images", "to_gray", "NULL_CLASS_LABEL", "DIGITS", "IMAGE_SIZE"]
