"""The testbed's diffusers pipelines: :class:`GaussianMixtureDiffusionPipeline`,
:class:`GaussianMixtureFlowPipeline` and the factory :func:`gaussian_mixture_pipeline`
(see :mod:`evosearch.testbed`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..core.validation import check_choice
from .layout import samples_from
from .mixture import GaussianMixture
from .models import GaussianMixtureTransformer, GaussianMixtureUNet

__all__ = ["GaussianMixtureOutput", "GaussianMixtureDiffusionPipeline", "GaussianMixtureFlowPipeline",
           "gaussian_mixture_pipeline"]


@dataclass
class GaussianMixtureOutput(BaseOutput):
    """``samples`` (N, D) raw samples; ``images`` the same as states (N, 1, 1, D)."""

    samples: torch.Tensor
    images: torch.Tensor


class _MixturePipelineMixin:
    @property
    def mixture(self) -> GaussianMixture:
        return self.denoiser_model.mixture

    def samples_to_images(self, x0: torch.Tensor) -> torch.Tensor:
        """The Stepper decode hook: the raw, unclamped samples, as (N, 1, 1, D) 'images'."""
        return x0

    def _output(self, x, output_type, return_dict):
        x = x.float().cpu()
        out = GaussianMixtureOutput(samples=samples_from(x), images=x)
        if output_type == "np":
            out = GaussianMixtureOutput(samples=out.samples.numpy(), images=out.images.numpy())
        return out if return_dict else (out.samples,)


class GaussianMixtureDiffusionPipeline(_MixturePipelineMixin, DiffusionPipeline):
    """unet (:class:`GaussianMixtureUNet`) + DDIMScheduler or DDPMScheduler; the ``diffusion``
    family's DiffusionStepper drives it (as an unconditional pixel-space pipeline whose
    decode is :meth:`samples_to_images`)."""

    stepper_family = "diffusion"
    default_num_inference_steps = 25

    def __init__(self, unet: GaussianMixtureUNet, scheduler):
        super().__init__()
        _check_vp(unet, scheduler)
        self.register_modules(unet=unet, scheduler=scheduler)

    @property
    def denoiser_model(self):
        return self.unet

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, num_inference_steps: int = 25, generator=None, eta: float = 0.0,
                 output_type: str = "pt", return_dict: bool = True):
        """Plain diffusers sampling (``scheduler.step``); returns :class:`GaussianMixtureOutput`."""
        d = self.unet.config.sample_size[1]
        x = randn_tensor((batch_size, 1, 1, d), generator=generator, device=self.device, dtype=self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps)
        kwargs = {"eta": eta} if isinstance(self.scheduler, DDIMScheduler) else {}
        for t in self.progress_bar(self.scheduler.timesteps):
            out = self.unet(x, t).sample
            x = self.scheduler.step(out, t, x, generator=generator, **kwargs).prev_sample
        return self._output(x, output_type, return_dict)


class GaussianMixtureFlowPipeline(_MixturePipelineMixin, DiffusionPipeline):
    """transformer (:class:`GaussianMixtureTransformer`) + FlowMatchEulerDiscreteScheduler;
    the ``flow`` family's FlowStepper drives it (its "unconditional" kind)."""

    stepper_family = "flow"
    default_num_inference_steps = 25

    def __init__(self, transformer: GaussianMixtureTransformer, scheduler: FlowMatchEulerDiscreteScheduler):
        super().__init__()
        if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
            raise TypeError(f"scheduler: expected a FlowMatchEulerDiscreteScheduler, got {type(scheduler).__name__}")
        if scheduler.config.num_train_timesteps != transformer.config.num_train_timesteps:
            raise ValueError(f"scheduler: num_train_timesteps={scheduler.config.num_train_timesteps} but the "
                             f"transformer expects {transformer.config.num_train_timesteps}")
        self.register_modules(transformer=transformer, scheduler=scheduler)

    @property
    def denoiser_model(self):
        return self.transformer

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, num_inference_steps: int = 25, generator=None, output_type: str = "pt",
                 return_dict: bool = True):
        """Plain diffusers sampling (Euler ODE, ``scheduler.step``)."""
        d = self.transformer.config.sample_size[1]
        x = randn_tensor((batch_size, 1, 1, d), generator=generator, device=self.device, dtype=self.transformer.dtype)
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.progress_bar(self.scheduler.timesteps):
            v = self.transformer(x, t.expand(batch_size)).sample
            x = self.scheduler.step(v, t, x).prev_sample
        return self._output(x, output_type, return_dict)


def _check_vp(unet, scheduler) -> None:
    if not isinstance(scheduler, (DDIMScheduler, DDPMScheduler)):
        raise TypeError(f"scheduler: expected a DDIMScheduler or DDPMScheduler, got {type(scheduler).__name__}")
    cfg = scheduler.config
    if cfg.get("clip_sample", False) or cfg.get("thresholding", False):
        raise ValueError("scheduler: clip_sample and thresholding must be False for the exact testbed "
                         "(they clamp x0 to [-1, 1])")
    if cfg.prediction_type != unet.config.prediction_type:
        raise ValueError(f"scheduler: prediction_type={cfg.prediction_type!r} but the unet predicts "
                         f"{unet.config.prediction_type!r}")
    acp = scheduler.alphas_cumprod.double()
    if acp.shape != unet.alphas_cumprod.shape or not torch.allclose(acp, unet.alphas_cumprod, rtol=1e-6, atol=0):
        raise ValueError("scheduler: its alphas_cumprod differ from the unet's (num_train_timesteps / beta_start / "
                         "beta_end / beta_schedule must agree)")


def gaussian_mixture_pipeline(mixture: GaussianMixture, family: str = "diffusion", prediction_type: str = "epsilon",
                              scheduler: str = "ddim", dtype: torch.dtype = torch.float32, **scheduler_kwargs):
    """A ready testbed pipeline for ``mixture``.

    Args:
        family: "diffusion" (GaussianMixtureDiffusionPipeline) or "flow" (GaussianMixtureFlowPipeline).
        prediction_type: "epsilon" or "v_prediction" (diffusion family).
        scheduler: "ddim" or "ddpm" (diffusion family; the Stepper only reads its config).
        dtype: the models' dtype (the Steppers' states follow it).
        scheduler_kwargs: passed to the scheduler (e.g. ``timestep_spacing``, ``shift``).

    Diffusion defaults: DDIMScheduler(beta_schedule="linear", clip_sample=False,
    set_alpha_to_one=True, timestep_spacing="trailing") so the first step starts at
    t = 999 and the last one lands on alpha_bar = 1. Flow defaults:
    FlowMatchEulerDiscreteScheduler() (shift 1, sigmas 1 -> 0.001 -> 0).
    """
    check_choice("family", family, ("diffusion", "flow"))
    if family == "diffusion":
        kwargs = {"beta_schedule": "linear", "clip_sample": False, "prediction_type": prediction_type,
                  "timestep_spacing": "trailing", **scheduler_kwargs}
        if check_choice("scheduler", scheduler, ("ddim", "ddpm")) == "ddim":
            sched = DDIMScheduler(set_alpha_to_one=True, **kwargs)
        else:
            sched = DDPMScheduler(**kwargs)
        unet = GaussianMixtureUNet.from_mixture(mixture, sched)
        pipe = GaussianMixtureDiffusionPipeline(unet=unet if dtype == torch.float32 else unet.to(dtype),
                                                scheduler=sched)
    else:
        sched = FlowMatchEulerDiscreteScheduler(**scheduler_kwargs)
        transformer = GaussianMixtureTransformer.from_mixture(mixture, sched)
        pipe = GaussianMixtureFlowPipeline(transformer=transformer if dtype == torch.float32 else transformer.to(dtype),
                                           scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    return pipe
