"""The Stepper of the ``var`` family: :class:`VARStepper`, one step per scale (guidance,
token sampling, NFE / token accounting, row selection); see :mod:`evosearch.pipelines.var`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ...core.noise import NoiseSeeds, uniform_rows
from ...core.records import Request
from ...core.stepper import Stepper
from ...core.validation import check_choice, check_int, check_number
from .adapter import VARAdapter
from .sampling import sample_tokens
from .state import VARState

CFG_SCHEDULES = ("constant", "linear")


class VARStepper(Stepper):
    """Stepper for next-scale (VAR) models: one step per scale (see :mod:`evosearch.pipelines.var`).

    ``pipe`` is a pipeline with ``stepper_family = "var"`` and a ``var_adapter()`` method
    (``VARDigitsPipeline``, ``VARPipeline``), or pass ``adapter`` directly. ``eta`` is
    accepted for a uniform interface and recorded, but a token sampler has no eta.
    """

    family = "var"
    base_capabilities = frozenset({"scales"})
    suggested_methods = "next-scale models run TTSVAR (tts-var) or BestOfN (best-of-n)"

    def __init__(self, pipe, max_batch_size: int = 16, eta: float = 1.0, adapter: VARAdapter | None = None):
        super().__init__(pipe, max_batch_size=max_batch_size, eta=eta)
        if adapter is None:
            if not hasattr(pipe, "var_adapter"):
                raise TypeError(f"pipe: {type(pipe).__name__} has no var_adapter(); wrap the model in a VARAdapter "
                                f"(e.g. VARPipeline(FoundationVARAdapter(var)))")
            adapter = pipe.var_adapter()
        if not isinstance(adapter, VARAdapter):
            raise TypeError(f"adapter: expected a VARAdapter, got {type(adapter).__name__}")
        self.adapter = adapter
        self.tokens = 0
        self.state_shape = (max(adapter.draws_at(k) for k in range(adapter.num_scales)),)
        self._cond = None
        self._cfg_on = False

    # -- model ---------------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        return self.adapter.module

    def _resolve_device(self) -> torch.device:
        return self.adapter.device

    def _resolve_dtype(self) -> torch.dtype:
        return self.adapter.dtype

    @property
    def capabilities(self) -> frozenset:
        """Next-scale states ("scales"); "stochastic" when the request samples tokens (not greedy)."""
        sampling = self.request is not None and self.noise_scale(0) > 0
        return self.base_capabilities | ({"stochastic"} if sampling else set())

    @property
    def default_num_inference_steps(self) -> int:
        return self.adapter.num_scales

    @property
    def default_guidance_scale(self) -> float:
        return float(self.adapter.default_guidance_scale)

    def tokens_at(self, k: int) -> int:
        return self.adapter.tokens_at(k)

    def draws_at(self, k: int) -> int:
        return self.adapter.draws_at(k)

    # -- request -------------------------------------------------------------------
    def prepare(self, prompt, num_inference_steps: int | None = None, guidance_scale: float | None = None,
                negative_prompt: str | None = None, height: int | None = None, width: int | None = None,
                top_k: int | None = None, top_p: float | None = None, temperature: float | None = None,
                cfg_schedule: str | None = None) -> Request:
        """Encode the prompt once; the sampling settings are recorded in ``request.extra``
        (so lineages replay with them). ``num_inference_steps`` must be None or the number of scales."""
        a = self.adapter
        K = a.num_scales
        check_int("num_inference_steps", num_inference_steps, lo=K, hi=K, allow_none=True,
                  hint=f" (a next-scale model takes one step per scale; this one has {K} scales)")
        g = check_number("guidance_scale", a.default_guidance_scale if guidance_scale is None else guidance_scale, lo=0)
        top_k = check_int("top_k", a.default_top_k if top_k is None else top_k, lo=0, hint=" (0 = no top-k filter)")
        top_p = check_number("top_p", a.default_top_p if top_p is None else top_p, lo=0, hi=1,
                             hint=" (0 or 1 = no nucleus filter)")
        temperature = check_number("temperature", a.default_temperature if temperature is None else temperature,
                                   lo=0, hint=" (0 = greedy)")
        cfg_schedule = check_choice("cfg_schedule", a.default_cfg_schedule if cfg_schedule is None else cfg_schedule,
                                    CFG_SCHEDULES)
        a.check_size(height, width)
        extra = {"top_k": top_k, "top_p": top_p, "temperature": temperature, "cfg_schedule": cfg_schedule}
        request = Request(prompt=prompt, num_inference_steps=K, guidance_scale=float(g), eta=self.eta,
                          negative_prompt=negative_prompt, height=height, width=width, extra=extra)
        with torch.no_grad():
            cond = a.encode(prompt, negative_prompt)
        self.request, self._cond = request, cond
        self._cfg_on = float(g) != 1.0
        return request

    @property
    def num_steps(self) -> int:
        self._require_request()
        return self.adapter.num_scales

    def guidance_at(self, k: int) -> float:
        """g_k: the guidance scale of scale k under the request's cfg_schedule."""
        g = self.request.guidance_scale
        K = self.adapter.num_scales
        if self.request.extra["cfg_schedule"] == "linear" and K > 1:
            return 1.0 + (g - 1.0) * k / (K - 1)
        return g

    # -- randomness ----------------------------------------------------------------
    def sample_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """Uniforms in [0, 1) (N, max draws per scale), float32 on the CPU; row k from a
        generator seeded with ``seeds[k]`` (the same seed gives the same row in any batch)."""
        return uniform_rows(self.state_shape, seeds)

    def start(self, seeds: Sequence[int]) -> VARState:
        """The state before scale 0, one row per seed (nothing random yet: the first draws happen at step 0)."""
        self._require_request()
        return self.adapter.init_state(len(seeds), self._cond)

    def noise_scale(self, i: int) -> float:
        """1.0 when step i samples (the step takes uniforms), 0.0 when it is greedy."""
        self._require_request()
        x = self.request.extra
        return 0.0 if (x["temperature"] == 0 or x["top_k"] == 1) else 1.0

    # -- stepping ------------------------------------------------------------------
    def predict(self, states, i):
        raise NotImplementedError("VARStepper: a next-scale model has no x0/eps prediction; use step() and "
                                  "preview() (methods built on predict/advance, such as ParticleSearch, need a "
                                  "diffusion or flow Stepper; use TTSVAR for next-scale models)")

    @torch.no_grad()
    def step(self, states: VARState, i: int, noise=None, on_batch=None) -> VARState:
        """Sample scale i for every row (N rows in, N rows out); ``noise`` (N, >= draws_at(i))
        uniforms or :class:`~evosearch.core.NoiseSeeds`, None for greedy. Counts N NFE and
        N * tokens_at(i) tokens; ``on_batch(rows)`` after each micro-batch."""
        self._require_request()
        if not isinstance(states, VARState):
            raise TypeError(f"states: expected a VARState (from start() or step()), got {type(states).__name__}")
        if not 0 <= i < self.num_steps:
            raise IndexError(f"i: step index must be in [0, {self.num_steps}), got {i}")
        if states.scale != i:
            raise ValueError(f"states: are at scale {states.scale}; step {i} needs states at scale {i}")
        n = len(states)
        m = self.adapter.draws_at(i)
        if isinstance(noise, NoiseSeeds):
            if len(noise) != n:
                raise ValueError(f"noise: expected {n} seeds, got {len(noise)}")
        elif noise is not None:
            if noise.ndim != 2 or noise.shape[0] != n or noise.shape[1] < m:
                raise ValueError(f"noise: expected uniforms of shape ({n}, >= {m}) (e.g. sample_noise(seeds)), "
                                 f"got {tuple(noise.shape)}")
        x = self.request.extra
        g = self.guidance_at(i)
        out = []
        for sl in self._chunks(n):
            chunk = states[sl]
            logits_c, logits_u, kv = self.adapter.forward(chunk, i, self._cond, self._cfg_on)
            logits = logits_c.float()
            if logits_u is not None:
                logits = logits_u.float() + g * (logits - logits_u.float())
            u = None if noise is None else (self.sample_noise(noise.seeds[sl]) if isinstance(noise, NoiseSeeds)
                                            else noise[sl])[:, :m]
            idx = sample_tokens(logits, u, x["top_k"], x["top_p"], x["temperature"])
            out.append(self.adapter.update(chunk, i, idx, kv))
            rows = sl.stop - sl.start
            self.nfe += rows
            self.tokens += rows * self.adapter.tokens_at(i)
            if on_batch is not None:
                on_batch(rows)
        return VARState.cat(out) if out else states

    # -- outputs -------------------------------------------------------------------
    @torch.no_grad()
    def finish(self, states: VARState) -> torch.Tensor:
        """Decode the accumulated features to images (N, 3, H, W) float32 in [0, 1] on the CPU
        (at an intermediate scale this is the preview)."""
        self._require_request()
        if not isinstance(states, VARState):
            raise TypeError(f"states: expected a VARState, got {type(states).__name__}")
        out = [self.adapter.decode(states[sl]).float().clamp(0, 1).cpu() for sl in self._chunks(len(states))]
        self.decode_calls += len(states)
        images = torch.cat(out) if out else torch.empty(0)
        return images.expand(-1, 3, -1, -1) if images.ndim == 4 and images.shape[1] == 1 else images

    def preview(self, states: VARState, i: int | None = None) -> torch.Tensor:
        """The image of the current accumulated features (no NFE; one decode per sample)."""
        return self.finish(states)

    @staticmethod
    def select(states, index):
        """Rows at ``index`` of a VARState (every piece, CFG pairs kept together) or a tensor."""
        if isinstance(states, VARState):
            return states.select(index)
        return Stepper.select(states, index)

    @staticmethod
    def concat(states_list):
        states_list = list(states_list)
        if states_list and isinstance(states_list[0], VARState):
            return VARState.cat(states_list)
        return torch.cat(states_list)
