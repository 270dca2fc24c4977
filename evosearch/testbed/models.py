"""The mixture's exact denoisers as diffusers models (``ModelMixin`` + ``ConfigMixin``):
:class:`GaussianMixtureUNet` (epsilon / v / sample for a VP schedule) and
:class:`GaussianMixtureTransformer` (flow-matching velocity); see :mod:`evosearch.testbed`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from ..core.validation import check_choice
from .mixture import GaussianMixture, _posterior_mean

__all__ = ["GaussianMixtureModelOutput", "GaussianMixtureUNet", "GaussianMixtureTransformer"]


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
        check_choice("prediction_type", prediction_type, ("epsilon", "v_prediction", "sample"))
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
