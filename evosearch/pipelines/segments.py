"""Segment continuation: a video made segment by segment, each conditioned on the frames before it.

Two layers:

* :class:`~evosearch.pipelines.segment_model.SegmentModel` — what a model must provide to continue a video: per request
  (``prepare``) the per-segment noise schedule and latent shape, the conditioning of the
  next segment from the finished ones (``context``), one denoising prediction of one
  segment (``predict``) and the decoding of segments into frames (``decode``).
  Implementations: :class:`~evosearch.pipelines.wan_i2v.WanI2VSegments` on diffusers' ``WanImageToVideoPipeline``
  (the last decoded frame of the previous segment is the next segment's image, the first
  segment comes from a ``WanPipeline`` or an image), and the bundled moving-digits model
  (:mod:`evosearch.bundled.moving_digits`).

* :class:`SegmentStepper` — a :class:`~evosearch.core.Stepper` that chains the
  segments: its state is the whole video's latents, (N, S, *segment_shape) for S
  segments, where not-yet-generated segments hold their initial noise; global step
  ``i = d * T + j`` is step j of segment d (T = steps per segment), so ``num_steps = S * T``
  and the NFE of every step is counted by the Stepper as for every other family. Any
  method runs on it unchanged (best-of-N samples whole videos); Tree-of-Frames
  (:class:`~evosearch.search.tree_of_frames.TreeOfFrames`) branches at segment starts with
  the ``"segment"`` lineage event (segments d.. redrawn from the event's seed), so a
  winning leaf is replayed like any other candidate.

Limits: methods that perturb intermediate states (EvoSearch's sigma mutation, path
search's re-noising) perturb the whole state, finished segments included; best-of-N and
Tree-of-Frames never do. ``preview`` decodes the current segment's x0 estimate together
with the finished segments and the still-noisy future ones.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import torch

from ..core.records import Request
from ..core.stepper import Stepper
from ..core.schedule import NoiseSchedule
from ..core.validation import check_int
from .segment_model import SegmentModel
from .video import VideoStepper
from .wan_i2v import WanI2VSegments

__all__ = ["SegmentModel", "SegmentSchedule", "SegmentStepper", "WanI2VSegments", "segment_model_for"]


class SegmentSchedule(NoiseSchedule):
    """The chain of S per-segment schedules as one schedule of S * T steps.

    ``a``/``s``/``timesteps`` at global index ``d * T + j`` are segment d's at its index j (the
    segment being denoised), the last entry segment S-1's final one. :meth:`noise_std` and
    :meth:`step` use the local index and change only segment d of a (N, S, ...) state."""

    def __init__(self, schedules: Sequence[NoiseSchedule]):
        schedules = list(schedules)
        T = schedules[0].num_steps
        if any(s.num_steps != T for s in schedules):
            raise ValueError("schedules: every segment needs the same number of steps")
        a = torch.cat([s.a[:T] for s in schedules] + [schedules[-1].a[T:]])
        s_ = torch.cat([s.s[:T] for s in schedules] + [schedules[-1].s[T:]])
        timesteps = torch.cat([s.timesteps for s in schedules])
        # each step moves to its own segment's next level, not to the next segment's pure noise
        a_to = torch.cat([torch.as_tensor(s._a_to, dtype=a.dtype) for s in schedules])
        s_to = torch.cat([torch.as_tensor(s._s_to, dtype=a.dtype) for s in schedules])
        super().__init__(a=a, s=s_, timesteps=timesteps, eta=schedules[0].eta, a_to=a_to, s_to=s_to)
        object.__setattr__(self, "segments", schedules)
        object.__setattr__(self, "steps_per_segment", T)

    def locate(self, i: int) -> tuple[int, int]:
        """(segment d, local step j) of global step i."""
        return divmod(int(i), self.steps_per_segment)

    def noise_std(self, i: int) -> float:
        d, j = self.locate(i)
        return self.segments[d].noise_std(j)

    def step(self, x0_hat: torch.Tensor, eps_hat: torch.Tensor, i: int, noise: torch.Tensor | None) -> torch.Tensor:
        """x0_hat/eps_hat are whole states (N, S, ...) whose segment d holds the predictions; the other
        segments of x0_hat are carried over unchanged."""
        d, j = self.locate(i)
        out = x0_hat.clone()
        out[:, d] = self.segments[d].step(x0_hat[:, d], eps_hat[:, d], j, None if noise is None else noise[:, d])
        return out


class SegmentStepper(VideoStepper, Stepper):
    """A Stepper over a :class:`SegmentModel` (see the module docstring). ``prepare`` takes
    ``num_inference_steps`` per segment and ``num_segments`` (default: the model's)."""

    family = "segments"
    base_capabilities = frozenset({"gaussian", "predict", "segments"})
    event_kinds = ("segment",)
    suggested_methods = "segment models run TreeOfFrames (tree-of-frames), BestOfN or EvoSearch"

    def __init__(self, model: SegmentModel, max_batch_size: int = 16, eta: float = 1.0):
        super().__init__(model.pipe, max_batch_size=max_batch_size, eta=eta)
        self.model = model
        self._context_cache: dict[bytes, object] = {}

    @property
    def denoiser(self):
        return self.model.denoiser

    @property
    def default_num_inference_steps(self) -> int:
        return int(self.model.default_num_inference_steps)

    @property
    def default_guidance_scale(self) -> float:
        return float(self.model.default_guidance_scale)

    def prepare(self, prompt, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                negative_prompt: str | None = None, height: int | None = None, width: int | None = None,
                **extra) -> Request:
        """Encode the prompt; ``num_inference_steps`` is per segment, ``num_segments`` the video's length."""
        extra["num_segments"] = check_int("num_segments", extra.get("num_segments", self.model.default_num_segments),
                                          lo=1)
        request = super().prepare(prompt, num_inference_steps, guidance_scale, negative_prompt, height, width, **extra)
        self.schedule = SegmentSchedule(self.model.schedules)  # after the base class checked one segment's length
        return request

    def _prepare(self, request: Request) -> None:
        self._context_cache = {}
        self.model.prepare(request, self.eta)
        if len(self.model.schedules) != request.extra["num_segments"]:
            raise RuntimeError(f"{type(self.model).__name__} built {len(self.model.schedules)} schedules for "
                               f"{request.extra['num_segments']} segments")
        self.schedule = self.model.schedules[0]
        self.state_shape = (request.extra["num_segments"], *self.model.segment_shape)

    # -- the chain ---------------------------------------------------------------
    @property
    def num_segments(self) -> int:
        self._require_request()
        return self.state_shape[0]

    @property
    def steps_per_segment(self) -> int:
        self._require_request()
        return self.schedule.steps_per_segment

    def _contexts(self, prefix: torch.Tensor) -> list:
        """Per-row context for the next segment, cached by the content of the segments it depends on."""
        d = prefix.shape[1]
        keep = prefix[:, max(0, d - self.model.context_segments):]
        keys = [hashlib.sha1(np.ascontiguousarray(row.detach().float().cpu().numpy()).tobytes()
                             + d.to_bytes(4, "little")).digest() for row in keep]
        missing = list({keys[k]: k for k in reversed(range(len(keys))) if keys[k] not in self._context_cache}.values())
        if missing:  # one computation per distinct prefix (siblings share theirs)
            ctx = self.model.context(prefix[missing])
            if d > 0 and self.model.context_decodes:
                self.decode_calls += len(missing)
            for n, k in enumerate(missing):
                self._context_cache[keys[k]] = _row(ctx, n)
        return [self._context_cache[k] for k in keys]

    def _predict(self, x: torch.Tensor, i: int):
        d, j = self.schedule.locate(i) if isinstance(self.schedule, SegmentSchedule) else (0, i)
        ctx = _stack_rows(self._contexts(x[:, :d]))
        x0, eps = self.model.predict(x[:, d], d, j, ctx)
        x0_full = x.clone()
        x0_full[:, d] = x0.to(x.dtype)
        eps_full = torch.zeros_like(x)
        eps_full[:, d] = eps.to(x.dtype)
        return x0_full, eps_full

    def _decode(self, x0: torch.Tensor) -> torch.Tensor:
        return self.model.decode(x0)

    @torch.no_grad()
    def finish_prefix(self, states: torch.Tensor, num_segments: int) -> torch.Tensor:
        """The frames (N, F, 3, H, W) of the first ``num_segments`` segments (a partial video)."""
        self._require_request()
        return self.finish(states[:, :num_segments])

    # -- lineage events ------------------------------------------------------------
    def apply_event(self, x: torch.Tensor, event, noise: torch.Tensor) -> torch.Tensor:
        """``segment`` (step d * T): segments d.. get fresh initial noise from the event's noise."""
        if event.kind != "segment":
            raise ValueError(f"event kind {event.kind!r} is not a SegmentStepper event (allowed: segment)")
        d, j = self.schedule.locate(event.step)
        if j != 0 or not 0 <= d < self.num_segments:
            raise ValueError(f"event 'segment': step must be a segment start (a multiple of "
                             f"{self.steps_per_segment} below {self.num_steps}), got {event.step}")
        out = x.clone()
        out[:, d:] = noise[:, d:].to(out.dtype)
        return out


def _row(ctx, n: int):
    if ctx is None:
        return None
    if isinstance(ctx, dict):
        return {k: v[n:n + 1] for k, v in ctx.items()}
    return ctx[n:n + 1]


def _stack_rows(rows: list):
    if not rows or rows[0] is None:
        return None
    if isinstance(rows[0], dict):
        return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
    return torch.cat(rows)


def segment_model_for(pipe) -> SegmentModel | None:
    """The SegmentModel of ``pipe`` (the bundled moving-digits pipeline, a WanImageToVideoPipeline), or None."""
    if getattr(pipe, "stepper_family", None) == "segments" and hasattr(pipe, "segment_model"):
        return pipe.segment_model()
    try:
        from diffusers import WanImageToVideoPipeline
    except ImportError:  # pragma: no cover
        return None
    if isinstance(pipe, WanImageToVideoPipeline):
        return WanI2VSegments(pipe)
    return None
