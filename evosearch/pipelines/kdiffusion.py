"""The ``kdiffusion`` family: any denoiser in the k-diffusion convention, ``denoised = model(x, sigma)``.

This is how ComfyUI (and k-diffusion, A1111, Forge) drive every model: the sampler sees a
callable that maps a noisy latent ``x`` and its noise level ``sigma`` (one per row) to the
denoised estimate x0, with classifier-free guidance, ControlNets, LoRA hooks, ... already
applied inside. Two parameterisations of ``x`` cover ComfyUI's model samplings:

* ``"ve"`` (variance exploding; ComfyUI's EPS, V_PREDICTION, EDM, X0 samplings, i.e. SD 1.x/2.x,
  SDXL, ...): ``x = x0 + sigma * eps``.
* ``"flow"`` (ComfyUI's CONST sampling: SD3, FLUX, Wan, ...): ``x = (1 - sigma) x0 + sigma * eps``.

Coefficient convention. evosearch's one stochastic step (:mod:`.schedule`) works on states
``x_t = a_t x0 + s_t eps``. For ``"flow"`` the k-diffusion input already is such a state
(a = 1 - sigma, s = sigma). For ``"ve"`` the Stepper keeps its states in the *variance-
preserving* scaling, ``x_vp = x_ve / sqrt(1 + sigma^2)``, i.e.

    a = 1 / sqrt(1 + sigma^2),   s = sigma / sqrt(1 + sigma^2)

(exactly the DDPM/DDIM coefficients: sigma^2 = (1 - alpha_bar) / alpha_bar), and multiplies
by ``sqrt(1 + sigma^2)`` only when it calls the denoiser. So :class:`~.schedule.NoiseSchedule`
and its generalised DDIM step are used unchanged, initial states are standard normal (what
EvoSearch's variance-preserving mutation of x_T assumes), and the search methods behave as
they do on the ``diffusion`` family. For a full denoise (``sigmas[0]`` at the model's
sigma_max) the initial state is ``noise`` — ComfyUI's ``max_denoise`` scaling
``noise * sqrt(1 + sigma^2)`` of the VE latent, divided back. At sigma = 0 both
conventions give a = 1, s = 0: the final state is the model latent x0.

Nothing here imports ComfyUI: the ComfyUI node pack (``comfyui/`` at the repository root)
builds the ``denoise`` and ``decode`` callables from ComfyUI's own sampling entry points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..core.records import Request
from ..core.stepper import Stepper
from ..core.schedule import NoiseSchedule
from ..core.validation import check_choice, check_number

PARAMETERIZATIONS = ("ve", "flow")


def kdiffusion_schedule(sigmas, parameterization: str = "ve", eta: float = 1.0) -> NoiseSchedule:
    """The NoiseSchedule of k-diffusion ``sigmas`` (n + 1 values, decreasing, the last 0):
    ``a = 1 / sqrt(1 + sigma^2), s = sigma / sqrt(1 + sigma^2)`` for ``"ve"``, ``a = 1 - sigma, s = sigma``
    for ``"flow"``; ``timesteps`` are the sigmas the denoiser is called with (the first n)."""
    check_choice("parameterization", parameterization, PARAMETERIZATIONS)
    sig = (sigmas.detach().to("cpu", torch.float64) if isinstance(sigmas, torch.Tensor)
           else torch.as_tensor(sigmas, dtype=torch.float64)).reshape(-1)
    if sig.numel() < 2:
        raise ValueError(f"sigmas: need at least 2 values (n + 1 for n steps), got {sig.numel()}")
    if not torch.isfinite(sig).all():
        raise ValueError(f"sigmas: must be finite, got {sig.tolist()}")
    if float(sig[-1]) != 0.0:
        raise ValueError(f"sigmas: the last sigma must be 0 (a fully denoised sample), got {float(sig[-1])}")
    if (sig[:-1] <= 0).any():
        raise ValueError(f"sigmas: every sigma but the last must be > 0, got {sig.tolist()}")
    if (sig[1:] > sig[:-1]).any():
        raise ValueError(f"sigmas: must be non-increasing (noisiest first), got {sig.tolist()}")
    if parameterization == "flow":
        if float(sig[0]) > 1.0:
            raise ValueError(f"sigmas: flow sigmas must be in [0, 1], got {float(sig[0])}")
        a, s = 1.0 - sig, sig.clone()
    else:
        norm = torch.sqrt(1.0 + sig * sig)
        a, s = 1.0 / norm, sig / norm
    return NoiseSchedule(a=a, s=s, timesteps=sig[:-1].clone(), eta=eta)


@dataclass
class KDiffusionModel:
    """What a :class:`KDiffusionStepper` drives (its ``pipe``): the two callables and where
    states live. ``name`` says which model it is (recorded in search outputs)."""

    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    dtype: torch.dtype
    name: str = "k-diffusion"


class KDiffusionStepper(Stepper):
    """A Stepper over a k-diffusion denoiser ``denoise(x, sigma) -> x0``.

    Args:
        denoise: batched denoiser: ``x`` (B, *latent_shape) in the model's convention
            (``parameterization``), ``sigma`` a tensor (B,) — one noise level per row —
            returns x0 (B, *latent_shape). Guidance etc. are the callable's business; one call
            per row and step is one NFE.
        sigmas: n + 1 noise levels of the sampling run (a ComfyUI scheduler's output):
            non-increasing, all > 0 but the last, which is 0.
        latent_shape: the shape of one state without the batch dimension, e.g. (4, 64, 64).
        decode: ``decode(x0)`` (B, *latent_shape) -> images (B, C, H, W) float in [0, 1]
            (C = 1 or 3).
        parameterization: ``"ve"`` (x = x0 + sigma eps) or ``"flow"`` (x = (1 - sigma) x0 + sigma eps).
        max_batch_size: rows per denoiser call.
        eta: the step's noise level in [0, 1] (1: ancestral; 0: the deterministic ODE step).
        device, dtype: where states live and what the denoiser gets (default CPU, float32).
        init_latent: an optional (1, *latent_shape) (or latent_shape) model latent that the
            initial states are built around: ``a_0 * init + noise`` (see ``max_denoise``).
            None: an empty (zero) latent.
        max_denoise: True (default for ``"ve"``): the initial state is ``a_0 init + noise``
            with unit-variance noise, as ComfyUI does when ``sigmas[0]`` is the model's
            sigma_max; False (always for ``"flow"``): the forward marginal ``a_0 init + s_0 noise``.
        guidance_scale: the guidance the ``denoise`` callable applies (recorded in each
            request and lineage; ``prepare`` only accepts this value, since the callable is fixed).
        name: a name for the model (recorded in search outputs).

    ``prepare(prompt, ...)`` takes the prompt only for the reward and the record: the
    conditioning is inside ``denoise``. ``last_finished`` holds (on the CPU) the states of
    the last :meth:`finish` call, so that a caller can keep the latent of a scored sample.
    """

    family = "kdiffusion"

    def __init__(self, denoise: Callable, sigmas, latent_shape: Sequence[int], decode: Callable,
                 parameterization: str = "ve", max_batch_size: int = 16, eta: float = 1.0, device=None,
                 dtype: torch.dtype = torch.float32, init_latent: torch.Tensor | None = None,
                 max_denoise: bool | None = None, guidance_scale: float = 1.0, name: str = "k-diffusion"):
        if not callable(denoise):
            raise TypeError(f"denoise: expected a callable denoise(x, sigma) -> x0, got {type(denoise).__name__}")
        if not callable(decode):
            raise TypeError(f"decode: expected a callable decode(x0) -> images, got {type(decode).__name__}")
        shape = tuple(int(d) for d in latent_shape)
        if not shape or any(d < 1 for d in shape):
            raise ValueError(f"latent_shape: expected positive dimensions (without the batch), "
                             f"got {tuple(latent_shape)}")
        g = check_number("guidance_scale", guidance_scale, lo=0)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        model = KDiffusionModel(denoise=denoise, decode=decode, device=dev, dtype=dtype, name=str(name))
        super().__init__(model, max_batch_size=max_batch_size, eta=eta)
        self.parameterization = parameterization
        self.full_schedule = kdiffusion_schedule(sigmas, parameterization, self.eta)  # validates
        self.sigmas = torch.cat([self.full_schedule.timesteps, torch.zeros(1, dtype=torch.float64)])
        self.latent_shape = shape
        self.init_latent: torch.Tensor | None = None
        self.set_init_latent(init_latent)
        self.max_denoise = (parameterization == "ve") if max_denoise is None else bool(max_denoise)
        if parameterization == "flow":
            self.max_denoise = False  # ComfyUI's CONST noise scaling has no max-denoise variant
        self.guidance_scale = g
        self.last_finished: torch.Tensor | None = None

    def set_init_latent(self, init_latent: torch.Tensor | None) -> None:
        """The model latent (1, *latent_shape) (or latent_shape) the next initial states are built
        around (see ``init_latent``); None or an all-zero latent: an empty latent."""
        if init_latent is not None:
            init = torch.as_tensor(init_latent).detach()
            if tuple(init.shape) == self.latent_shape:
                init = init[None]
            if tuple(init.shape) != (1, *self.latent_shape):
                raise ValueError(f"init_latent: expected shape {(1, *self.latent_shape)} (or {self.latent_shape}), "
                                 f"got {tuple(init.shape)}")
            init = init.to(self.pipe.device, self.pipe.dtype)
            init_latent = None if not bool(torch.count_nonzero(init)) else init
        self.init_latent = init_latent

    # -- what the base class asks of a model -------------------------------------
    def _resolve_device(self) -> torch.device:
        return self.pipe.device

    def _resolve_dtype(self) -> torch.dtype:
        return self.pipe.dtype

    @property
    def default_num_inference_steps(self) -> int:
        return self.full_schedule.num_steps

    @property
    def default_guidance_scale(self) -> float:
        return self.guidance_scale

    def _prepare(self, request: Request) -> None:
        n = self.full_schedule.num_steps
        if request.num_inference_steps != n:
            raise ValueError(f"num_inference_steps: this KDiffusionStepper samples the {n} steps of the sigmas it was "
                             f"built with, got {request.num_inference_steps}")
        if not math.isclose(request.guidance_scale, self.guidance_scale, rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(f"guidance_scale: the denoiser of this KDiffusionStepper applies guidance "
                             f"{self.guidance_scale}; got {request.guidance_scale}")
        self.state_shape = self.latent_shape
        self.schedule = self.full_schedule

    # -- randomness --------------------------------------------------------------
    def start(self, seeds: Sequence[int]) -> torch.Tensor:
        """Initial states: ``a_0 init + noise`` (max_denoise) or ``a_0 init + s_0 noise``."""
        noise = self.sample_noise(seeds)
        if not self.max_denoise:
            noise = noise * float(self.schedule.s[0])
        if self.init_latent is not None:
            noise = noise + float(self.schedule.a[0]) * self.init_latent
        return noise

    # -- stepping ----------------------------------------------------------------
    def model_input(self, states: torch.Tensor, i: int) -> torch.Tensor:
        """States at step i in the denoiser's own convention (``x_ve = x_vp / a`` for ``"ve"``)."""
        if self.parameterization == "ve":
            return states / float(self.schedule.a[i])
        return states

    def _predict(self, x: torch.Tensor, i: int):
        a, s = float(self.schedule.a[i]), float(self.schedule.s[i])
        sigma = torch.full((x.shape[0],), float(self.schedule.timesteps[i]), device=x.device, dtype=x.dtype)
        x0 = self.pipe.denoise(self.model_input(x, i), sigma)
        if not isinstance(x0, torch.Tensor) or tuple(x0.shape) != tuple(x.shape):
            got = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
            raise ValueError(f"denoise: must return x0 of the input's shape {tuple(x.shape)}, got {got}")
        x0 = x0.to(x.device, x.dtype)
        return x0, (x - a * x0) / s

    # -- outputs -----------------------------------------------------------------
    def finish(self, states: torch.Tensor) -> torch.Tensor:
        self.last_finished = states.detach().to("cpu", torch.float32).clone()
        return super().finish(states)

    def _decode(self, x0: torch.Tensor) -> torch.Tensor:
        images = self.pipe.decode(x0)
        if (not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] != x0.shape[0]
                or images.shape[1] not in (1, 3)):
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"decode: must return images (B, C, H, W) with C = 1 or 3 for B = {x0.shape[0]} "
                             f"latents, got {got}")
        return images


__all__ = ["KDiffusionStepper", "KDiffusionModel", "kdiffusion_schedule", "PARAMETERIZATIONS"]
