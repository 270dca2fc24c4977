"""The ``video`` family: text-to-video pipelines (Wan, CogVideoX, LTX-Video, HunyuanVideo).

The steps are the same as for images, on each pipeline's own latent layout:

===================  ============================  ===================================  =====================
pipeline             state (one sample)            schedule                             Stepper
===================  ============================  ===================================  =====================
WanPipeline          (C, F_lat, h, w)              flow (pipeline's sigmas / shift)     :class:`WanStepper`
HunyuanVideoPipeline (C, F_lat, h, w)              flow, sigmas linspace(1, 0, N+1)     :class:`HunyuanVideoStepper`
LTXPipeline          (F_lat * h * w, C) packed     flow, dynamic shift on video tokens  :class:`LTXStepper`
CogVideoXPipeline    (F_lat, C, h, w)              VP on the scheduler's alphas_cumprod :class:`CogVideoXStepper`
===================  ============================  ===================================  =====================

Flow models subclass :class:`~evosearch.pipelines.flow.FlowStepper` and take their sigmas
from :func:`~evosearch.pipelines.flow.flow_schedule`, so x0/eps and the generalised DDIM
step are the ones of every other flow model. CogVideoX subclasses
:class:`~evosearch.pipelines.diffusion.DiffusionStepper`: its schedulers
(CogVideoXDDIMScheduler, CogVideoXDPMScheduler) carry an SNR-shifted, zero-terminal-SNR
``alphas_cumprod`` and v-prediction; CogVideoXDDIMScheduler's step is deterministic
whatever ``eta`` says, so the generalised DDIM step on those ``alphas_cumprod`` is the
stochastic sampler (eta = 0 reproduces the pipeline's own DDIM loop; a test checks it).

Videos
------
``finish(states)`` returns a float32 tensor **(N, F, 3, H, W) in [0, 1] on the CPU** — the
image layout with a frame axis after the batch axis, which is what the pipelines'
``video_processor.postprocess_video(..., output_type="pt")`` gives. Rewards receive that
tensor (image rewards score every frame and average, see
:class:`~evosearch.rewards.base.Reward`), search methods never look inside it, and
:class:`~evosearch.SearchPipeline` returns ``out.videos`` (one list of PIL frames per
sample) with ``out.images`` holding each video's first frame.

Sizes: ``height``, ``width`` and ``num_frames`` (pass ``num_frames=`` to ``prepare`` or to
``SearchPipeline.__call__``) default to the pipeline's hints ``pipe.default_height``,
``pipe.default_width``, ``pipe.default_num_frames`` when present (the tiny test pipelines
set them), else to the pipeline's own ``__call__`` defaults. ``max_sequence_length`` may be
passed the same way.

Not reproduced (documented limits): CogVideoX's ``use_dynamic_cfg`` and DPM
multistep solver (the VP step on the same ``alphas_cumprod`` replaces it), LTX's
``guidance_rescale``, HunyuanVideo's ``true_cfg_scale`` with a negative prompt
(the embedded ``guidance_scale`` is used, as in the pipeline's default), Wan 2.2's separate
``guidance_scale_2`` (the low-noise expert uses ``guidance_scale`` too).
"""

from __future__ import annotations

import inspect
import zlib

import numpy as np
import torch

from ..core.records import Request
from ..core.stepper import Stepper
from ..core.validation import ParameterError, check_int
from .diffusion import DiffusionStepper, vp_schedule
from .flow import FlowStepper, flow_schedule

__all__ = ["VideoStepper", "WanStepper", "CogVideoXStepper", "LTXStepper", "HunyuanVideoStepper", "video_stepper_for",
           "VIDEO_PIPELINES", "video_size"]

VIDEO_PIPELINES = ("WanPipeline", "CogVideoXPipeline", "LTXPipeline", "HunyuanVideoPipeline")


def _call_default(pipe, name: str, fallback=None):
    """The default of ``name`` in ``pipe.__call__`` (None when absent or None)."""
    try:
        param = inspect.signature(type(pipe).__call__).parameters.get(name)
    except (TypeError, ValueError):  # pragma: no cover - exotic callables
        param = None
    if param is None or param.default is inspect.Parameter.empty or param.default is None:
        return fallback
    return param.default


class PipelineCallDefaults:
    """Mixin: ``default_num_inference_steps`` and ``default_guidance_scale`` read from the
    defaults of ``self.pipe.__call__`` (50 and 5.0 where it has none)."""

    @property
    def default_num_inference_steps(self) -> int:
        return int(_call_default(self.pipe, "num_inference_steps", 50))

    @property
    def default_guidance_scale(self) -> float:
        return float(_call_default(self.pipe, "guidance_scale", 5.0))


class VideoStepper(PipelineCallDefaults):
    """Mixin for video Steppers: sizes with ``num_frames``, and ``finish`` returning videos
    (N, F, 3, H, W) float32 in [0, 1] on the CPU."""

    is_video = True
    #: height and width must be multiples of this (set per pipeline in ``_video_size``)
    size_multiple: int = 16

    def _video_size(self, request: Request, multiple: int, temporal: int,
                    default_size: tuple[int, int] | None = None) -> tuple[int, int, int]:
        return video_size(self.pipe, request, multiple, temporal, default_size)

    @torch.no_grad()
    def finish(self, states: torch.Tensor) -> torch.Tensor:
        """Decode final states to videos (N, F, 3, H, W) float32 in [0, 1] on the CPU."""
        self._require_request()
        out = [self._decode(states[sl].to(self.device, self.dtype)).float().cpu()
               for sl in self._chunks(states.shape[0])]
        self.decode_calls += states.shape[0]
        videos = torch.cat(out)
        if videos.ndim != 5 or videos.shape[2] not in (1, 3):
            raise RuntimeError(f"{type(self).__name__}: decoded videos have shape {tuple(videos.shape)}, "
                               "expected (N, F, 3, H, W)")
        return videos.expand(-1, -1, 3, -1, -1) if videos.shape[2] == 1 else videos

    def _postprocess(self, video: torch.Tensor) -> torch.Tensor:
        """VAE output (n, 3, F, H, W) in [-1, 1] -> (n, F, 3, H, W) in [0, 1], by the pipeline's video processor."""
        return self.pipe.video_processor.postprocess_video(video, output_type="pt")


def video_size(pipe, request: Request, multiple: int, temporal: int,
               default_size: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """(height, width, num_frames) of a request, validated and recorded on it: the request's values, else
    the pipeline's hints (``default_height``/``default_width``/``default_num_frames``), else its
    ``__call__`` defaults (or ``default_size``)."""
    dh, dw = default_size or (_call_default(pipe, "height", 480), _call_default(pipe, "width", 832))
    height = request.height or getattr(pipe, "default_height", None) or dh
    width = request.width or getattr(pipe, "default_width", None) or dw
    if height % multiple or width % multiple:
        raise ValueError(f"height/width: must be multiples of {multiple}, got {height}x{width}")
    frames = request.extra.get("num_frames") or getattr(pipe, "default_num_frames", None) or _call_default(
        pipe, "num_frames", 49)
    rule = f"1 + a multiple of the VAE's temporal factor {temporal} (e.g. {temporal + 1}, {2 * temporal + 1})"
    frames = check_int("num_frames", frames, lo=1, hint=f" and {rule}")
    if (frames - 1) % temporal:
        raise ParameterError(f"num_frames: must be {rule}, got {frames!r}")
    request.height, request.width = int(height), int(width)
    request.extra["num_frames"] = int(frames)
    return int(height), int(width), int(frames)


class _VideoFlowStepper(VideoStepper, FlowStepper):
    """Flow-matching video transformers: FlowStepper's x0/eps and step on 5-D or packed latents."""

    family = "video"

    @property
    def denoiser(self):
        return self.pipe.transformer if self.pipe.transformer is not None else self.pipe.transformer_2

    @staticmethod
    def kind_of(pipe) -> str:
        return type(pipe).__name__

    def _max_sequence_length(self, request: Request, default: int) -> int:
        return int(request.extra.get("max_sequence_length", default))


class WanStepper(_VideoFlowStepper):
    """WanPipeline (Wan 2.1 / 2.2 text-to-video). States (C, F_lat, h, w) as the pipeline's latents.

    Wan 2.2's two experts (``transformer`` for t >= boundary, ``transformer_2`` below) and
    ``expand_timesteps`` (per-token timesteps) are followed as in the pipeline."""

    def _prepare(self, request: Request) -> None:
        pipe, device = self.pipe, self.device
        st, ss = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
        patch = self.denoiser.config.patch_size
        height, width, frames = self._video_size(request, max(16, ss * patch[1]), st)
        lat_f, h, w = (frames - 1) // st + 1, height // ss, width // ss
        self.state_shape = (self.denoiser.config.in_channels, lat_f, h, w)
        cfg = request.guidance_scale > 1.0
        pe, npe = pipe.encode_prompt(prompt=request.prompt, negative_prompt=request.negative_prompt,
                                     do_classifier_free_guidance=cfg, num_videos_per_prompt=1,
                                     max_sequence_length=self._max_sequence_length(request, 512), device=device)
        dtype = self.dtype
        self.cond = {"encoder_hidden_states": pe.to(dtype)}
        self.uncond = {"encoder_hidden_states": npe.to(dtype)} if cfg else None
        self.static = {}
        self.time_scale = 1.0
        self.tokens = lat_f * (h // patch[1]) * (w // patch[2])
        self.schedule = flow_schedule(pipe, request.num_inference_steps, self.eta, self.tokens, device)
        ratio = pipe.config.get("boundary_ratio", None)
        self.boundary = None if ratio is None else ratio * pipe.scheduler.config.num_train_timesteps

    def _transformer(self, x, t, cond):
        pipe = self.pipe
        model = pipe.transformer
        if pipe.transformer is None or (self.boundary is not None and float(t) < self.boundary):
            model = pipe.transformer_2 if pipe.transformer_2 is not None else pipe.transformer
        if pipe.config.get("expand_timesteps", False):
            timestep = t.to(x.dtype) * torch.ones(x.shape[0], self.tokens, device=x.device, dtype=x.dtype)
        else:
            timestep = t.expand(x.shape[0]).to(x.dtype)
        return model(hidden_states=x, timestep=timestep, **cond, return_dict=False)[0]

    def _decode(self, x0: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(x0.device, vae.dtype)
        std = torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(x0.device, vae.dtype)
        video = vae.decode(x0.to(vae.dtype) * std + mean, return_dict=False)[0]
        return self._postprocess(video)


class HunyuanVideoStepper(_VideoFlowStepper):
    """HunyuanVideoPipeline. States (C, F_lat, h, w); guidance-distilled: ``guidance_scale`` feeds the
    guidance embedding (x1000, as the pipeline), no CFG pass. Sigmas ``linspace(1, 0, N + 1)[:-1]``
    through the scheduler's shift, as the pipeline. ``prompt_template`` may be passed to ``prepare``."""

    def _prepare(self, request: Request) -> None:
        pipe, device = self.pipe, self.device
        st, ss = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
        cfg = self.denoiser.config
        height, width, frames = self._video_size(request, max(16, ss * cfg.patch_size), st)
        lat_f, h, w = (frames - 1) // st + 1, height // ss, width // ss
        self.state_shape = (cfg.in_channels, lat_f, h, w)
        kwargs = {}
        if "prompt_template" in request.extra:
            kwargs["prompt_template"] = request.extra["prompt_template"]
        pe, ppe, mask = pipe.encode_prompt(prompt=request.prompt, prompt_2=None, num_videos_per_prompt=1,
                                           device=device, max_sequence_length=self._max_sequence_length(request, 256),
                                           **kwargs)
        dtype = self.dtype
        self.cond = {"encoder_hidden_states": pe.to(dtype), "encoder_attention_mask": mask.to(dtype),
                     "pooled_projections": ppe.to(dtype),
                     "guidance": torch.tensor([request.guidance_scale * 1000.0], device=device, dtype=dtype)}
        self.uncond = None
        self.static = {}
        self.time_scale = 1.0
        n = request.num_inference_steps
        self.schedule = flow_schedule(pipe, n, self.eta, lat_f * h * w, device,
                                      sigmas=np.linspace(1.0, 0.0, n + 1)[:-1])

    def _decode(self, x0: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        video = vae.decode(x0.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return self._postprocess(video)


class LTXStepper(_VideoFlowStepper):
    """LTXPipeline. States are the pipeline's packed tokens (F_lat * h * w / patches, C * patches);
    sigmas ``linspace(1, 1/N, N)`` with the dynamic shift of the video sequence length, as the pipeline.
    ``frame_rate`` (default 25), ``decode_timestep`` and ``decode_noise_scale`` may be passed to
    ``prepare``; decode noise (when its scale is > 0) is drawn from a generator seeded by each row's
    content, so decoding stays deterministic and independent of the batch."""

    def _prepare(self, request: Request) -> None:
        pipe, device = self.pipe, self.device
        st, ss = pipe.vae_temporal_compression_ratio, pipe.vae_spatial_compression_ratio
        p, pt = pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size
        height, width, frames = self._video_size(request, max(32, ss * p), st)
        self.latent_size = ((frames - 1) // st + 1, height // ss, width // ss)
        lat_f, h, w = self.latent_size
        channels = self.denoiser.config.in_channels
        self.state_shape = ((lat_f // pt) * (h // p) * (w // p), channels * p * p * pt)
        cfg = request.guidance_scale > 1.0
        pe, pmask, npe, nmask = pipe.encode_prompt(prompt=request.prompt, negative_prompt=request.negative_prompt,
                                                   do_classifier_free_guidance=cfg, num_videos_per_prompt=1,
                                                   max_sequence_length=self._max_sequence_length(request, 128),
                                                   device=device)
        dtype = self.dtype
        self.cond = {"encoder_hidden_states": pe.to(dtype), "encoder_attention_mask": pmask}
        self.uncond = {"encoder_hidden_states": npe.to(dtype), "encoder_attention_mask": nmask} if cfg else None
        frame_rate = request.extra.get("frame_rate", _call_default(pipe, "frame_rate", 25))
        self.static = {"num_frames": lat_f, "height": h, "width": w,
                       "rope_interpolation_scale": (st / frame_rate, ss, ss)}
        self.time_scale = 1.0
        self.schedule = flow_schedule(pipe, request.num_inference_steps, self.eta, lat_f * h * w, device,
                                      flux_sigmas=True)

    def _transformer(self, x, t, cond):
        return super()._transformer(x, t, cond).float().to(x.dtype)

    def _decode(self, x0: torch.Tensor) -> torch.Tensor:
        pipe, vae = self.pipe, self.pipe.vae
        lat_f, h, w = self.latent_size
        latents = pipe._unpack_latents(x0, lat_f, h, w, pipe.transformer_spatial_patch_size,
                                       pipe.transformer_temporal_patch_size)
        latents = pipe._denormalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        latents = latents.to(vae.dtype)
        timestep = None
        if vae.config.timestep_conditioning:
            t_dec = float(self.request.extra.get("decode_timestep", 0.0))
            scale = self.request.extra.get("decode_noise_scale", None)
            scale = t_dec if scale is None else float(scale)
            if scale > 0:
                noise = torch.stack([torch.randn(row.shape, generator=torch.Generator().manual_seed(
                    zlib.crc32(row.float().cpu().numpy().tobytes()))) for row in latents]).to(latents)
                latents = (1 - scale) * latents + scale * noise
            timestep = torch.full((latents.shape[0],), t_dec, device=latents.device, dtype=latents.dtype)
        video = vae.decode(latents, timestep, return_dict=False)[0]
        return self._postprocess(video)


class CogVideoXStepper(VideoStepper, DiffusionStepper):
    """CogVideoXPipeline. States (F_lat, C, h, w): frames before channels, as the pipeline's latents.

    The VP schedule takes the pipeline scheduler's own ``alphas_cumprod`` (SNR-shifted, zero
    terminal SNR) and DDIM timesteps; x0/eps from v- (or epsilon-) prediction as in
    DiffusionStepper. CogVideoX 1.5's temporal patching pads the latent frames at the front
    (as the pipeline) and the padding is dropped before decoding."""

    family = "video"

    @property
    def denoiser(self):
        return self.pipe.transformer

    @staticmethod
    def kind_of(pipe) -> str:
        return "cogvideox"

    def _prepare(self, request: Request) -> None:
        pipe, device = self.pipe, self.device
        from diffusers import DDIMScheduler

        sched = pipe.scheduler
        known = inspect.signature(DDIMScheduler.__init__).parameters  # CogVideoX's extra keys (snr_shift_scale)
        config = {k: v for k, v in sched.config.items() if k in known}  # are applied via alphas_cumprod below
        self.schedule, ddim = vp_schedule(config, request.num_inference_steps, self.eta, device,
                                          alphas_cumprod=getattr(sched, "alphas_cumprod", None),
                                          final_alpha_cumprod=getattr(sched, "final_alpha_cumprod", None))
        self.prediction_type = ddim.config.prediction_type
        # CogVideoX's own schedulers ignore clip_sample; a plain DDIMScheduler honours it
        clip = type(sched) is DDIMScheduler and ddim.config.clip_sample
        self.clip_sample_range = ddim.config.clip_sample_range if clip else None

        cfg = self.denoiser.config
        st, ss = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
        default = (cfg.sample_height * ss, cfg.sample_width * ss)
        height, width, frames = self._video_size(request, ss * cfg.patch_size, st, default_size=default)
        lat_f = (frames - 1) // st + 1
        self.additional_frames = 0
        if cfg.patch_size_t is not None and lat_f % cfg.patch_size_t:
            self.additional_frames = cfg.patch_size_t - lat_f % cfg.patch_size_t
        self.state_shape = (lat_f + self.additional_frames, cfg.in_channels, height // ss, width // ss)
        use_cfg = request.guidance_scale > 1.0
        pe, npe = pipe.encode_prompt(request.prompt, request.negative_prompt, use_cfg, num_videos_per_prompt=1,
                                     max_sequence_length=int(request.extra.get("max_sequence_length",
                                                                               cfg.max_text_seq_length)),
                                     device=device)
        dtype = self.dtype
        self.cond = {"encoder_hidden_states": pe.to(dtype)}
        self.uncond = {"encoder_hidden_states": npe.to(dtype)} if use_cfg else None
        self.rotary = None
        if cfg.use_rotary_positional_embeddings:
            self.rotary = pipe._prepare_rotary_positional_embeddings(height, width, self.state_shape[0], device)

    def _unet(self, x: torch.Tensor, t, cond: dict) -> torch.Tensor:
        return self.pipe.transformer(hidden_states=x, timestep=t.expand(x.shape[0]), image_rotary_emb=self.rotary,
                                     **cond, return_dict=False)[0].float().to(x.dtype)

    def _decode(self, x0: torch.Tensor) -> torch.Tensor:
        video = self.pipe.decode_latents(x0[:, self.additional_frames:].to(self.pipe.vae.dtype))
        return self._postprocess(video)


def video_stepper_for(pipe, max_batch_size: int = 16, eta: float = 1.0) -> Stepper | None:
    """The video Stepper of ``pipe``, or None when ``pipe`` is not a supported video pipeline."""
    import diffusers

    table = (("WanPipeline", WanStepper), ("CogVideoXPipeline", CogVideoXStepper), ("LTXPipeline", LTXStepper),
             ("HunyuanVideoPipeline", HunyuanVideoStepper))
    for name, cls in table:
        klass = getattr(diffusers, name, None)
        if klass is not None and isinstance(pipe, klass):
            return cls(pipe, max_batch_size=max_batch_size, eta=eta)
    return None
