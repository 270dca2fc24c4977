"""The VAR digits world: a class-conditional next-scale (VAR) model of the handwritten digits,
scored with the digits world's classifier reward and judged by its SVC judge.
Weights in ``evosearch/bundled/assets/var_digits/`` (``scripts/train_var_digits.py``).

    >>> from evosearch.bundled import var_digits
    >>> pipe, reward = var_digits.load_pipeline(), var_digits.load_reward()
    >>> out = SearchPipeline.from_pipe(pipe, reward=reward, method=TTSVAR(n=4))("digit 3")
    >>> var_digits.Judge().accuracy(out.images, 3)

Modules: :mod:`.model` (tokenizer, transformer), :mod:`.pipeline` (sampling, the search adapter).
"""

from ..digits import DigitJudge as Judge
from ..digits import load_reward
from .model import MultiScaleVQ, NextScaleTransformer, VARDigitsModel
from .pipeline import VARDigitsAdapter, VARDigitsPipeline, load_var_digits_pipeline

load_pipeline = load_var_digits_pipeline

__all__ = ["load_pipeline", "load_reward", "Judge", "VARDigitsPipeline", "VARDigitsModel", "VARDigitsAdapter",
           "MultiScaleVQ", "NextScaleTransformer", "load_var_digits_pipeline"]
