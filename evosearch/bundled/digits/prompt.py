"""Prompts of the digits worlds: which digit (class label 0-9) a prompt asks for.

Class labels 0-9 are the digits; label 10 (:data:`NULL_CLASS_LABEL`) is the "no digit"
class that classifier-free guidance uses for the unconditional pass (the digits, VAR
digits and moving-digits models all share it).
"""

from __future__ import annotations

import re

import numpy as np
import torch

from ...core.validation import ParameterError, describe

NULL_CLASS_LABEL = 10
DIGITS = tuple(range(10))

_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine".split())}
# Words a prompt may wrap its digit in ("draw a handwritten digit 7", "an image of the number 2").
_FILLER = frozenset(
    "a an the digit number numeral draw write generate show me make sample render handwritten hand written"
    " image picture photo of please".split()
)


def parse_digit(prompt) -> int:
    """The digit (0-9) a prompt asks for.

    Accepts an int 0-9 (or a 0-d integer tensor / numpy integer), or a string such as
    ``"3"``, ``"digit 3"``, ``"a 7"``, ``"draw 5"``, ``"the number 2"``,
    ``"a handwritten digit 9"`` or a spelled-out digit (``"seven"``, ``"digit seven"``).
    Anything else raises :class:`ValueError` naming ``prompt`` and the allowed values.
    """
    allowed = "an int 0-9 or a string such as '3', 'digit 3', 'a 7', 'draw 5'"
    if isinstance(prompt, torch.Tensor) and prompt.numel() == 1 and not prompt.dtype.is_floating_point:
        prompt = int(prompt.item())
    if isinstance(prompt, (np.integer,)):
        prompt = int(prompt)
    if isinstance(prompt, bool):
        raise ParameterError(f"prompt: expected {allowed}, got {describe(prompt)}")
    if isinstance(prompt, int):
        if 0 <= prompt <= 9:
            return prompt
        raise ParameterError(f"prompt: expected {allowed}, got the int {prompt} (allowed digits: 0-9)")
    if isinstance(prompt, str):
        tokens = [_WORDS.get(tok, tok) for tok in re.findall(r"[a-z]+|[0-9]+|[^\sa-z0-9]", prompt.strip().lower())]
        tokens = [tok for tok in tokens if tok not in _FILLER and tok not in (".", "!", ":", ",", "-")]
        if len(tokens) == 1 and len(tokens[0]) == 1 and tokens[0].isdigit():
            return int(tokens[0])
    raise ParameterError(f"prompt: expected {allowed}, got {describe(prompt)}")
