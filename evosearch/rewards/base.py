"""The Reward interface: (images or videos, prompts) -> one float per sample, higher is better."""

from __future__ import annotations

import math
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch
from PIL import Image

from ..core.validation import ParameterError, describe

ImagesLike = torch.Tensor | np.ndarray | Sequence[Image.Image]
#: videos: a tensor (N, F, C, H, W) in [0, 1], a numpy array (N, F, H, W, C) (float or uint8),
#: or a list of N frame lists (PIL images, or (F, C, H, W) tensors)
VideosLike = torch.Tensor | np.ndarray | Sequence[Sequence[Image.Image]]


#: how far a float image may stray outside [0, 1] (float rounding of a decoder) before it is refused
RANGE_SLACK = 1e-3


def _unit_range(x: torch.Tensor, name: str, check: bool = True) -> torch.Tensor:
    """Float pixels in [0, 1]: uint8 pixels (0-255) are divided by 255; float pixels outside [0, 1]
    (images in 0-255, or in [-1, 1]) or not finite raise a ParameterError naming ``name`` (with
    ``check``; without, floats pass as they are)."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if x.dtype == torch.bool or torch.is_complex(x) or not (x.is_floating_point() or x.dtype in (
            torch.int8, torch.int16, torch.int32, torch.int64)):
        raise ParameterError(f"{name}: expected float pixels in [0, 1] or uint8 pixels in 0-255, got dtype {x.dtype}")
    x = x.float()
    if not check:
        return x
    if x.numel():
        lo, hi = float(x.amin()), float(x.amax())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ParameterError(f"{name}: pixels must be finite, got NaN or inf")
        if lo < -RANGE_SLACK or hi > 1 + RANGE_SLACK:
            hint = " (0-255 images: pass uint8, or divide by 255)" if hi > 1 + RANGE_SLACK else \
                " ([-1, 1] images: map them with (x + 1) / 2)"
            raise ParameterError(f"{name}: float pixels must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}]{hint}")
    return x.clamp(0.0, 1.0)


def to_tensor_images(images: ImagesLike, check_range: bool = True) -> torch.Tensor:
    """Convert images to a float tensor (N, 3, H, W) in [0, 1] on the CPU.

    Accepts a tensor (N, C, H, W), float in [0, 1] or uint8 (C = 1 or 3), a numpy array
    (N, H, W, C), float in [0, 1] or uint8, or a list of PIL images. Float pixels outside
    [0, 1] (0-255 floats, [-1, 1] images) raise a ParameterError naming ``images``, unless
    ``check_range`` is False (values that are not pixels: the testbed's samples).
    """
    if isinstance(images, torch.Tensor):
        x = _unit_range(images.detach().cpu(), "images", check_range)
    elif isinstance(images, np.ndarray):
        arr = images[..., None] if images.ndim == 3 else images
        x = _unit_range(torch.from_numpy(np.ascontiguousarray(arr)), "images", check_range)
        x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x
    else:
        arrs = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
    if x.ndim != 4:
        raise ValueError(f"images: expected a batch of shape (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        raise ValueError(f"images: expected 1 or 3 channels, got {x.shape[1]}")
    return x


def is_video_batch(x) -> bool:
    """True for a batch of videos (see :data:`VideosLike`): a 5-D tensor/array, or a list whose
    items are frame lists or 4-D tensors."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return x.ndim == 5
    if isinstance(x, (list, tuple)) and len(x) > 0:
        first = x[0]
        return isinstance(first, (list, tuple)) or (isinstance(first, (torch.Tensor, np.ndarray)) and first.ndim == 4)
    return False


def to_tensor_videos(videos: VideosLike, check_range: bool = True) -> torch.Tensor:
    """Convert videos to a float tensor (N, F, 3, H, W) in [0, 1] on the CPU (see :data:`VideosLike`);
    uint8 frames are read as 0-255, float frames outside [0, 1] refused (unless not ``check_range``)."""
    if isinstance(videos, torch.Tensor):
        if videos.ndim != 5:
            raise ValueError(f"videos: expected a batch of shape (N, F, C, H, W), got shape {tuple(videos.shape)}")
        v = _unit_range(videos.detach().cpu(), "videos", check_range)
    elif isinstance(videos, np.ndarray):
        if videos.ndim != 5:
            raise ValueError(f"videos: expected an array of shape (N, F, H, W, C), got shape {videos.shape}")
        v = _unit_range(torch.from_numpy(np.ascontiguousarray(videos)), "videos", check_range).permute(0, 1, 4, 2, 3)
    else:
        clips = [to_tensor_images(list(c) if isinstance(c, (list, tuple)) else c, check_range) for c in videos]
        if not clips or any(c.shape != clips[0].shape for c in clips):
            raise ValueError("videos: expected a non-empty list of videos with the same number and size of frames, "
                             f"got frame shapes {[tuple(c.shape) for c in clips]}")
        v = torch.stack(clips)
    if v.shape[2] == 1:
        v = v.expand(-1, -1, 3, -1, -1)
    if v.shape[2] != 3:
        raise ValueError(f"videos: expected 1 or 3 channels, got {v.shape[2]}")
    return v


def broadcast_prompts(prompts: str | Sequence[str] | None, n: int) -> list[str]:
    """One prompt per image: a single prompt is repeated n times."""
    if prompts is None:
        return [""] * n
    if isinstance(prompts, str):
        return [prompts] * n
    prompts = list(prompts)
    if len(prompts) == 1:
        return prompts * n
    if len(prompts) != n:
        raise ValueError(f"prompts: expected 1 or {n} prompts (one per image), got {len(prompts)}")
    return prompts


def read_checkpoint(path: str, param: str) -> dict:
    """A torch (.pt/.pth/.bin) or safetensors checkpoint, loaded on the CPU without unpickling
    code; a file that is neither raises ValueError naming ``param``."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{param}: could not read {path} as a torch or safetensors checkpoint: {e}") from e


def _is_complex(scores) -> bool:
    """Complex numbers, which a cast to float would silently cut to their real part."""
    if torch.is_tensor(scores):
        return torch.is_complex(scores)
    if isinstance(scores, np.ndarray):
        return np.iscomplexobj(scores)
    if isinstance(scores, (list, tuple)):
        return any(_is_complex(v) for v in scores)
    return isinstance(scores, (complex, np.complexfloating))


class RewardError(ParameterError):
    """A reward returned something that is not one finite number per sample; names the reward."""


class Reward:
    """Base class. Subclasses implement :meth:`score`.

    ``reward(images, prompts)`` returns a float tensor of shape (N,) on the CPU,
    higher is better. Images arrive as a float tensor (N, 3, H, W) in [0, 1].

    Videos (N, F, 3, H, W) (see :data:`VideosLike`) are accepted too: a reward with
    ``video_input = True`` (video rewards, :class:`~evosearch.rewards.Ensemble`) gets them as
    they are; any other reward scores every frame and a video's score is the mean of its
    frames' scores (:class:`~evosearch.rewards.video.FrameReward` aggregates otherwise).

    Non-finite scores (NaN, +/-inf) raise :class:`ValueError` naming the reward:
    a silent worst-score would let a broken reward steer a search without anyone
    noticing.
    """

    name: str = "reward"
    #: True: float images outside [0, 1] are refused (naming ``images``); False: any values pass
    #: (a reward of things that are not pixels, such as the testbed's samples)
    check_range: bool = True
    #: True: :meth:`score` receives videos (N, F, 3, H, W) whole; False: frames, averaged per video
    video_input: bool = False
    #: the name in :data:`evosearch.registry.REWARDS` (as the CLI spells it); None: not in the registry
    registry_name: ClassVar[str | None] = None
    #: one line shown by the CLI, the Gradio app and ComfyUI
    summary: ClassVar[str] = ""
    #: True: without a checkpoint, :meth:`from_checkpoint` downloads weights (so offline it needs one)
    needs_weights: ClassVar[bool] = False
    #: the bundled models whose samples it is made for (None: any model)
    models: ClassVar[tuple[str, ...] | None] = None

    @classmethod
    def from_checkpoint(cls, checkpoint=None, device="cpu") -> "Reward":
        """The reward as the registry loads it (``evosearch generate --reward NAME --reward-checkpoint
        PATH``): from ``checkpoint`` (a local file or folder), or its default weights when None.
        Default: ``cls(checkpoint=checkpoint, device=device)``; override where the argument differs."""
        return cls(checkpoint=checkpoint, device=device)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def check_prompt(self, prompt: str) -> None:
        """Raise a ParameterError when this reward cannot score ``prompt`` (no compute: a search
        calls it before its first step). Default: any prompt."""

    @torch.no_grad()
    def __call__(self, images: ImagesLike | VideosLike, prompts: str | Sequence[str] | None = None) -> torch.Tensor:
        if is_video_batch(images):
            x = to_tensor_videos(images, self.check_range)
            prompts = broadcast_prompts(prompts, x.shape[0])
            if self.video_input:
                scores = self.score(x, prompts)
            else:  # an image reward on videos: the mean of the frames' scores
                n, f = x.shape[:2]
                frame_scores = self.score(x.flatten(0, 1), [p for p in prompts for _ in range(f)])
                scores = self._as_scores(frame_scores, n * f).reshape(n, f).mean(dim=1)
        else:
            x = to_tensor_images(images, self.check_range)
            scores = self.score(x, broadcast_prompts(prompts, x.shape[0]))
        scores = self._as_scores(scores, x.shape[0])
        if not torch.isfinite(scores).all():
            bad = [i for i, v in enumerate(scores.tolist()) if not math.isfinite(v)]
            raise RewardError(f"reward: {self.name} returned non-finite scores (NaN or inf) for samples {bad}")
        return scores

    def _as_scores(self, scores, n: int) -> torch.Tensor:
        """(n,) float32 scores on the CPU, or a RewardError naming the reward and what it returned."""
        if isinstance(scores, (str, bytes)) or scores is None:
            raise RewardError(f"reward: {self.name} returned {describe(scores)}; expected {n} numbers (one per image)")
        if _is_complex(scores):
            raise RewardError(f"reward: {self.name} returned complex scores ({describe(scores)}); expected {n} real "
                              f"numbers (one per image)")
        try:
            out = torch.as_tensor(scores, dtype=torch.float32).detach().cpu().reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            raise RewardError(f"reward: {self.name} returned {describe(scores)}; expected {n} numbers (one per "
                              f"image)") from None
        if out.shape[0] != n:
            raise RewardError(f"reward: {self.name} returned {out.shape[0]} scores for {n} images")
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FunctionReward(Reward):
    """Wrap any callable ``fn(images: Tensor (N,3,H,W) in [0,1], prompts: list[str]) -> (N,) scores``;
    ``check_range=False`` passes values that are not pixels (see :attr:`Reward.check_range`)."""

    def __init__(self, fn: Callable[[torch.Tensor, list[str]], torch.Tensor | Sequence[float]], name: str | None = None,
                 check_range: bool = True):
        if not callable(fn):
            raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
        self.fn = fn
        self.check_range = bool(check_range)
        self.name = name or getattr(fn, "__name__", "function_reward")

    def score(self, images, prompts):
        return self.fn(images, prompts)


def check_reward_prompt(reward, prompt) -> None:
    """Before any compute: whether ``reward`` can score ``prompt`` (its :meth:`Reward.check_prompt`);
    a refusal names the reward (``reward: <name> cannot score ...``)."""
    check = getattr(reward, "check_prompt", None)
    if not callable(check):
        return
    try:
        check(prompt)
    except (ValueError, TypeError) as err:
        text = " ".join(str(err).split())
        raise ParameterError(f"reward: {getattr(reward, 'name', type(reward).__name__)} cannot score the prompt "
                             f"{describe(prompt)}: {text}") from err


def as_reward(reward) -> Reward:
    """A Reward, or a plain callable wrapped as a FunctionReward."""
    if isinstance(reward, Reward):
        return reward
    if callable(reward):
        return FunctionReward(reward)
    raise TypeError(f"reward: expected an evosearch Reward or a callable, got {type(reward).__name__}")
