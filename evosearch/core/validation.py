"""One way to check parameters: every check names the parameter, what is allowed, and what was given.

:class:`ParameterError` is both a ``ValueError`` and a ``TypeError``, so callers may catch
either; apps show its message in one line.
"""

from __future__ import annotations

import math
import re
from numbers import Integral, Real
from typing import Any, Iterable, Sequence


class ParameterError(ValueError, TypeError):
    """A bad argument: the message starts with the parameter's name."""


def describe(value: Any, limit: int = 60) -> str:
    """A short description of a value for error messages (type and a truncated repr)."""
    text = repr(value)
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text)} characters)"
    if isinstance(value, (bool, int, float, str)) or value is None:
        return text
    return f"{type(value).__name__} {text}"


def _bounds(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"in [{lo}, {hi}]"
    if lo is not None:
        return f">= {lo}"
    if hi is not None:
        return f"<= {hi}"
    return ""


def check_int(name: str, value, lo: int | None = None, hi: int | None = None, allow_none: bool = False,
              hint: str = "") -> int | None:
    """``value`` as an int (bools and floats refused) within [lo, hi]."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral) or (lo is not None and value < lo) or (
            hi is not None and value > hi):
        what = f"an integer {_bounds(lo, hi)}".rstrip() + (" or None" if allow_none else "")
        raise ParameterError(f"{name}: must be {what}{hint}, got {describe(value)}")
    return int(value)


def check_number(name: str, value, lo: float | None = None, hi: float | None = None, allow_none: bool = False,
                 lo_open: bool = False, hi_open: bool = False, hint: str = "") -> float | None:
    """``value`` as a finite float (bools refused) within the bounds (open where asked)."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = not ((lo is not None and (v < lo or (lo_open and v == lo))) or
                  (hi is not None and (v > hi or (hi_open and v == hi))))
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        rng = (f"in {left}{lo}, {hi}{right}" if lo is not None and hi is not None
               else f"{'>' if lo_open else '>='} {lo}" if lo is not None
               else f"{'<' if hi_open else '<='} {hi}" if hi is not None else "")
        what = f"a finite number {rng}".rstrip() + (" or None" if allow_none else "")
        raise ParameterError(f"{name}: must be {what}{hint}, got {describe(value)}")
    return float(value)


def check_choice(name: str, value, choices: Iterable, hint: str = "") -> Any:
    choices = tuple(choices)
    if isinstance(value, bool) or value not in choices:
        raise ParameterError(f"{name}: must be one of {', '.join(map(str, choices))}{hint}, got {describe(value)}")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ParameterError(f"{name}: must be True or False, got {describe(value)}")
    return value


def check_steps(name: str, steps, num_steps: int | None = None, lo: int = 0) -> tuple[int, ...]:
    """A strictly increasing sequence of integer step indices in [lo, num_steps - 1]."""
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence):
        raise ParameterError(f"{name}: must be a list of integer step indices, got {describe(steps)}")
    steps = list(steps)
    if not all(isinstance(e, Integral) and not isinstance(e, bool) for e in steps):
        raise ParameterError(f"{name}: must be a list of integer step indices, got {steps}")
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ParameterError(f"{name}: steps must be strictly increasing, got {steps}")
    if steps and steps[0] < lo:
        raise ParameterError(f"{name}: steps must be >= {lo}, got {steps}")
    if num_steps is not None and steps and steps[-1] >= num_steps:
        raise ParameterError(f"{name}: steps must be in [{lo}, num_inference_steps - 1] = [{lo}, {num_steps - 1}], "
                             f"got {steps}")
    return tuple(int(e) for e in steps)


def check_int_list(name: str, values, lo: int = 1) -> tuple[int, ...]:
    """A non-empty sequence of integers >= lo."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values or not all(
            isinstance(v, Integral) and not isinstance(v, bool) and v >= lo for v in values):
        raise ParameterError(f"{name}: must be a non-empty list of integers >= {lo}, got {describe(values)}")
    return tuple(int(v) for v in values)


DEVICE_RE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def check_device(device, flag: str = "--device", allow_auto: bool = False) -> str:
    """``cpu``, ``cuda``, ``cuda:N``, ``mps`` (or ``auto`` where allowed), and present on this machine."""
    allowed = "cpu, cuda, cuda:N, mps" + (", auto" if allow_auto else "")
    if not isinstance(device, str) or not (DEVICE_RE.match(device) or (allow_auto and device == "auto")):
        raise ParameterError(f"{flag}: must be one of {allowed}, got {describe(device)}")
    if device in ("cpu", "auto"):
        return device
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ParameterError(f"{flag}: {device} asked for, but torch sees no CUDA GPU on this machine "
                                 f"(torch.cuda.is_available() is False); use --device cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ParameterError(f"{flag}: {device} asked for, but this machine has {torch.cuda.device_count()} "
                                 f"CUDA device(s): cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ParameterError(f"{flag}: mps asked for, but torch has no MPS (Apple GPU) backend here; use --device cpu")
    return device
