"""The ``flow`` family: rectified-flow transformers (SD3, FLUX).

States follow ``x_t = (1 - t) x0 + t eps`` on the pipeline's own (shifted) sigmas.
The model predicts the velocity v; ``x0_hat = x_t - t v``, ``eps_hat = x_t + (1 - t) v``,
and the step is the generalised DDIM step, which keeps the flow's marginals for any
noise level ``eta`` (unlike FlowMatchEulerDiscreteScheduler's stochastic mode, which
re-noises fully).
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.records import Request
from ..core.stepper import Stepper
from ..core.schedule import NoiseSchedule


def flow_schedule(pipe, num_inference_steps: int, eta: float, image_seq_len: int, device=None,
                  flux_sigmas: bool = False, sigmas=None) -> NoiseSchedule:
    """Sigmas (and model timesteps) exactly as the pipeline's own call would set them.

    ``flux_sigmas``: the pipeline passes ``linspace(1, 1/N, N)`` (FLUX, LTX-Video); ``sigmas``: the
    pipeline passes these sigmas (HunyuanVideo: ``linspace(1, 0, N + 1)[:-1]``)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    kwargs = {}
    if scheduler.config.get("use_dynamic_shifting", False):
        kwargs["mu"] = calculate_shift(image_seq_len, scheduler.config.get("base_image_seq_len", 256),
                                       scheduler.config.get("max_image_seq_len", 4096),
                                       scheduler.config.get("base_shift", 0.5), scheduler.config.get("max_shift", 1.15))
    if sigmas is not None:
        kwargs["sigmas"] = np.asarray(sigmas, dtype=np.float64)
    elif flux_sigmas and not scheduler.config.get("use_flow_sigmas", False):
        kwargs["sigmas"] = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
    timesteps, _ = retrieve_timesteps(scheduler, num_inference_steps, "cpu", **kwargs)
    sigmas = scheduler.sigmas.double()
    if len(sigmas) != num_inference_steps + 1:
        raise RuntimeError(f"scheduler gave {len(sigmas)} sigmas for {num_inference_steps} steps")
    return NoiseSchedule(a=1 - sigmas, s=sigmas, timesteps=timesteps.to(device), eta=eta)


class FlowStepper(Stepper):
    """Stepper for StableDiffusion3Pipeline and FluxPipeline (packed latents), and for
    unconditional flow pipelines (a ``transformer`` with a ``sample_size``/``in_channels``
    config, no text encoder: the Gaussian-mixture testbed), whose states are
    ``(in_channels, *sample_size)`` and whose decode is the pipeline's ``samples_to_images``."""

    family = "flow"

    def __init__(self, pipe, max_batch_size: int = 16, eta: float = 1.0):
        super().__init__(pipe, max_batch_size=max_batch_size, eta=eta)
        self.kind = self.kind_of(pipe)
        self.is_flux = self.kind == "flux"

    @staticmethod
    def kind_of(pipe) -> str:
        """"custom" (a pipeline with ``stepper_conditioning``/``denoiser_output``: the shapes world's
        flow variant), "flux", "sd3", or "unconditional" (no text encoder: the Gaussian-mixture testbed)."""
        from diffusers import FluxPipeline, StableDiffusion3Pipeline

        if hasattr(pipe, "stepper_conditioning"):
            return "custom"
        if isinstance(pipe, FluxPipeline):
            return "flux"
        if (not isinstance(pipe, StableDiffusion3Pipeline) and getattr(pipe, "text_encoder", None) is None
                and not hasattr(pipe, "encode_prompt")):
            return "unconditional"
        return "sd3"

    @property
    def denoiser(self):
        return self.pipe.unet if self.kind == "custom" else self.pipe.transformer

    @property
    def default_num_inference_steps(self) -> int:
        return int(getattr(self.pipe, "default_num_inference_steps", 28))

    @property
    def default_guidance_scale(self) -> float:
        if self.kind == "unconditional":
            return 1.0
        if self.kind == "custom":
            return float(getattr(self.pipe, "default_guidance_scale", 1.0))
        return 3.5 if self.is_flux else 7.0

    def _prepare(self, request: Request) -> None:
        pipe, device = self.pipe, self.device
        if self.kind in ("unconditional", "custom"):
            self._prepare_pixels(request)
            return
        scale = pipe.vae_scale_factor
        default = pipe.default_sample_size * scale
        height, width = request.height or default, request.width or default
        multiple = scale * 2 if self.is_flux else scale * pipe.transformer.config.patch_size
        if height % multiple or width % multiple:
            raise ValueError(f"height/width: must be multiples of {multiple}, got {height}x{width}")
        request.height, request.width = height, width
        h, w = height // scale, width // scale
        prompt, neg = request.prompt, request.negative_prompt
        if self.is_flux:
            channels = pipe.transformer.config.in_channels // 4
            seq_len = (h // 2) * (w // 2)
            self.state_shape = (seq_len, channels * 4)
            pe, ppe, text_ids = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=device, num_images_per_prompt=1,
                                                   max_sequence_length=request.extra.get("max_sequence_length", 512))
            self.static = {"txt_ids": text_ids,
                           "img_ids": pipe._prepare_latent_image_ids(1, h // 2, w // 2, device, pe.dtype)}
            self.cond = {"encoder_hidden_states": pe, "pooled_projections": ppe}
            if pipe.transformer.config.guidance_embeds:
                self.cond["guidance"] = torch.full([1], request.guidance_scale, device=device, dtype=torch.float32)
            self.uncond = None  # FLUX-dev is guidance-distilled: guidance_scale feeds the guidance embedding
            self.schedule = flow_schedule(pipe, request.num_inference_steps, self.eta, seq_len, device, flux_sigmas=True)
            self.time_scale = 1.0 / 1000.0
        else:
            patch = pipe.transformer.config.patch_size
            self.state_shape = (pipe.transformer.config.in_channels, h, w)
            cfg = request.guidance_scale > 1.0
            pe, npe, ppe, nppe = pipe.encode_prompt(prompt=prompt, prompt_2=None, prompt_3=None, device=device,
                                                    num_images_per_prompt=1, do_classifier_free_guidance=cfg,
                                                    negative_prompt=neg,
                                                    max_sequence_length=request.extra.get("max_sequence_length", 256))
            self.static = {}
            self.cond = {"encoder_hidden_states": pe, "pooled_projections": ppe}
            self.uncond = {"encoder_hidden_states": npe, "pooled_projections": nppe} if cfg else None
            self.schedule = flow_schedule(pipe, request.num_inference_steps, self.eta, (h // patch) * (w // patch), device)
            self.time_scale = 1.0

    def _prepare_pixels(self, request: Request) -> None:
        """Models that sample their output space directly (no VAE, no packing)."""
        cfg = self.denoiser.config
        size = cfg.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        if (request.height or size[0]) != size[0] or (request.width or size[1]) != size[1]:
            raise ValueError(f"height/width: this model draws {size[0]}x{size[1]} samples only")
        request.height, request.width = size
        self.state_shape = (cfg.in_channels, *size)
        self.static, self.cond, self.uncond = {}, {}, None
        if self.kind == "custom":
            self.cond, self.uncond = self.pipe.stepper_conditioning(request.prompt, request.negative_prompt,
                                                                    request.guidance_scale > 1.0, self.device)
        self.schedule = flow_schedule(self.pipe, request.num_inference_steps, self.eta, size[0] * size[1], self.device)
        self.time_scale = 1.0

    def _transformer(self, x, t, cond):
        timestep = (t * self.time_scale).expand(x.shape[0]).to(x.dtype)
        if self.kind == "custom":
            return self.pipe.denoiser_output(x, timestep, **cond)
        return self.pipe.transformer(hidden_states=x, timestep=timestep, **cond, **self.static, return_dict=False)[0]

    def _predict(self, x: torch.Tensor, i: int):
        t = self.schedule.timesteps[i]
        v = self._guided(lambda xx, c: self._transformer(xx, t, c), x, self.cond, self.uncond)
        sigma = float(self.schedule.s[i])
        return x - sigma * v, x + (1 - sigma) * v

    def _decode(self, x0: torch.Tensor) -> torch.Tensor:
        hook = getattr(self.pipe, "samples_to_images", None)
        if callable(hook):  # pipelines with their own decode (the Gaussian-mixture testbed: raw samples)
            return hook(x0)
        if self.kind in ("unconditional", "custom"):
            return (x0 / 2 + 0.5).clamp(0, 1)
        pipe, vae = self.pipe, self.pipe.vae
        if self.is_flux:
            x0 = pipe._unpack_latents(x0, self.request.height, self.request.width, pipe.vae_scale_factor)
        latents = x0.to(vae.dtype) / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
        image = vae.decode(latents, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pt", do_denormalize=[True] * len(image))
