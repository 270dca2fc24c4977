"""The Stepper protocol: a model as a chain of stochastic steps with explicit randomness.

A Stepper is built from a model object (the families in :mod:`evosearch.pipelines` build
one from a diffusers pipeline, reusing its encoders, denoiser, scheduler config and VAE),
prepared once per request, and then driven by a search method::

    stepper.prepare(prompt, num_inference_steps=50, guidance_scale=7.5)
    x = stepper.start(seeds)                 # (N, *state_shape) initial states
    for i in range(stepper.num_steps):
        x = stepper.step(x, i, noise)        # noise: (N, *state_shape), NoiseSeeds, or None
    images = stepper.finish(x)               # (N, 3, H, W) float in [0, 1], CPU

``step`` is ``predict`` (the denoiser: x0_hat, eps_hat; counts NFE) then ``advance`` (the
schedule's step, no NFE). Micro-batching to ``max_batch_size`` samples (with CFG the
network sees twice as many rows) happens here, so search methods never see a memory
limit; ``on_batch(rows)`` is called after every micro-batch of denoising, which is where
a search checks for a stop request and advances its progress.

What a Stepper can do is declared in :attr:`Stepper.capabilities` (see :data:`CAPABILITIES`),
and a search method's requirements are checked against it once, before any compute
(:func:`check_capabilities`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable, Sequence

import numpy as np
import torch

from .lineage import EVENT_KINDS
from .noise import NoiseSeeds, gaussian_rows
from .records import Request
from .schedule import NoiseSchedule
from .validation import ParameterError, check_int, check_number

#: what a Stepper may be able to do, and what it means
CAPABILITIES = {
    "gaussian": "states are tensors x_t = a_t x0 + s_t eps on a NoiseSchedule: variance-preserving, sigma and "
                "resample mutations, re-noising and sphere neighbours apply",
    "stochastic": "the prepared request's steps inject noise (eta > 0, or sampling at temperature > 0): copies "
                  "of a state diverge, and intermediate states can be mutated with the sampler's own noise",
    "predict": "a step splits into predict (x0_hat, eps_hat; costs NFE) and advance (no NFE), so x0 previews "
               "of intermediate states cost no extra NFE",
    "segments": "a video made of segments that can be continued one at a time (Tree-of-Frames)",
    "scales": "a next-scale (VAR) model whose steps are scales of tokens (TTS-VAR)",
}


def check_capabilities(method_name: str, required, stepper: "Stepper") -> None:
    """A ParameterError naming ``method`` when ``stepper`` lacks a capability ``required`` lists."""
    missing = sorted(set(required) - set(stepper.capabilities))
    if missing == ["stochastic"] and "gaussian" in stepper.capabilities:
        raise ParameterError(f"eta: {method_name} needs a stochastic sampler (eta > 0): "
                             f"{CAPABILITIES['stochastic']}; this pipeline has eta={stepper.eta} "
                             f"(SearchPipeline.from_pipe(..., eta=1.0))")
    if missing:
        why = "; ".join(f"{m} ({CAPABILITIES.get(m, m)})" for m in missing)
        hint = f"; {stepper.suggested_methods}" if stepper.suggested_methods else ""
        raise ParameterError(f"method: {method_name} needs what this {stepper.family} model "
                             f"({type(stepper).__name__}) cannot do: {why}{hint}")


def module_fingerprint(module) -> dict:
    """A short identity of a torch module: class, a hash of its config, a checksum of a few weights
    (rounded, so that the same weights in another dtype or on another device match)."""
    out = {"denoiser": type(module).__name__}
    cfg = getattr(module, "config", None)
    if cfg is not None:
        text = json.dumps({k: v for k, v in dict(cfg).items() if not str(k).startswith("_")}, sort_keys=True,
                          default=str)
        out["config"] = hashlib.sha256(text.encode()).hexdigest()[:16]
    params = list(module.parameters()) if isinstance(module, torch.nn.Module) else []
    if params:
        probe = [params[0], params[len(params) // 2], params[-1]]
        sums = [f"{float(p.detach().double().sum()):.4e}|{float(p.detach().double().abs().sum()):.4e}" for p in probe]
        out["weights"] = hashlib.sha256("/".join(sums).encode()).hexdigest()[:16]
    return out


class Stepper:
    """Base class: subclasses implement ``_prepare``, ``_predict`` and ``_decode``.

    Counters (``nfe``: samples x denoising steps, the papers' unit; ``decode_calls``:
    samples decoded) accumulate over the Stepper's life; search reads differences.
    ``last_x0``: (step, x0_hat) of the latest micro-batch :meth:`predict` or :meth:`step` denoised,
    the x0 preview a search can show or keep without another NFE.
    """

    family: str = "base"
    #: capabilities of every request (see :data:`CAPABILITIES`); "stochastic" is added when eta > 0
    base_capabilities: frozenset = frozenset({"gaussian", "predict"})
    #: event kinds of the Stepper's own, applied by :meth:`apply_event`
    event_kinds: tuple = ()
    #: what to suggest when a method needs a capability this Stepper lacks
    suggested_methods: str = ""

    def __init__(self, pipe, max_batch_size: int = 16, eta: float = 1.0):
        check_int("max_batch_size", max_batch_size, lo=1)
        check_number("eta", eta, 0.0, 1.0, hint=" (0 = deterministic ODE step, 1 = ancestral)")
        self.pipe = pipe
        self.max_batch_size = int(max_batch_size)
        self.eta = float(eta)
        self.nfe = 0
        self.decode_calls = 0
        self.last_x0: tuple[int, torch.Tensor] | None = None
        self.request: Request | None = None
        self.schedule: NoiseSchedule | None = None
        self.state_shape: tuple[int, ...] = ()
        self._device: torch.device | None = None
        self._dtype: torch.dtype | None = None

    # -- request -----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The device the denoiser runs on (resolved once per :meth:`prepare`)."""
        return self._device if self._device is not None else self._resolve_device()

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype if self._dtype is not None else self._resolve_dtype()

    def _resolve_device(self) -> torch.device:
        return self.pipe.device

    def _resolve_dtype(self) -> torch.dtype:
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

    @property
    def capabilities(self) -> frozenset:
        """What the prepared request can do (see :data:`CAPABILITIES`)."""
        return self.base_capabilities | ({"stochastic"} if self.eta > 0 else set())

    @property
    def event_kinds_all(self) -> tuple:
        """Every lineage event kind this Stepper can replay."""
        own = tuple(self.event_kinds)
        return tuple(k for k, need in EVENT_KINDS.items() if need is None or need in self.capabilities) + own

    def fingerprint(self) -> dict:
        """The model's identity recorded in every lineage; replay refuses a lineage of another model."""
        try:
            denoiser = self.denoiser
        except NotImplementedError:  # a bare denoising function (k-diffusion models): the model class only
            return {"pipeline": type(self.pipe).__name__}
        return {"pipeline": type(self.pipe).__name__, **module_fingerprint(denoiser)}

    def prepare(self, prompt, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                negative_prompt: str | None = None, height: int | None = None, width: int | None = None,
                **extra) -> Request:
        """Encode the prompt once and build the noise schedule for this request."""
        steps = self.default_num_inference_steps if num_inference_steps is None else num_inference_steps
        steps = check_int("num_inference_steps", steps, lo=1)
        g = self.default_guidance_scale if guidance_scale is None else guidance_scale
        g = check_number("guidance_scale", g, lo=0.0)
        for name, v in (("height", height), ("width", width)):
            check_int(name, v, lo=1, allow_none=True, hint=" (None: the model's default size)")
        self._device, self._dtype = None, None
        self._device, self._dtype = self._resolve_device(), self._resolve_dtype()
        self.request = Request(prompt=prompt, num_inference_steps=steps, guidance_scale=g, eta=self.eta,
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
        return gaussian_rows(self.state_shape, seeds).to(device=self.device, dtype=self.dtype)

    def start(self, seeds: Sequence[int]) -> torch.Tensor:
        """Initial states x_T, one per seed."""
        return self.sample_noise(seeds)

    def noise_scale(self, i: int) -> float:
        """Std of the noise step i injects (what EvoSearch mutates intermediate states with)."""
        self._require_request()
        return self.schedule.noise_std(i)

    def _noise_rows(self, noise, sl: slice, n: int):
        if noise is None:
            return None
        if isinstance(noise, NoiseSeeds):
            return self.sample_noise(noise.seeds[sl])
        return noise[sl].to(self.device, self.dtype)

    # -- stepping ----------------------------------------------------------------
    def _chunks(self, n: int):
        for lo in range(0, n, self.max_batch_size):
            yield slice(lo, min(n, lo + self.max_batch_size))

    def _check_step(self, states, i: int, noise) -> None:
        self._require_request()
        if not 0 <= i < self.num_steps:
            raise IndexError(f"i: step index must be in [0, {self.num_steps}), got {i}")
        n = len(states)
        if isinstance(noise, NoiseSeeds):
            if len(noise) != n:
                raise ValueError(f"noise: expected {n} seeds, got {len(noise)}")
        elif noise is not None and tuple(noise.shape) != tuple(states.shape):
            raise ValueError(f"noise: expected shape {tuple(states.shape)}, got {tuple(noise.shape)}")

    @torch.no_grad()
    def predict(self, states: torch.Tensor, i: int, on_batch: Callable[[int], None] | None = None):
        """(x0_hat, eps_hat) at step i, in micro-batches; counts NFE."""
        self._check_step(states, i, None)
        x0s, epss = [], []
        for sl in self._chunks(states.shape[0]):
            x0, eps = self._predict(states[sl].to(self.device, self.dtype), i)
            x0s.append(x0)
            epss.append(eps)
            self.nfe += sl.stop - sl.start
            self.last_x0 = (i, x0)
            if on_batch is not None:
                on_batch(sl.stop - sl.start)
        return torch.cat(x0s), torch.cat(epss)

    def _predict(self, x: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def advance(self, x0_hat: torch.Tensor, eps_hat: torch.Tensor, i: int, noise=None) -> torch.Tensor:
        """States after step i from the predictions at step i (no NFE); ``noise`` as in :meth:`step`."""
        self._require_request()
        if self.noise_scale(i) > 0 and isinstance(noise, NoiseSeeds):
            noise = self.sample_noise(noise.seeds)
        return self.schedule.step(x0_hat, eps_hat, i, noise)

    @torch.no_grad()
    def step(self, states: torch.Tensor, i: int, noise=None,
             on_batch: Callable[[int], None] | None = None) -> torch.Tensor:
        """States after step i (N rows in, N rows out). ``noise``: a tensor of the states' shape, or
        :class:`~evosearch.core.noise.NoiseSeeds` (rows drawn per micro-batch), used when
        ``noise_scale(i) > 0``; never drawn here otherwise."""
        self._check_step(states, i, noise)
        stochastic = self.noise_scale(i) > 0
        out = []
        for sl in self._chunks(states.shape[0]):
            x0, eps = self._predict(states[sl].to(self.device, self.dtype), i)
            z = self._noise_rows(noise, sl, states.shape[0]) if stochastic else None
            out.append(self.schedule.step(x0, eps, i, z))
            self.nfe += sl.stop - sl.start
            self.last_x0 = (i, x0)
            if on_batch is not None:
                on_batch(sl.stop - sl.start)
        return torch.cat(out)

    def renoise(self, states: torch.Tensor, from_step: int, to_step: int, noise: torch.Tensor) -> torch.Tensor:
        """States at step ``from_step`` moved back to the noisier step ``to_step`` with the forward process."""
        self._require_request()
        return self.schedule.renoise(states, from_step, to_step, noise.to(states.device))

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
    def select(states: torch.Tensor, index: Sequence[int] | torch.Tensor | np.ndarray) -> torch.Tensor:
        """Rows of ``states`` at ``index`` (states that carry more than a tensor override this)."""
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64), device=states.device)
        return states.index_select(0, idx)

    @staticmethod
    def concat(states_list: Sequence[torch.Tensor]) -> torch.Tensor:
        """Rows of several state batches one after another (states that carry more than a
        tensor override this, with :meth:`select`)."""
        return torch.cat(list(states_list))

    @staticmethod
    def offload(states):
        """States kept for later (archives): moved off the accelerator."""
        return states.detach().cpu() if isinstance(states, torch.Tensor) else states

    def apply_event(self, states, event, noise):
        raise ParameterError(f"lineage: {type(self).__name__} has no event kind {event.kind!r}")

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


__all__ = ["Stepper", "CAPABILITIES", "check_capabilities", "module_fingerprint"]
