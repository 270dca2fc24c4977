"""The one stochastic step shared by every family: the generalised DDIM step.

With the model's schedule ``x_t = a_t * x0 + s_t * eps`` (VP: a = sqrt(alpha_bar),
s = sqrt(1 - alpha_bar); rectified flow: a = 1 - t, s = t), a step t -> u with
noise level ``eta`` in [0, 1] and injected standard-normal noise ``z`` is::

    c   = eta * s_u * sqrt(1 - (a_t * s_u / (a_u * s_t))**2)
    x_u = a_u * x0_hat + sqrt(s_u**2 - c**2) * eps_hat + c * z

eta = 1 is the ancestral (DDPM-like) step, eta = 0 the deterministic ODE step.
For VP schedules this is exactly diffusers' ``DDIMScheduler.step`` with ``eta`` and
``variance_noise`` (a test checks it). The step keeps the marginals of the
forward process for any eta, which is what search over intermediate states needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NoiseSchedule:
    """Per-step coefficients of ``x_t = a_t x0 + s_t eps`` for one sampling run.

    ``a`` and ``s`` have ``num_steps + 1`` entries: index i is the state before step i,
    index ``num_steps`` the final state. ``timesteps`` (num_steps) are what the
    denoiser is called with at step i, in the model's own units. ``a_to``/``s_to``
    (num_steps, optional) are the level step i moves to when it is not quite the next
    entry's: diffusers' DDIM with "trailing" spacing steps to ``t - 1000 // N`` while it
    calls the model next at a timestep one off; default ``a[1:]``, ``s[1:]``.
    """

    a: torch.Tensor
    s: torch.Tensor
    timesteps: torch.Tensor
    eta: float
    a_to: torch.Tensor | None = None
    s_to: torch.Tensor | None = None

    def __post_init__(self):
        if not 0.0 <= float(self.eta) <= 1.0:
            raise ValueError(f"eta: must be in [0, 1], got {self.eta}")
        if len(self.a) != len(self.s) or len(self.a) != len(self.timesteps) + 1:
            raise ValueError("NoiseSchedule: a and s need num_steps + 1 entries and timesteps num_steps")
        a_to = self.a[1:] if self.a_to is None else self.a_to
        s_to = self.s[1:] if self.s_to is None else self.s_to
        if len(a_to) != len(self.timesteps) or len(s_to) != len(self.timesteps):
            raise ValueError("NoiseSchedule: a_to and s_to need num_steps entries")
        # plain floats, computed once: a step reads them for every micro-batch
        floats = {"_a": [float(v) for v in self.a], "_s": [float(v) for v in self.s],
                  "_a_to": [float(v) for v in a_to], "_s_to": [float(v) for v in s_to]}
        for k, v in floats.items():
            object.__setattr__(self, k, v)
        object.__setattr__(self, "_c", [self._std(i) for i in range(len(self.timesteps))])

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def _std(self, i: int) -> float:
        a_t, s_t, a_u, s_u = self._a[i], self._s[i], self._a_to[i], self._s_to[i]
        if s_u <= 0.0 or self.eta == 0.0:
            return 0.0
        ratio = (a_t * s_u) / (a_u * s_t) if s_t > 0 else 0.0
        return float(self.eta * s_u * max(0.0, 1.0 - ratio * ratio) ** 0.5)

    def noise_std(self, i: int) -> float:
        """The std ``c`` of the noise that step i injects (0 for deterministic steps)."""
        return self._c[i]

    def step(self, x0_hat: torch.Tensor, eps_hat: torch.Tensor, i: int, noise: torch.Tensor | None) -> torch.Tensor:
        """x_{i+1} from the predictions at step i; ``noise`` is required when ``noise_std(i) > 0``."""
        a_u, s_u, c = self._a_to[i], self._s_to[i], self._c[i]
        x = a_u * x0_hat + (max(s_u * s_u - c * c, 0.0) ** 0.5) * eps_hat
        if c > 0.0:
            if noise is None:
                raise ValueError(f"noise: step {i} is stochastic (std {c:.4g}); pass the noise explicitly")
            x = x + c * noise.to(x.dtype)
        return x

    def renoise(self, x: torch.Tensor, from_index: int, to_index: int, noise: torch.Tensor) -> torch.Tensor:
        """Move states at level ``from_index`` (j) back to the noisier level ``to_index`` (k <= j)
        with the forward process::

            x_k = (a_k / a_j) x_j + sqrt(s_k^2 - (a_k s_j / a_j)^2) * noise

        which gives x_k = a_k x0 + (noise of variance s_k^2): the marginal of level k."""
        a_from, s_from, a_to, s_to = self._a[from_index], self._s[from_index], self._a[to_index], self._s[to_index]
        if a_from <= 0.0:
            raise ValueError(f"from_step: cannot re-noise from a level with signal coefficient a = {a_from} (pure noise)")
        ratio = a_to / a_from
        var = s_to * s_to - (ratio * s_from) ** 2
        if var < -1e-9 * max(1.0, s_to * s_to):
            raise ValueError(f"to_step: re-noising must go to a noisier level (s/a must grow): from s/a = "
                             f"{s_from / a_from:.4g} to {s_to / max(a_to, 1e-300):.4g}")
        return ratio * x + math.sqrt(max(var, 0.0)) * noise.to(x.dtype)
