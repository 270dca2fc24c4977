"""What the command-line front-ends (``evosearch generate``, ``evosearch batch``) check and load
before any sampling: the output folder, the device, the model, the reward, the method and its
options, early stop. Every error is a :class:`ParameterError` naming the flag, so ``main()`` can
print it in one line.

Methods, models and rewards come from :mod:`evosearch.registry`, the one table of names.
"""

from __future__ import annotations

import ast
import os
import re
import uuid
from pathlib import Path

from .core.validation import DEVICE_RE, ParameterError, check_device, check_int, check_number, describe  # noqa: F401
from .registry import (DEFAULT_MODEL, MODELS, REWARDS, build_method, check_model_folder, default_reward, load_model,
                       load_reward, makes_videos, method_unavailable, reward_unavailable)

#: trajectories' worth of NFE a search gets when neither --nfe-budget nor --population is given
DEFAULT_TRAJECTORIES = 32
_PARAM_RE = re.compile(r"^([A-Za-z_][\w.\-]*): ")


def flag_error(flag: str | None, err: BaseException, rename: dict | None = None) -> ParameterError:
    """``err`` re-worded for the command line: a leading ``param:`` becomes ``rename[param]`` or
    else ``flag``, so the message names what the user typed (``flag`` None: only renamed
    parameters change)."""
    text = " ".join(str(err).split()) or type(err).__name__
    m = _PARAM_RE.match(text)
    if m and (flag is not None or m.group(1) in (rename or {})):
        return ParameterError(f"{(rename or {}).get(m.group(1), flag)}: {text[m.end():]}")
    return ParameterError(text if flag is None else f"{flag}: {text}")


def user_path(path, out_dir) -> str | None:
    """A user's file as recorded: relative to the output folder, never absolute (None stays None)."""
    if path is None:
        return None
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(out_dir))).as_posix()


def check_out_dir(path, flag: str = "--out") -> Path:
    """Create the output folder and prove it writable (a probe file written and removed), so a
    search never runs only to fail at the end."""
    if path is None or str(path) == "":
        raise ParameterError(f"{flag}: expected a folder, got {describe(path)}")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ParameterError(f"{flag}: {str(path)!r} is a file; expected a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ParameterError(f"{flag}: cannot create the folder {str(path)!r}: a part of the path is a file") from None
    except OSError as err:
        raise ParameterError(f"{flag}: cannot create the folder {str(path)!r} ({err.strerror or err})") from None
    probe = out / f".evosearch-probe-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as err:
        raise ParameterError(f"{flag}: cannot write to the folder {str(path)!r} ({err.strerror or err})") from None
    return out


def parse_options(pairs) -> dict:
    """``--option key=value`` pairs as keyword arguments: each value a Python literal
    (``ast.literal_eval``: numbers, True/False/None, lists, quoted strings), or else the text as
    given (``--option intermediate_mutation=resample``)."""
    options = {}
    for pair in pairs or ():
        key, eq, text = str(pair).partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise ParameterError(f"--option: expected key=value with a method parameter as key, got {pair!r}")
        if key in options:
            raise ParameterError(f"--option: {key} given twice")
        try:
            options[key] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            options[key] = text.strip()
    return options


def make_method(name: str, population=None, options: dict | None = None):
    """The registry's method with ``--population`` and ``--option`` values; errors name the flag."""
    options = dict(options or {})
    try:
        return build_method(name, population, **options)
    except (ValueError, TypeError) as err:
        raise flag_error("--method", err, {"population": "--population",
                                           **{k: f"--option {k}" for k in options}}) from err


def resolve_model(model) -> str:
    """The model flag (None: the registry's default), checked without loading any weights: a
    bundled name, or a diffusers folder whose model_index.json names a known pipeline class."""
    model = DEFAULT_MODEL if model is None else model
    if model not in MODELS:
        try:
            check_model_folder(model)
        except (ValueError, TypeError) as err:
            raise flag_error("--model", err) from err
    return model


def check_method_for_model(method: str, model: str) -> None:
    """A bundled model lists the methods it can run; refuse any other before loading it."""
    if model in MODELS and method_unavailable(method, model):
        raise ParameterError(f"--method: {model} cannot run {method}; its methods are "
                             f"{', '.join(MODELS[model].methods)}")


def open_model(model: str, device: str):
    """Load the model (a bundled one or a local folder); errors name ``--model``."""
    try:
        return load_model(model, device)
    except (ValueError, TypeError) as err:
        raise flag_error("--model", err) from err


def default_prompt(model: str) -> str:
    return MODELS[model].default_prompt if model in MODELS else "a photo of a cat"


def reward_name(reward, model: str) -> str:
    return reward or default_reward(model)


def check_reward_choice(name: str, model: str, checkpoint=None) -> None:
    """Before any model loads: ``--reward`` is a registry name that can score ``model``'s samples
    (not another world's, not videos for images), or ``module:attr`` naming something importable."""
    if name in REWARDS:
        why = reward_unavailable(name, model if model in MODELS else None, checkpoint=checkpoint)
        if why is not None:
            raise ParameterError(f"--reward: {why}")
        return
    if not isinstance(name, str) or ":" not in name:
        raise ParameterError(f"--reward: unknown reward {name!r}; allowed: {', '.join(REWARDS)}, or module:attr "
                             f"naming an importable Reward or callable")
    import importlib

    module, _, attr = name.partition(":")
    try:
        getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ParameterError(f"--reward: cannot import {name!r} ({err})") from None


def check_prompt_for(model: str, prompt, flag: str = "--prompt") -> None:
    """Before any model loads: a bundled model's own prompt check (the shapes grammar, a digit)."""
    check = MODELS[model].check_prompt if model in MODELS else None
    if check is None:
        return
    try:
        check(prompt)
    except (ValueError, TypeError) as err:
        raise flag_error(None, err, {"prompt": flag}) from err


def check_target_judge(target_judge: bool, judge: str, model: str) -> None:
    """``--target-judge`` needs a judge: refused with ``--judge none`` before anything loads."""
    if target_judge and judge == "none":
        raise ParameterError("--target-judge: needs a judge, and --judge none turns it off")


#: the flags of video models, and the request setting each sets (None: output only)
VIDEO_FLAGS = {"--num-frames": "num_frames", "--num-segments": "num_segments", "--fps": None}


def check_video_flags(model: str, stepper=None, **given) -> None:
    """``--num-frames`` / ``--num-segments`` / ``--fps`` (``given`` by their setting names: num_frames,
    num_segments, fps; None = not given): valid values, and only where the model uses them -- a
    bundled model by the registry before it loads, a folder's model by its Stepper (``stepper``)."""
    fps = given.get("fps")
    if fps is not None:
        check_number("--fps", fps, lo=0.0, lo_open=True)
    for flag, key in VIDEO_FLAGS.items():
        key = key or "fps"
        if given.get(key) is None:
            continue
        if key != "fps":
            check_int(flag, given[key], lo=1)
        if model in MODELS:
            uses = makes_videos(model) if key == "fps" else key in MODELS[model].extras
        elif stepper is not None:
            family = getattr(stepper, "family", None)
            uses = family == "segments" if key == "num_segments" else family in ("video", "segments") and (
                key == "fps" or family == "video")
        else:
            continue  # a folder's model: decided once it is loaded
        if not uses:
            videos = makes_videos(model) if model in MODELS else getattr(stepper, "family", None) in ("video",
                                                                                                  "segments")
            what = "makes images" if not videos else f"does not use {key}"
            raise ParameterError(f"{flag}: {model} {what}, so {flag} would be ignored; leave it out")


def check_reward_checkpoint(checkpoint) -> None:
    if checkpoint is not None and not os.path.exists(checkpoint):
        raise ParameterError(f"--reward-checkpoint: no such file or folder: {checkpoint!r}")


def open_reward(name: str, checkpoint, device: str):
    """Load the reward; a missing or unreadable checkpoint names ``--reward-checkpoint``, anything
    else ``--reward`` (hub weights that cannot be fetched offline included)."""
    check_reward_checkpoint(checkpoint)
    try:
        return load_reward(name, checkpoint, device)
    except Exception as err:  # a loader's own error (missing file, garbage bytes, no network) in one line
        flag = "--reward-checkpoint" if checkpoint is not None and name in REWARDS else "--reward"
        shown = err if isinstance(err, (ValueError, TypeError, OSError)) else RuntimeError(
            f"cannot load {name} ({type(err).__name__}: {err})")
        raise flag_error(flag, shown) from err


def make_early_stop(patience=None, tol=None, target_reward=None, target_judge=False):
    """An EarlyStop from the flags, or None when none is given."""
    from .search.context import EarlyStop

    if tol is not None and patience is None:
        raise ParameterError("--tol: only counts together with --patience (stop after --patience generations "
                             "without a rise above --tol)")
    if patience is None and target_reward is None and not target_judge:
        return None
    try:
        return EarlyStop(patience=patience, tol=0.0 if tol is None else tol, target_reward=target_reward,
                         target_judge=bool(target_judge))
    except (ValueError, TypeError) as err:
        raise flag_error("--patience", err, {"patience": "--patience", "tol": "--tol",
                                             "target_reward": "--target-reward"}) from err


def default_nfe_budget(nfe_budget, population, steps, stepper) -> int | None:
    """``--nfe-budget``, or :data:`DEFAULT_TRAJECTORIES` trajectories' worth when neither it nor
    ``--population`` is given (None: the method's population decides)."""
    if nfe_budget is None and population is None:
        return DEFAULT_TRAJECTORIES * (steps or stepper.default_num_inference_steps)
    return check_int("--nfe-budget", nfe_budget, lo=1, allow_none=True)


def quiet_loading() -> None:
    """No progress bars while diffusers loads a pipeline (``--quiet``)."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()


def build_search(model: str, method, reward_name: str, checkpoint, *, device: str, max_batch_size: int, eta: float,
                 judge: str = "default", early_stop=None, target_judge: bool = False, distributed=False):
    """The SearchPipeline the flags describe: the model first (a missing model is the first thing to
    report), then the reward, both on ``device``."""
    from .pipeline import SearchPipeline

    pipe = open_model(model, device)
    reward = open_reward(reward_name, checkpoint, device)
    try:
        search = SearchPipeline.from_pipe(pipe, reward=reward, method=method, max_batch_size=max_batch_size,
                                          eta=eta, judge=False if judge == "none" else None, early_stop=early_stop,
                                          distributed=distributed)
    except (ValueError, TypeError) as err:
        raise flag_error("--model", err, {"max_batch_size": "--max-batch-size", "eta": "--eta"}) from err
    if target_judge and search.judge is None:
        raise ParameterError(f"--target-judge: needs a judge, and {model} has none"
                             + (" (--judge none)" if judge == "none" else ""))
    return search
