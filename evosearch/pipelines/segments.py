"""Segment continuation: a video made segment by segment, each conditioned on the frames before it.

Two layers:

* :class:`SegmentModel` — what a model must provide to continue a video: per request
  (``prepare``) the per-segment noise schedule and latent shape, the conditioning of the
  next segment from the finished ones (``context``), one denoising prediction of one
  segment (``predict``) and the decoding of segments into frames (``decode``).
  Implementations: :class:`WanI2VSegments` on diffusers' ``WanImageToVideoPipeline``
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
from .video import VideoStepper

__all__ = ["SegmentModel", "SegmentSchedule", "SegmentStepper", "WanI2VSegments", "segment_model_for"]


class SegmentModel:
    """The segment-continuation interface (subclass it, or provide the same attributes).

    After :meth:`prepare`:
      - ``schedules``: one :class:`NoiseSchedule` per segment (same length T), usually the same one
      - ``segment_shape``: the latent shape of one segment
      - ``num_segments``: S
    and
      - :meth:`context` ``(prefix)`` — conditioning of segment d from the finished segments
        ``prefix`` (n, d, *segment_shape); ``d == 0`` for the first segment. Returns anything the
        model's :meth:`predict` understands with n rows (a dict of tensors), or None.
      - :meth:`predict` ``(x, d, j, context)`` — (x0_hat, eps_hat) of segment d's latents x
        (n, *segment_shape) at its step j. One network pass per row (with CFG inside).
      - :meth:`decode` ``(segments)`` — frames (n, F, C, H, W) in [0, 1] of the finished segments
        (n, d, *segment_shape), joined into one clip (segments that repeat their conditioning
        frame drop it).
    ``pipe`` (the diffusers pipeline, for the device), ``denoiser`` (its network) and the
    defaults ``default_num_inference_steps`` / ``default_guidance_scale`` / ``default_num_segments``
    complete it.
    """

    pipe = None
    schedules: list[NoiseSchedule]
    segment_shape: tuple[int, ...]
    num_segments: int
    default_num_inference_steps: int = 50
    default_guidance_scale: float = 5.0
    default_num_segments: int = 4
    #: the context depends on the last this-many finished segments only (for the cache)
    context_segments: int = 1
    #: computing a context decodes the previous segment (counted in the Stepper's decode_calls)
    context_decodes: bool = False

    @property
    def denoiser(self) -> torch.nn.Module:
        raise NotImplementedError

    def prepare(self, request: Request, eta: float) -> None:
        raise NotImplementedError

    def context(self, prefix: torch.Tensor):
        raise NotImplementedError

    def predict(self, x: torch.Tensor, d: int, j: int, context) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def decode(self, segments: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


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
        super().__init__(a=a, s=s_, timesteps=timesteps, eta=schedules[0].eta)
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
        segments = extra.get("num_segments", self.model.default_num_segments)
        if not isinstance(segments, (int, np.integer)) or isinstance(segments, bool) or segments < 1:
            raise ValueError(f"num_segments: must be a positive integer, got {segments!r}")
        extra["num_segments"] = int(segments)
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


# ---------------------------------------------------------------------------- Wan image-to-video


class WanI2VSegments(SegmentModel):
    """Segments from diffusers' ``WanImageToVideoPipeline``: segment d >= 1 is the pipeline's
    image-to-video generation from the last decoded frame of segment d - 1 (its VAE-encoded
    first-frame condition with the frame mask, and CLIP image embeddings when the pipeline has an
    image encoder), exactly as the pipeline builds them from an image. The first segment comes from
    ``first`` (a ``WanPipeline``: text-to-video, sharing the latent space) or, without it, from an
    ``image=`` given to ``prepare`` (image-to-video). Every segment has ``num_frames`` frames; a
    continuation repeats its conditioning frame first, which :meth:`decode` drops when joining.

    Sizes as for :class:`~evosearch.pipelines.video.WanStepper` (``num_frames`` per segment).
    """

    context_segments = 1
    context_decodes = True

    def __init__(self, pipe, first=None):
        from diffusers import WanImageToVideoPipeline, WanPipeline

        if not isinstance(pipe, WanImageToVideoPipeline):
            raise TypeError(f"pipe: expected a WanImageToVideoPipeline, got {type(pipe).__name__}")
        if first is not None and not isinstance(first, WanPipeline):
            raise TypeError(f"first: expected a WanPipeline (text-to-video first segment) or None, "
                            f"got {type(first).__name__}")
        self.pipe = pipe
        self.first = first
        self._first_stepper = None

    @property
    def denoiser(self):
        return self.pipe.transformer

    @property
    def default_num_inference_steps(self) -> int:
        from .video import _call_default

        return int(_call_default(self.pipe, "num_inference_steps", 50))

    @property
    def default_guidance_scale(self) -> float:
        from .video import _call_default

        return float(_call_default(self.pipe, "guidance_scale", 5.0))

    def prepare(self, request: Request, eta: float) -> None:
        from .flow import flow_schedule
        from .video import WanStepper, video_size

        pipe, device = self.pipe, self.pipe.device
        S = request.extra["num_segments"]
        st, ss = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
        patch = pipe.transformer.config.patch_size
        height, width, frames = video_size(pipe, request, max(16, ss * patch[1]), st)
        self.size = (height, width, frames)
        lat_f, h, w = (frames - 1) // st + 1, height // ss, width // ss
        self.segment_shape = (pipe.vae.config.z_dim, lat_f, h, w)
        self.num_segments = S
        self.cfg = request.guidance_scale > 1.0
        self.guidance = request.guidance_scale
        dtype = pipe.transformer.dtype
        pe, npe = pipe.encode_prompt(prompt=request.prompt, negative_prompt=request.negative_prompt,
                                     do_classifier_free_guidance=self.cfg, num_videos_per_prompt=1,
                                     max_sequence_length=int(request.extra.get("max_sequence_length", 512)),
                                     device=device)
        self.pe, self.npe = pe.to(dtype), None if npe is None else npe.to(dtype)
        schedule = flow_schedule(pipe, request.num_inference_steps, eta, lat_f * (h // patch[1]) * (w // patch[2]),
                                 device)
        self.schedules = [schedule] * S
        self.image = request.extra.get("image")
        if self.first is not None:
            self._first_stepper = WanStepper(self.first, eta=eta)
            self._first_stepper.prepare(request.prompt, request.num_inference_steps, request.guidance_scale,
                                        request.negative_prompt, height, width, num_frames=frames,
                                        **{k: v for k, v in request.extra.items()
                                           if k in ("max_sequence_length",)})
            if self._first_stepper.state_shape != self.segment_shape:
                raise ValueError(f"first: its latents {self._first_stepper.state_shape} differ from the "
                                 f"image-to-video pipeline's {self.segment_shape}")
            self.schedules = [self._first_stepper.schedule] + [schedule] * (S - 1)
        elif self.image is None:
            raise ValueError("image: WanI2VSegments without a first (text-to-video) pipeline needs image= "
                             "(the first segment's conditioning image)")

    # -- conditioning ----------------------------------------------------------------
    def _latent_stats(self, device, dtype):
        vae = self.pipe.vae
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(device, dtype)
        std = torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(device, dtype)
        return mean, std

    def _decode_segment(self, latents: torch.Tensor) -> torch.Tensor:
        """(n, C, F_lat, h, w) -> (n, F, 3, H, W) in [0, 1]."""
        vae = self.pipe.vae
        mean, std = self._latent_stats(latents.device, vae.dtype)
        video = vae.decode(latents.to(vae.dtype) * std + mean, return_dict=False)[0]
        return self.pipe.video_processor.postprocess_video(video, output_type="pt").float()

    def _condition(self, images: torch.Tensor) -> dict:
        """Images (n, 3, H, W) in [0, 1] -> the pipeline's image-to-video conditioning for each row."""
        pipe, vae = self.pipe, self.pipe.vae
        height, width, frames = self.size
        device = pipe.device
        n = images.shape[0]
        image = (images * 2 - 1).to(device=device, dtype=torch.float32)[:, :, None]
        video = torch.cat([image, image.new_zeros(n, 3, frames - 1, height, width)], dim=2).to(vae.dtype)
        from diffusers.pipelines.wan.pipeline_wan_i2v import retrieve_latents

        latent = retrieve_latents(vae.encode(video), sample_mode="argmax").float()
        mean, std = self._latent_stats(device, torch.float32)
        latent = (latent - mean) / std
        _, _, lat_f, h, w = latent.shape
        st = pipe.vae_scale_factor_temporal
        mask = torch.ones(n, 1, frames, h, w, device=device)
        mask[:, :, 1:] = 0
        first = torch.repeat_interleave(mask[:, :, 0:1], dim=2, repeats=st)
        mask = torch.cat([first, mask[:, :, 1:]], dim=2).view(n, -1, st, h, w).transpose(1, 2)
        ctx = {"condition": torch.cat([mask, latent], dim=1).to(pipe.transformer.dtype)}
        if pipe.transformer.config.image_dim is not None:
            from PIL import Image

            pil = [Image.fromarray((im.permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8))
                   for im in images]
            ctx["image_embeds"] = pipe.encode_image(pil, device).to(pipe.transformer.dtype)
        return ctx

    def context(self, prefix: torch.Tensor):
        n, d = prefix.shape[:2]
        if d == 0:
            if self.first is not None:
                return None
            image = self.pipe.video_processor.preprocess(self.image, height=self.size[0], width=self.size[1])
            return _expand_rows(self._condition((image / 2 + 0.5).clamp(0, 1)), n)
        last = self._decode_segment(prefix[:, -1])[:, -1]  # the previous segment's last frame
        return self._condition(last)

    def predict(self, x: torch.Tensor, d: int, j: int, context):
        if context is None:  # the text-to-video first segment
            return self._first_stepper._predict(x, j)
        pipe = self.pipe
        sched = self.schedules[d]
        t = sched.timesteps[j]
        n = x.shape[0]
        dtype = pipe.transformer.dtype
        inp = torch.cat([x, context["condition"].to(x.device)], dim=1).to(dtype)
        img = context.get("image_embeds")
        if self.cfg:
            inp = torch.cat([inp, inp])
            text = torch.cat([self.npe.expand(n, -1, -1), self.pe.expand(n, -1, -1)])
            img = None if img is None else torch.cat([img, img])
        else:
            text = self.pe.expand(n, -1, -1)
        out = pipe.transformer(hidden_states=inp, timestep=t.expand(inp.shape[0]).to(dtype), encoder_hidden_states=text,
                               encoder_hidden_states_image=img, return_dict=False)[0].to(x.dtype)
        if self.cfg:
            u, c = out.chunk(2)
            out = u + self.guidance * (c - u)
        sigma = float(sched.s[j])
        return x - sigma * out, x + (1 - sigma) * out

    def decode(self, segments: torch.Tensor) -> torch.Tensor:
        clips = []
        for d in range(segments.shape[1]):
            frames = self._decode_segment(segments[:, d])
            clips.append(frames[:, 1:] if d > 0 else frames)  # a continuation starts with its condition frame
        return torch.cat(clips, dim=1)


def _expand_rows(ctx: dict, n: int) -> dict:
    return {k: v.expand(n, *v.shape[1:]) if v.shape[0] == 1 else v for k, v in ctx.items()}


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
