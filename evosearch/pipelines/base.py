"""The Stepper protocol: a model as a chain of stochastic steps with explicit randomness.

A Stepper is built from a diffusers pipeline object (reusing its encoders, denoiser,
scheduler config and VAE), prepared once per request, and then driven by a search
method::

    stepper.prepare(prompt, num_inference_steps=50, guidance_scale=7.5)
    x = stepper.start(seeds)                 # (N, *state_shape) initial states
    for i in range(stepper.num_steps):
        x = stepper.step(x, i, noise)        # noise: (N, *state_shape) or None
    images = stepper.finish(x)               # (N, 3, H, W) float in [0, 1], CPU

Micro-batching to ``max_batch_size`` samples (with CFG the network sees twice as many
rows) happens here, so search methods never see a memory limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .schedule import NoiseSchedule


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from ``seed`` and integer keys (e.g. a step index)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, *[int(k) for k in keys]]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


@dataclass
class Request:
    """What one search call asks of a Stepper; recorded in every lineage for replay."""

    prompt: Any
    num_inference_steps: int
    guidance_scale: float
    eta: float
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "eta": self.eta,
            "negative_prompt": self.negative_prompt,
            "height": self.height,
            "width": self.width,
            **({"extra": self.extra} if self.extra else {}),
        }


class Stepper:
    """Base class: subclasses implement ``_prepare``, ``_predict`` and ``_decode``.

    Counters (``nfe``: samples x denoising steps, the papers' unit; ``decode_calls``:
    samples decoded) accumulate over the Stepper's life; search reads differences.
    """

    family: str = "base"

    def __init__(self, pipe, max_batch_size: int = 16, eta: float = 1.0):
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size: must be a positive integer, got {max_batch_size!r}")
        if not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"eta: must be in [0, 1] (0 = deterministic ODE step, 1 = ancestral), got {eta}")
        self.pipe = pipe
        self.max_batch_size = max_batch_size
        self.eta = float(eta)
        self.nfe = 0
        self.decode_calls = 0
        self.request: Request | None = None
        self.schedule: NoiseSchedule | None = None
        self.state_shape: tuple[int, ...] = ()

    # -- request -----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.pipe.device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    @property
    def denoiser(self) -> torch.nn.Module:
        raise NotImplementedError

    @property
    def default_num_inference_steps(self) -> int:
        return 50

    @property
    def default_guidance_scale(self) -> float:
        return 7.5

    def prepare(self, prompt, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                negative_prompt: str | None = None, height: int | None = None, width: int | None = None,
                **extra) -> Request:
        """Encode the prompt once and build the noise schedule for this request."""
        steps = self.default_num_inference_steps if num_inference_steps is None else num_inference_steps
        if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"num_inference_steps: must be a positive integer, got {num_inference_steps!r}")
        g = self.default_guidance_scale if guidance_scale is None else float(guidance_scale)
        if not math.isfinite(g) or g < 0:
            raise ValueError(f"guidance_scale: must be a finite number >= 0, got {guidance_scale!r}")
        self.request = Request(prompt=prompt, num_inference_steps=int(steps), guidance_scale=g, eta=self.eta,
                               negative_prompt=negative_prompt, height=height, width=width, extra=dict(extra))
        with torch.no_grad():
            self._prepare(self.request)
        if self.schedule is None or self.schedule.num_steps != steps:
            raise RuntimeError(f"{type(self).__name__} built a schedule of the wrong length")
        return self.request

    def _prepare(self, request: Request) -> None:
        raise NotImplementedError

    def _require_request(self) -> None:
        if self.request is None:
            raise RuntimeError("Stepper.prepare(prompt, ...) must be called before sampling")

    @property
    def num_steps(self) -> int:
        self._require_request()
        return self.schedule.num_steps

    # -- randomness --------------------------------------------------------------
    def sample_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """Standard normal noise (N, *state_shape), row k drawn from a CPU generator seeded
        with ``seeds[k]``: the same seed gives the same row whatever the batch."""
        self._require_request()
        rows = [torch.randn(self.state_shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        out = torch.stack(rows) if rows else torch.empty((0, *self.state_shape))
        return out.to(device=self.device, dtype=self.dtype)

    def start(self, seeds: Sequence[int]) -> torch.Tensor:
        """Initial states x_T, one per seed."""
        return self.sample_noise(seeds)

    def noise_scale(self, i: int) -> float:
        """Std of the noise step i injects (what EvoSearch mutates intermediate states with)."""
        self._require_request()
        return self.schedule.noise_std(i)

    # -- stepping ----------------------------------------------------------------
    def _chunks(self, n: int):
        for lo in range(0, n, self.max_batch_size):
            yield slice(lo, min(n, lo + self.max_batch_size))

    @torch.no_grad()
    def predict(self, states: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) at step i, in micro-batches; counts NFE."""
        self._require_request()
        x0s, epss = [], []
        for sl in self._chunks(states.shape[0]):
            x0, eps = self._predict(states[sl].to(self.device, self.dtype), i)
            x0s.append(x0)
            epss.append(eps)
        self.nfe += states.shape[0]
        return torch.cat(x0s), torch.cat(epss)

    def _predict(self, x: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, states: torch.Tensor, i: int, noise: torch.Tensor | None = None) -> torch.Tensor:
        """States after step i (N rows in, N rows out). ``noise`` (same shape) is used
        when ``noise_scale(i) > 0`` and is never drawn here."""
        self._require_request()
        if not 0 <= i < self.num_steps:
            raise IndexError(f"i: step index must be in [0, {self.num_steps}), got {i}")
        if noise is not None and noise.shape != states.shape:
            raise ValueError(f"noise: expected shape {tuple(states.shape)}, got {tuple(noise.shape)}")
        out = []
        for sl in self._chunks(states.shape[0]):
            x0, eps = self._predict(states[sl].to(self.device, self.dtype), i)
            z = None if noise is None else noise[sl].to(self.device, self.dtype)
            out.append(self.schedule.step(x0, eps, i, z))
        self.nfe += states.shape[0]
        return torch.cat(out)

    # -- outputs -----------------------------------------------------------------
    @torch.no_grad()
    def finish(self, states: torch.Tensor) -> torch.Tensor:
        """Decode final states to images (N, 3, H, W) float32 in [0, 1] on the CPU."""
        self._require_request()
        out = [self._decode(states[sl].to(self.device, self.dtype)).float().cpu() for sl in self._chunks(states.shape[0])]
        self.decode_calls += states.shape[0]
        images = torch.cat(out)
        return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images

    def _decode(self, x0: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def preview(self, states: torch.Tensor, i: int) -> torch.Tensor:
        """Decoded x0 estimate of states at step i (costs one NFE per sample plus a decode)."""
        x0, _ = self.predict(states, i)
        return self.finish(x0)

    @staticmethod
    def select(states: torch.Tensor, index: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Rows of ``states`` at ``index`` (states that carry more than a tensor override this)."""
        idx = torch.as_tensor(index, dtype=torch.long, device=states.device)
        return states.index_select(0, idx)

    @staticmethod
    def concat(states_list: Sequence[torch.Tensor]) -> torch.Tensor:
        """Rows of several state batches one after another (states that carry more than a
        tensor override this, with :meth:`select`)."""
        return torch.cat(list(states_list))

    # -- shared helpers for subclasses ------------------------------------------
    def _cfg(self) -> bool:
        return self.request.guidance_scale > 1.0

    @staticmethod
    def _expand(cond: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
        """Broadcast per-request conditioning (batch 1) to n rows."""
        return {k: v.expand(n, *v.shape[1:]) for k, v in cond.items()}

    def _guided(self, model_fn, x: torch.Tensor, cond: dict, uncond: dict | None) -> torch.Tensor:
        """Model output with classifier-free guidance: one network call on [uncond; cond] rows.

        ``cond``/``uncond`` hold per-request tensors with a leading batch dimension of 1.
        """
        n = x.shape[0]
        if uncond is None or not self._cfg():
            return model_fn(x, self._expand(cond, n))
        both = {k: torch.cat([uncond[k].expand(n, *c.shape[1:]), c.expand(n, *c.shape[1:])]) for k, c in cond.items()}
        out_u, out_c = model_fn(torch.cat([x, x]), both).chunk(2)
        return out_u + self.request.guidance_scale * (out_c - out_u)
