"""The moving-digits world: a digit sliding across a 16x16 canvas, generated segment by segment,
a frame-classifier reward and an SVC judge on the 8x8 window around the digit.
Weights in ``evosearch/bundled/assets/moving_digits/`` (``scripts/train_moving_digits.py``).

    >>> from evosearch.bundled import moving_digits
    >>> pipe, reward = moving_digits.load_pipeline(), moving_digits.load_reward()
    >>> out = SearchPipeline.from_pipe(pipe, reward=reward, method=TreeOfFrames())("digit 3")
    >>> moving_digits.Judge().video_accuracy(out.videos, 3)

Modules: :mod:`.data` (the moving-digit videos), :mod:`.pipeline` (``MovingDigitsPipeline`` and its
segment model), :mod:`.reward` (the frame classifier), :mod:`.judge` (the SVC).
"""

from .data import crop_digit, load_digit_sprites, moving_digit_videos, training_batch
from .judge import MovingDigitJudge
from .pipeline import MovingDigitsPipeline, MovingDigitsSegments, load_moving_digits_pipeline, make_scheduler, make_unet
from .reward import moving_digits_reward

Judge = MovingDigitJudge
load_pipeline = load_moving_digits_pipeline
load_reward = moving_digits_reward

__all__ = ["load_pipeline", "load_reward", "Judge", "MovingDigitsPipeline", "MovingDigitsSegments", "MovingDigitJudge",
           "load_moving_digits_pipeline", "moving_digits_reward", "moving_digit_videos", "crop_digit",
           "load_digit_sprites", "make_unet", "make_scheduler", "training_batch"]
