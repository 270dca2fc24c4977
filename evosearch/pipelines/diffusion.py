"""The ``diffusion`` family: UNet pipelines with a VP schedule (SD 1.x/2.x, SDXL, pixel UNets).

The step is the generalised DDIM step (``schedule.py``) on the pipeline's own
``alphas_cumprod`` and DDIM timestep spacing, with epsilon-, v- or sample-prediction
as the pipeline's scheduler config says.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from ..core.records import Request
from ..core.stepper import Stepper
from ..core.schedule import NoiseSchedule


def vp_schedule(scheduler_config, num_inference_steps: int, eta: float, device=None,
                alphas_cumprod: torch.Tensor | None = None,
                final_alpha_cumprod: torch.Tensor | None = None) -> tuple[NoiseSchedule, DDIMScheduler]:
    """DDIM timesteps and VP coefficients from any diffusers scheduler config, and the DDIM
    scheduler built from it (its config carries prediction_type and clip_sample).

    ``alphas_cumprod`` / ``final_alpha_cumprod`` replace the ones DDIMScheduler derives from the
    config, for schedulers that transform them (CogVideoXDDIMScheduler's SNR shift)."""
    # every key as the pipeline has it configured: from_config would drop the keys listed in
    # _use_default_values, undoing patches such as StableDiffusionPipeline's steps_offset=1
    config = {k: v for k, v in dict(scheduler_config).items() if k != "_use_default_values"}
    ddim = DDIMScheduler.from_config(config)
    if alphas_cumprod is not None:
        ddim.alphas_cumprod = torch.as_tensor(alphas_cumprod).clone()
    if final_alpha_cumprod is not None:
        ddim.final_alpha_cumprod = torch.as_tensor(final_alpha_cumprod).clone()
    ddim.set_timesteps(num_inference_steps)
    timesteps = ddim.timesteps.clone()
    over = int(timesteps.max()) - (ddim.config.num_train_timesteps - 1)
    if over > 0:  # steps_offset pushed the first timestep past the schedule (SD at 1000 steps: 1000..1)
        timesteps = timesteps - over
        ddim.timesteps = timesteps.clone()
    acp = ddim.alphas_cumprod.double()
    final = torch.as_tensor(ddim.final_alpha_cumprod, dtype=torch.float64)
    step_ratio = ddim.config.num_train_timesteps // num_inference_steps

    def alpha_bar(t: int) -> torch.Tensor:
        return acp[t] if t >= 0 else final

    # the level the model is called at before step i, and the level DDIM's step i moves to
    # (t - 1000 // N: the next timestep, except with "trailing" spacing when N does not divide 1000)
    at = torch.stack([alpha_bar(int(t)) for t in timesteps] + [alpha_bar(int(timesteps[-1]) - step_ratio)])
    to = torch.stack([alpha_bar(int(t) - step_ratio) for t in timesteps])
    sched = NoiseSchedule(a=at.sqrt(), s=(1 - at).sqrt(), timesteps=timesteps.to(device), eta=eta,
                          a_to=to.sqrt(), s_to=(1 - to).sqrt())
    return sched, ddim


class DiffusionStepper(Stepper):
    """Stepper for UNet pipelines: StableDiffusionPipeline, StableDiffusionXLPipeline,
    class-conditional pixel pipelines (the bundled DigitsPipeline) and unconditional
    pixel pipelines (DDPMPipeline, DDIMPipeline)."""

    family = "diffusion"

    def __init__(self, pipe, max_batch_size: int = 16, eta: float = 1.0):
        super().__init__(pipe, max_batch_size=max_batch_size, eta=eta)
        self.kind = self.kind_of(pipe)

    @staticmethod
    def kind_of(pipe) -> str:
        """"custom" (a pipeline with ``stepper_conditioning``/``denoiser_output``: the shapes world),
        "sdxl", "sd", "class" (class-conditional pixel models: the digits world) or "unconditional"."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        if hasattr(pipe, "stepper_conditioning"):
            return "custom"
        if isinstance(pipe, StableDiffusionXLPipeline):
            return "sdxl"
        if isinstance(pipe, StableDiffusionPipeline):
            return "sd"
        if hasattr(pipe, "null_class_label"):
            return "class"
        return "unconditional"

    @property
    def denoiser(self):
        return self.pipe.unet

    @property
    def default_num_inference_steps(self) -> int:
        return int(getattr(self.pipe, "default_num_inference_steps", 50))

    @property
    def default_guidance_scale(self) -> float:
        if self.kind == "unconditional":
            return 1.0
        return float(getattr(self.pipe, "default_guidance_scale", 7.5))

    # -- request -----------------------------------------------------------------
    def _prepare(self, request: Request) -> None:
        pipe, device = self.pipe, self.device
        self.schedule, ddim = vp_schedule(pipe.scheduler.config, request.num_inference_steps, self.eta, device)
        self.prediction_type = ddim.config.prediction_type
        self.clip_sample_range = ddim.config.clip_sample_range if ddim.config.clip_sample else None
        unet_cfg = pipe.unet.config
        kind = self.kind
        if kind in ("sd", "sdxl"):
            scale = pipe.vae_scale_factor
            height = request.height or unet_cfg.sample_size * scale
            width = request.width or unet_cfg.sample_size * scale
            if height % scale or width % scale:
                raise ValueError(f"height/width: must be multiples of {scale}, got {height}x{width}")
            request.height, request.width = height, width
            self.state_shape = (unet_cfg.in_channels, height // scale, width // scale)
        else:
            size = unet_cfg.sample_size
            size = (size, size) if isinstance(size, int) else tuple(size)
            if (request.height or size[0]) != size[0] or (request.width or size[1]) != size[1]:
                raise ValueError(f"height/width: this pixel-space model draws {size[0]}x{size[1]} images only")
            request.height, request.width = size
            self.state_shape = (unet_cfg.in_channels, *size)

        cfg = request.guidance_scale > 1.0
        prompt, neg = request.prompt, request.negative_prompt
        if kind == "sd":
            pe, npe = pipe.encode_prompt(prompt, device, 1, cfg, negative_prompt=neg)
            self.cond = {"encoder_hidden_states": pe}
            self.uncond = {"encoder_hidden_states": npe} if cfg else None
        elif kind == "sdxl":
            pe, npe, ppe, nppe = pipe.encode_prompt(prompt=prompt, device=device, num_images_per_prompt=1,
                                                    do_classifier_free_guidance=cfg, negative_prompt=neg)
            proj_dim = (int(ppe.shape[-1]) if pipe.text_encoder_2 is None
                        else pipe.text_encoder_2.config.projection_dim)
            size = (request.height, request.width)
            time_ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=pe.dtype,
                                              text_encoder_projection_dim=proj_dim).to(device)
            self.cond = {"encoder_hidden_states": pe, "text_embeds": ppe, "time_ids": time_ids}
            self.uncond = ({"encoder_hidden_states": npe, "text_embeds": nppe, "time_ids": time_ids}
                           if cfg else None)
        elif kind == "custom":
            self.cond, self.uncond = pipe.stepper_conditioning(prompt, neg, cfg, device)
        elif kind == "class":
            label = pipe.encode_prompt(prompt, device=device).reshape(1)
            self.cond = {"class_labels": label}
            self.uncond = {"class_labels": torch.full_like(label, pipe.null_class_label)} if cfg else None
        else:
            self.cond, self.uncond = {}, None

    def _unet(self, x: torch.Tensor, t, cond: dict) -> torch.Tensor:
        if self.kind == "custom":  # pipelines that say how their denoiser takes its conditioning
            return self.pipe.denoiser_output(x, t.expand(x.shape[0]), **cond)
        kwargs = dict(cond)
        if "text_embeds" in kwargs:
            kwargs["added_cond_kwargs"] = {"text_embeds": kwargs.pop("text_embeds"), "time_ids": kwargs.pop("time_ids")}
        return self.pipe.unet(x, t, **kwargs, return_dict=False)[0]

    def _predict(self, x: torch.Tensor, i: int):
        t = self.schedule.timesteps[i]
        out = self._guided(lambda xx, c: self._unet(xx, t, c), x, self.cond, self.uncond)
        if out.shape[1] != x.shape[1]:  # learned-variance UNets output (eps, var)
            out = out[:, : x.shape[1]]
        a, s = float(self.schedule.a[i]), float(self.schedule.s[i])
        if self.prediction_type == "epsilon":
            eps = out
            x0 = (x - s * eps) / a
        elif self.prediction_type == "v_prediction":
            x0 = a * x - s * out
            eps = s * x + a * out
        elif self.prediction_type == "sample":
            x0 = out
            eps = (x - a * x0) / s
        else:
            raise ValueError(f"prediction_type: {self.prediction_type!r} is not supported "
                             "(allowed: epsilon, v_prediction, sample)")
        if self.clip_sample_range is not None:  # as DDIMScheduler(clip_sample=True): clip x0, re-derive eps
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
            eps = (x - a * x0) / s
        return x0, eps

    def _decode(self, x0: torch.Tensor) -> torch.Tensor:
        hook = getattr(self.pipe, "samples_to_images", None)
        if callable(hook):  # pipelines with their own decode (the Gaussian-mixture testbed: raw samples)
            return hook(x0)
        if self.kind in ("sd", "sdxl"):
            vae = self.pipe.vae
            image = vae.decode(x0.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
            return self.pipe.image_processor.postprocess(image, output_type="pt", do_denormalize=[True] * len(image))
        return (x0 / 2 + 0.5).clamp(0, 1)
