"""An exact testbed: a Gaussian-mixture "model" with a closed-form denoiser.

The data distribution is a mixture of K Gaussians in D dimensions with diagonal
covariances, ``p(x) = sum_k pi_k N(x; mu_k, diag(var_k))``. Under the forward process
``x_t = a_t x0 + s_t eps`` every marginal is again a mixture,
``p_t(x) = sum_k pi_k N(x; a_t mu_k, diag(a_t^2 var_k + s_t^2))``, and the posterior
mean is exact::

    E[x0 | x_t] = sum_k r_k(x_t) [mu_k + a_t var_k (x_t - a_t mu_k) / (a_t^2 var_k + s_t^2)]

with responsibilities ``r_k(x_t)`` proportional to ``pi_k p_t(x_t | k)``. From it follow the
exact epsilon ``(x_t - a_t E[x0|x_t]) / s_t``, the VP v-prediction ``a_t eps - s_t x0``
and the rectified-flow velocity ``eps - x0``. These are wrapped as diffusers models
(``ModelMixin`` + ``ConfigMixin``; they save and load with ``save_pretrained`` /
``from_pretrained``) and as diffusers pipelines that the real Steppers drive:

* ``diffusion`` family: :class:`GaussianMixtureUNet` (a ``UNet2DModel``-like denoiser,
  epsilon or v_prediction, a_t and s_t from the scheduler's ``alphas_cumprod`` at the
  integer timestep) in :class:`GaussianMixtureDiffusionPipeline` (unet + DDIMScheduler
  or DDPMScheduler), driven by :class:`~evosearch.pipelines.DiffusionStepper`;
* ``flow`` family: :class:`GaussianMixtureTransformer` (velocity, timesteps in
  ``FlowMatchEulerDiscreteScheduler`` units, sigma * 1000) in
  :class:`GaussianMixtureFlowPipeline` (transformer + FlowMatchEulerDiscreteScheduler),
  driven by :class:`~evosearch.pipelines.FlowStepper` (its "unconditional" kind).

State layout: a sample x in R^D is the state ``(1, 1, D)``, so a batch of states is
``(N, 1, 1, D)``: a one-channel, 1 x D "image". ``Stepper.finish`` returns the raw,
unclamped samples (the pipelines define ``samples_to_images``), expanded to three
channels, ``(N, 3, 1, D)``, which passes through ``Reward.__call__``; a reward reads
``x = images[:, 0, 0, :]`` (:func:`samples_from`). Note that a SearchPipeline output
stores images as uint8 (clamped to [0, 1]), so read samples from the rewards or
from ``SearchPipeline.replay_states(lineage)``, not from ``out.images``.

Closed forms for checking search methods: :meth:`GaussianMixture.log_prob`,
:meth:`~GaussianMixture.mode_of`, :func:`tilted_mixture` (``p(x) exp(lam r(x))`` for a
linear reward is again a mixture) and :func:`best_of_n_mode_probs` /
:func:`best_of_n_reward_cdf` (the order statistics of Best-of-N with a projection reward).

    >>> gm = GaussianMixture(weights=[0.5, 0.3, 0.2], means=[[-2, 0], [2, 0], [0, 2.5]], variances=0.25)
    >>> pipe = gaussian_mixture_pipeline(gm, family="diffusion", prediction_type="epsilon")
    >>> stepper = stepper_for(pipe, max_batch_size=4096, eta=1.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

__all__ = [
    "GaussianMixture", "GaussianMixtureUNet", "GaussianMixtureTransformer", "GaussianMixtureDiffusionPipeline",
    "GaussianMixtureFlowPipeline", "GaussianMixtureOutput", "gaussian_mixture_pipeline", "samples_from",
    "samples_to_states", "tilted_mixture", "best_of_n_mode_probs", "best_of_n_reward_cdf", "projection_reward",
]

_LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------------------- the distribution
class GaussianMixture:
    """A mixture of K Gaussians in D dimensions with diagonal covariances (float64 numpy).

    Args:
        weights: (K,) non-negative, normalised here.
        means: (K, D).
        variances: a scalar (isotropic, shared), (K,) (isotropic per component) or (K, D)
            (diagonal per component).
    """

    def __init__(self, weights, means, variances=1.0):
        means = np.asarray(means, dtype=np.float64)
        if means.ndim != 2:
            raise ValueError(f"means: expected shape (K, D), got {means.shape}")
        k, d = means.shape
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        if weights.shape != (k,) or (weights < 0).any() or weights.sum() <= 0 or not np.isfinite(weights).all():
            raise ValueError(f"weights: expected {k} non-negative finite numbers (one per mean), got {weights}")
        var = np.asarray(variances, dtype=np.float64)
        if var.ndim == 0:
            var = np.full((k, d), float(var))
        elif var.shape == (k,):
            var = np.repeat(var[:, None], d, axis=1)
        if var.shape != (k, d) or (var <= 0).any() or not np.isfinite(var).all():
            raise ValueError(f"variances: expected positive numbers of shape (), ({k},) or ({k}, {d}), "
                             f"got shape {np.shape(variances)}")
        self.weights = weights / weights.sum()
        self.means = means
        self.variances = var

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def to_config(self) -> dict:
        return {"weights": self.weights.tolist(), "means": self.means.tolist(), "variances": self.variances.tolist()}

    @classmethod
    def from_config(cls, config) -> "GaussianMixture":
        return cls(config["weights"], config["means"], config["variances"])

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.num_components}, D={self.dim}, weights={np.round(self.weights, 4).tolist()})"

    # -- sampling and densities --------------------------------------------------------
    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``n`` exact samples (n, D) and their component labels (n,)."""
        rng = np.random.default_rng(rng)
        labels = rng.choice(self.num_components, size=n, p=self.weights)
        x = self.means[labels] + np.sqrt(self.variances[labels]) * rng.standard_normal((n, self.dim))
        return x, labels

    def noised(self, a: float, s: float) -> "GaussianMixture":
        """The marginal of ``x_t = a x0 + s eps``: again a mixture."""
        return GaussianMixture(self.weights, a * self.means, a * a * self.variances + s * s)

    def component_log_prob(self, x) -> np.ndarray:
        """(n, K): log N(x; mu_k, var_k) (without the weights)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.dim)
        diff = x[:, None, :] - self.means[None]
        return -0.5 * ((diff ** 2 / self.variances[None]).sum(-1) + np.log(self.variances).sum(-1)[None]
                       + self.dim * _LOG_2PI)

    def log_prob(self, x) -> np.ndarray:
        """Exact log density (n,)."""
        lp = self.component_log_prob(x) + np.log(np.maximum(self.weights, 1e-300))[None]
        m = lp.max(axis=1, keepdims=True)
        return (m + np.log(np.exp(lp - m).sum(axis=1, keepdims=True)))[:, 0]

    def responsibilities(self, x) -> np.ndarray:
        """(n, K): posterior probability of each component given x."""
        lp = self.component_log_prob(x) + np.log(np.maximum(self.weights, 1e-300))[None]
        lp -= lp.max(axis=1, keepdims=True)
        p = np.exp(lp)
        return p / p.sum(axis=1, keepdims=True)

    def mode_of(self, x) -> np.ndarray:
        """(n,): the component with the largest posterior responsibility."""
        return self.responsibilities(x).argmax(axis=1)

    # -- the exact denoiser (torch, float64 inside) ------------------------------------
    def posterior_mean(self, x: torch.Tensor, a, s) -> torch.Tensor:
        """E[x0 | x_t = x] for ``x_t = a x0 + s eps``; ``x`` (n, D), ``a``/``s`` scalars or (n,)."""
        return _posterior_mean(x, a, s, torch.as_tensor(self.weights), torch.as_tensor(self.means),
                               torch.as_tensor(self.variances))

    # -- projections (for order statistics) -------------------------------------------
    def projection(self, w) -> tuple[np.ndarray, np.ndarray]:
        """Means (K,) and stds (K,) of the components of ``y = w . x``."""
        w = np.asarray(w, dtype=np.float64).reshape(self.dim)
        return self.means @ w, np.sqrt(self.variances @ (w * w))


def _posterior_mean(x: torch.Tensor, a, s, weights: torch.Tensor, means: torch.Tensor,
                    variances: torch.Tensor) -> torch.Tensor:
    dtype = x.dtype
    x = x.to(torch.float64)
    n = x.shape[0]
    a = torch.as_tensor(a, dtype=torch.float64, device=x.device).reshape(-1, 1, 1).expand(n, 1, 1)
    s = torch.as_tensor(s, dtype=torch.float64, device=x.device).reshape(-1, 1, 1).expand(n, 1, 1)
    mu = means.to(x.device, torch.float64)[None]                 # (1, K, D)
    var = variances.to(x.device, torch.float64)[None]            # (1, K, D)
    logw = torch.log(weights.to(x.device, torch.float64).clamp_min(1e-300))[None]
    var_t = a * a * var + s * s                                   # (n, K, D)
    diff = x[:, None, :] - a * mu                                 # (n, K, D)
    logits = logw - 0.5 * (diff * diff / var_t + torch.log(var_t)).sum(-1)
    resp = torch.softmax(logits, dim=1)                           # (n, K)
    m = mu + a * var * diff / var_t                               # (n, K, D)
    return (resp[..., None] * m).sum(1).to(dtype)


# ---------------------------------------------------------------------------- layout helpers
def samples_from(images) -> torch.Tensor:
    """(N, D) samples from states or Stepper images ``(N, C, 1, D)`` (or pass (N, D) through)."""
    x = torch.as_tensor(images)
    if x.ndim == 4:
        return x[:, 0, 0, :]
    if x.ndim == 2:
        return x
    raise ValueError(f"images: expected (N, C, 1, D) states/images or (N, D) samples, got shape {tuple(x.shape)}")


def samples_to_states(x) -> torch.Tensor:
    """(N, D) samples -> (N, 1, 1, D) states."""
    x = torch.as_tensor(x)
    return x.reshape(x.shape[0], 1, 1, x.shape[-1])


def projection_reward(w, name: str = "projection"):
    """A FunctionReward ``r(x) = w . x`` on the testbed's images."""
    from .rewards.base import FunctionReward

    w = torch.as_tensor(np.asarray(w, dtype=np.float64))

    def fn(images, prompts):
        return samples_from(images).double() @ w

    return FunctionReward(fn, name=name)


# ---------------------------------------------------------------------------- diffusers models
@dataclass
class GaussianMixtureModelOutput(BaseOutput):
    sample: torch.Tensor


class _MixtureModel(ModelMixin, ConfigMixin):
    """Shared part: the mixture's parameters as (persistent) buffers; the config holds them too."""

    def _init_mixture(self, weights, means, variances):
        gm = GaussianMixture(weights, means, variances)
        self.register_to_config(in_channels=1, out_channels=1, sample_size=[1, gm.dim])
        self.register_buffer("mixture_weights", torch.tensor(gm.weights, dtype=torch.float32))
        self.register_buffer("mixture_means", torch.tensor(gm.means, dtype=torch.float32))
        self.register_buffer("mixture_variances", torch.tensor(gm.variances, dtype=torch.float32))

    @property
    def mixture(self) -> GaussianMixture:
        return GaussianMixture(self.config.weights, self.config.means, self.config.variances)

    def _x0(self, x: torch.Tensor, a, s) -> torch.Tensor:
        """Posterior mean (n, D) in float64 for flat x (n, D); the exact config values are used."""
        gm = self.mixture
        return _posterior_mean(x.double(), a, s, torch.as_tensor(gm.weights), torch.as_tensor(gm.means),
                               torch.as_tensor(gm.variances))

    def _flat(self, sample: torch.Tensor) -> torch.Tensor:
        d = self.config.sample_size[1]
        if sample.ndim != 4 or tuple(sample.shape[1:]) != (1, 1, d):
            raise ValueError(f"sample: expected states of shape (N, 1, 1, {d}), got {tuple(sample.shape)}")
        return sample.reshape(sample.shape[0], d)

    @staticmethod
    def _per_row(timestep, n: int, device) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=device)
        if t.ndim == 0:
            t = t.expand(n)
        if t.shape != (n,):
            raise ValueError(f"timestep: expected a scalar or shape ({n},), got {tuple(t.shape)}")
        return t


class GaussianMixtureUNet(_MixtureModel):
    """A ``UNet2DModel``-like exact denoiser for a VP schedule.

    ``forward(sample (N, 1, 1, D), timestep (int / scalar / (N,)), class_labels=None)``
    returns epsilon or v (``prediction_type``) computed from the mixture with
    ``a_t = sqrt(alphas_cumprod[t])``, ``s_t = sqrt(1 - alphas_cumprod[t])``, where
    ``alphas_cumprod`` is the one a DDPMScheduler/DDIMScheduler with the same
    ``num_train_timesteps``/``beta_*`` config uses (the pipeline checks they agree).
    """

    @register_to_config
    def __init__(self, weights: Sequence[float] = (1.0,), means: Sequence[Sequence[float]] = ((0.0, 0.0),),
                 variances=1.0, prediction_type: str = "epsilon", num_train_timesteps: int = 1000,
                 beta_start: float = 0.0001, beta_end: float = 0.02, beta_schedule: str = "linear",
                 in_channels: int = 1, out_channels: int = 1, sample_size=None):
        super().__init__()
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"prediction_type: must be one of epsilon, v_prediction, sample; got {prediction_type!r}")
        self._init_mixture(weights, means, variances)
        sched = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                              beta_schedule=beta_schedule)
        self.alphas_cumprod = sched.alphas_cumprod.double()  # plain attribute, not a buffer: exact float64

    @classmethod
    def from_mixture(cls, mixture: GaussianMixture, scheduler=None, prediction_type: str | None = None):
        """The denoiser of ``mixture`` for ``scheduler``'s beta schedule and prediction type."""
        cfg = (scheduler.config if scheduler is not None else DDIMScheduler().config)
        if cfg.get("trained_betas") is not None or cfg.get("rescale_betas_zero_snr", False):
            raise ValueError("scheduler: trained_betas / rescale_betas_zero_snr are not supported by the testbed")
        return cls(**mixture.to_config(), prediction_type=prediction_type or cfg.get("prediction_type", "epsilon"),
                   num_train_timesteps=cfg["num_train_timesteps"], beta_start=cfg["beta_start"],
                   beta_end=cfg["beta_end"], beta_schedule=cfg["beta_schedule"])

    def coefficients(self, timestep) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_t, s_t) float64 at integer timesteps."""
        t = torch.as_tensor(timestep)
        idx = t.round().long().cpu()
        if not torch.allclose(t.double().cpu(), idx.double()) or (idx < 0).any() or \
                (idx >= self.config.num_train_timesteps).any():
            raise ValueError(f"timestep: must be integers in [0, {self.config.num_train_timesteps}), got {timestep}")
        acp = self.alphas_cumprod[idx]
        return acp.sqrt(), (1 - acp).sqrt()

    def forward(self, sample: torch.Tensor, timestep, class_labels=None, return_dict: bool = True):
        x = self._flat(sample)
        t = self._per_row(timestep, x.shape[0], x.device)
        a, s = (v.to(x.device) for v in self.coefficients(t))
        x0 = self._x0(x, a, s)
        xd = x.double()
        a, s = a[:, None], s[:, None]
        eps = (xd - a * x0) / s
        if self.config.prediction_type == "epsilon":
            out = eps
        elif self.config.prediction_type == "v_prediction":
            out = a * eps - s * x0
        else:
            out = x0
        out = out.to(sample.dtype).reshape(sample.shape)
        return GaussianMixtureModelOutput(sample=out) if return_dict else (out,)


class GaussianMixtureTransformer(_MixtureModel):
    """A flow-matching transformer-like exact velocity model.

    ``forward(hidden_states (N, 1, 1, D), timestep)`` with ``timestep = sigma *
    num_train_timesteps`` (FlowMatchEulerDiscreteScheduler units) returns
    ``v = eps - x0`` for ``x_sigma = (1 - sigma) x0 + sigma eps``.
    """

    @register_to_config
    def __init__(self, weights: Sequence[float] = (1.0,), means: Sequence[Sequence[float]] = ((0.0, 0.0),),
                 variances=1.0, num_train_timesteps: int = 1000, in_channels: int = 1, out_channels: int = 1,
                 sample_size=None):
        super().__init__()
        self._init_mixture(weights, means, variances)

    @classmethod
    def from_mixture(cls, mixture: GaussianMixture, scheduler=None):
        n = scheduler.config.num_train_timesteps if scheduler is not None else 1000
        return cls(**mixture.to_config(), num_train_timesteps=n)

    def forward(self, hidden_states: torch.Tensor, timestep, encoder_hidden_states=None, pooled_projections=None,
                return_dict: bool = True):
        x = self._flat(hidden_states)
        t = self._per_row(timestep, x.shape[0], x.device)
        sigma = t.double() / self.config.num_train_timesteps
        if ((sigma < 0) | (sigma > 1)).any():
            raise ValueError(f"timestep: must be in [0, {self.config.num_train_timesteps}], got {timestep}")
        a = 1 - sigma
        x0 = self._x0(x, a, sigma)
        xd = x.double()
        # v = eps - x0 with eps = (x - a x0) / sigma, i.e. v = (x - x0) / sigma (finite for sigma > 0)
        sig = sigma[:, None].clamp_min(1e-12)
        v = (xd - x0) / sig
        out = v.to(hidden_states.dtype).reshape(hidden_states.shape)
        return GaussianMixtureModelOutput(sample=out) if return_dict else (out,)


# ---------------------------------------------------------------------------- pipelines
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
    if family == "diffusion":
        kwargs = {"beta_schedule": "linear", "clip_sample": False, "prediction_type": prediction_type,
                  "timestep_spacing": "trailing", **scheduler_kwargs}
        if scheduler == "ddim":
            sched = DDIMScheduler(set_alpha_to_one=True, **kwargs)
        elif scheduler == "ddpm":
            sched = DDPMScheduler(**kwargs)
        else:
            raise ValueError(f"scheduler: must be 'ddim' or 'ddpm', got {scheduler!r}")
        unet = GaussianMixtureUNet.from_mixture(mixture, sched)
        pipe = GaussianMixtureDiffusionPipeline(unet=unet if dtype == torch.float32 else unet.to(dtype),
                                                scheduler=sched)
    elif family == "flow":
        sched = FlowMatchEulerDiscreteScheduler(**scheduler_kwargs)
        transformer = GaussianMixtureTransformer.from_mixture(mixture, sched)
        pipe = GaussianMixtureFlowPipeline(transformer=transformer if dtype == torch.float32 else transformer.to(dtype),
                                           scheduler=sched)
    else:
        raise ValueError(f"family: must be 'diffusion' or 'flow', got {family!r}")
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------- closed forms for search
def tilted_mixture(mixture: GaussianMixture, lam: float, w=None, mode_rewards=None) -> GaussianMixture:
    """The tilted distribution ``p(x) exp(lam r(x)) / Z`` as a mixture.

    * ``w`` (D,): the linear reward ``r(x) = w . x`` -- EXACT. Component k's mean moves to
      ``mu_k + lam var_k * w`` and its weight becomes proportional to
      ``pi_k exp(lam w . mu_k + lam^2 w^T diag(var_k) w / 2)``.
    * ``mode_rewards`` (K,): a reward constant on each component, ``r = c_k`` -- exact for a
      reward of the latent component label; for ``r(x) = c[mode_of(x)]`` it is exact only
      up to the components' overlap (use well-separated components). Weights become
      proportional to ``pi_k exp(lam c_k)``.
    Both may be given (the reward is their sum).
    """
    lam = float(lam)
    logw = np.log(np.maximum(mixture.weights, 1e-300))
    means = mixture.means.copy()
    if w is not None:
        w = np.asarray(w, dtype=np.float64).reshape(mixture.dim)
        logw = logw + lam * (mixture.means @ w) + 0.5 * lam * lam * (mixture.variances @ (w * w))
        means = means + lam * mixture.variances * w[None]
    if mode_rewards is not None:
        c = np.asarray(mode_rewards, dtype=np.float64).reshape(mixture.num_components)
        logw = logw + lam * c
    logw -= logw.max()
    return GaussianMixture(np.exp(logw), means, mixture.variances)


def _norm_cdf(z):
    from scipy.special import ndtr

    return ndtr(z)


def best_of_n_mode_probs(mixture: GaussianMixture, w, n: int) -> np.ndarray:
    """P(the Best-of-n winner under ``r(x) = w . x`` was drawn from component k), (K,).

    With ``y = w . x``: component k's projection has density ``f_k`` (normal), the mixture's
    CDF is ``F = sum_j pi_j Phi_j``, and ``P_k = int n pi_k f_k(y) F(y)^(n-1) dy`` (integrated
    numerically to ~1e-10)."""
    from scipy import integrate
    from scipy.stats import norm

    m, sd = mixture.projection(w)

    def cdf(y):
        return float(np.dot(mixture.weights, _norm_cdf((y - m) / sd)))

    probs = []
    for k in range(mixture.num_components):
        lo, hi = m[k] - 12 * sd[k], m[k] + 12 * sd[k]
        val, _ = integrate.quad(lambda y: n * mixture.weights[k] * norm.pdf(y, m[k], sd[k]) * cdf(y) ** (n - 1),
                                lo, hi, epsabs=1e-12, epsrel=1e-10, limit=200)
        probs.append(val)
    return np.asarray(probs)


def best_of_n_reward_cdf(mixture: GaussianMixture, w, n: int, y) -> np.ndarray:
    """CDF of the Best-of-n winner's reward ``max_i w . x_i`` at ``y``: ``F(y)^n``."""
    m, sd = mixture.projection(w)
    y = np.asarray(y, dtype=np.float64)
    f = (mixture.weights * _norm_cdf((y[..., None] - m) / sd)).sum(-1)
    return f ** n
