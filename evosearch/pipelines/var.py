"""The ``var`` family: next-scale prediction models (VAR, Infinity, the bundled VAR digits model).

A next-scale model generates an image as a pyramid of token maps, coarse to fine: at
scale k a transformer that has seen every earlier scale (block-causal attention, with
a KV cache) predicts all ``h_k x w_k`` tokens of scale k at once; their embeddings are
upsampled and added to an accumulated feature map ``f_hat``; ``f_hat`` resized to the
next scale is that scale's input; the decoder turns the final ``f_hat`` into pixels.

One Stepper step is one scale::

    stepper.prepare("3", guidance_scale=2.0, top_k=0, top_p=0.0, temperature=1.0)
    s = stepper.start(seeds)                         # VARState at scale 0 (nothing sampled yet)
    for k in range(stepper.num_steps):               # num_steps == number of scales
        s = stepper.step(s, k, stepper.sample_noise([derive_seed(seed, k) for seed in seeds]))
    images = stepper.finish(s)                       # (N, 3, H, W) in [0, 1]

**State.** A :class:`VARState` (not a tensor) holds, for N samples, everything the
next step needs: ``f_hat`` (accumulated features, (N, ...)), ``next_input`` (the raw
input of the next scale, (N, tokens, channels)), ``kv`` (one key and one value cache
per attention layer, each (N, G, ...) where G = 2 with classifier-free guidance: the
conditional and unconditional rows of a sample sit together in one row, so every
selection keeps them paired), ``tokens`` (the sampled token map of each generated
scale, (N, draws)) and ``extra`` (adapter-specific per-row tensors). ``len(state)`` is N;
``state[a:b]``, :meth:`VARState.select` and :meth:`VARState.cat` index and join every
piece at once; ``Stepper.select`` / ``Stepper.concat`` dispatch to them, so search code
that only selects and concatenates rows works unchanged (BestOfN, TTS-VAR, replay).

**Randomness.** A step samples scale k's tokens from the guided logits; the randomness
is passed in: ``noise`` holds one uniform in [0, 1) per categorical draw
(:meth:`VARStepper.sample_noise` draws row k from a CPU generator seeded with
``seeds[k]``, shape (N, max draws over scales); step k uses the first ``draws(k)``
columns). Each draw is inverse-CDF sampling of the top-k / top-p filtered,
temperature-scaled distribution (``u`` -> the first token whose cumulative probability
exceeds ``u``), an exact sample of that distribution and a deterministic function of
``u``: one uniform per draw is all the randomness (Gumbel-max would need one per
category). ``noise=None`` (or ``temperature=0``, or ``top_k=1``) is greedy (argmax);
:meth:`noise_scale` is then 0, else 1 (it only says whether a step is stochastic: there
is no Gaussian std in a token sampler).

**Guidance.** With guidance scale g the logits are ``u + g_k (c - u)`` (c, u: the
conditional and unconditional logits); ``cfg_schedule="constant"`` uses g_k = g,
``"linear"`` ramps it as VAR does, g_k = 1 + (g - 1) k / (K - 1). g == 1 skips the
unconditional rows entirely (G = 1). (FoundationVision VAR writes its ``cfg`` as
``(1 + t) c - t u``: g = 1 + cfg; Infinity writes ``cfg c + (1 - cfg) u``: g = cfg.)

**Compute accounting.** One NFE is one sample through one scale (one transformer pass
over that scale's tokens; with guidance one batched cond+uncond pass, the papers'
unit), so a full sample costs K NFE (K = number of scales) and best-of-n costs n K.
Scales are not equally expensive: :attr:`VARStepper.tokens` also counts token
positions predicted (per sample, not doubled for guidance), and search statistics
report both. :meth:`preview` decodes the current ``f_hat`` and costs no NFE (a decode).

**Models.** The Stepper drives a :class:`VARAdapter`, a small object that exposes a
model by its public parts: :meth:`~VARAdapter.forward` (one scale through the
transformer, KV caches in and out), :meth:`~VARAdapter.update` (embed sampled tokens
into ``f_hat`` and the next input) and :meth:`~VARAdapter.decode`. Adapters here:

- the bundled VAR digits model (:mod:`evosearch.pipelines.var_digits`, ``VARDigitsPipeline``);
- :class:`FoundationVARAdapter` for FoundationVision's class-conditional VAR
  (https://github.com/FoundationVision/VAR): wrap a ``VAR`` model object (its VQVAE is
  reached through ``var.vae_proxy[0]`` / ``var.vae_quant_proxy[0]``) as
  ``VARPipeline(FoundationVARAdapter(var))``. Used parts: ``patch_nums``, ``first_l``,
  ``num_classes``, ``Cvae``, ``V``, ``class_emb``, ``pos_start``, ``pos_1LC``,
  ``lvl_embed``/``lvl_1L``, ``word_embed``, ``shared_ada_lin``, ``blocks`` (each called
  as ``b(x=, cond_BD=, attn_bias=None)`` with ``b.attn.kv_caching(True)``; the adapter
  moves ``b.attn.cached_k``/``cached_v`` into and out of the state around every call),
  ``get_logits``, the quantiser's ``embedding`` and ``get_next_autoregressive_input``,
  and the VQVAE's ``fhat_to_img``. Prompts are ImageNet class ids (an int or a string
  such as ``"207"``). VAR's FID-evaluation settings (its README:
  ``autoregressive_infer_cfg(..., cfg=1.5, top_p=0.96, top_k=900)``, the cfg ramped
  linearly over scales) are ``guidance_scale=2.5, cfg_schedule="linear", top_k=900,
  top_p=0.96``, the adapter's defaults.
- :class:`InfinityAdapter` for FoundationVision's Infinity text-to-image models
  (https://github.com/FoundationVision/Infinity): ``VARPipeline(InfinityAdapter(
  infinity, vae, text_tokenizer, text_encoder, scale_schedule))``. Prompts are encoded
  with the T5 tokenizer/encoder (``last_hidden_state``, compacted by the attention mask
  as Infinity expects); the unconditional rows use the negative prompt or the model's
  ``cfg_uncond``. Used parts: ``text_norm``, ``text_proj_for_sos``, ``text_proj_for_ca``,
  ``cfg_uncond``, ``pos_start``, ``shared_ada_lin``, ``block_chunks`` (each
  ``chunk.module`` called block by block with ``scale_ind``, ``rope2d_freqs_grid``),
  ``add_lvl_embeding`` (+ ``add_lvl_embeding_only_first_block``), ``unregistered_blocks``
  (``.sa``/``.attn`` KV caches), ``get_logits``, ``use_bit_label``, ``word_embed``,
  ``norm0_ve``, ``apply_spatial_patchify``, and the BSQ VAE's
  ``quantizer.lfq.indices_to_codes``, ``quantizer.z_interplote_up`` and ``decode``. Tokens
  are bit labels: each position draws ``d`` binary choices, so ``draws(k) = h_k w_k d``
  with two categories each. Guidance is applied on the logits (Infinity's
  ``cfg_insertion_layer=[0]``, the default of its scripts and of TTS-VAR's).
  Infinity's ``tau`` is ``temperature``; of its script defaults (cfg 3, tau 0.5,
  top_k=900, top_p=0.97) top_k does nothing on two-way bit draws and top_p drops a bit
  value whose probability is at most 0.03. Infinity's attention needs flash-attn (CUDA),
  so this adapter could not be exercised on a CPU-only machine: its test only imports it.

Neither model's code is copied: the adapters call these attributes, so they follow
whatever version of the model object they are given. They need the model code
importable (``models.var`` / ``infinity.models.infinity``; e.g. a checkout on
``sys.path``, which ``EVOSEARCH_VAR_REPO`` / ``EVOSEARCH_INFINITY_REPO`` do for the tests);
their tests skip otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .base import Request, Stepper

CFG_SCHEDULES = ("constant", "linear")


# ------------------------------------------------------------------------------- state


NOT_A_LATENT = ("states: a next-scale model's states (VARState: token maps, accumulated features, KV caches) "
                "cannot be mutated, re-noised or denoised like Gaussian latents; EvoSearch, zero-order search, "
                "search over paths and particle resampling need a diffusion or flow model. For next-scale models "
                "use TTSVAR or BestOfN")


def _index(t: torch.Tensor, index) -> torch.Tensor:
    if isinstance(index, slice):
        return t[index]
    return t.index_select(0, index.to(t.device))


@dataclass
class VARState:
    """The state of N samples of a next-scale model after ``scale`` scales (see module docstring).

    Every tensor has the samples on dim 0; ``kv`` tensors are (N, G, ...) with G = 2 when
    guidance is on (row n, index 0: conditional, 1: unconditional), so selecting samples
    moves both halves of each CFG pair together.
    """

    scale: int
    f_hat: torch.Tensor
    next_input: torch.Tensor | None = None
    kv: tuple[torch.Tensor, ...] = ()
    tokens: tuple[torch.Tensor, ...] = ()
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.f_hat.shape[0])

    @property
    def cfg_rows(self) -> int:
        """G: 2 when the KV caches hold conditional and unconditional rows, 1 otherwise (0: no cache yet)."""
        return int(self.kv[0].shape[1]) if self.kv else 0

    def map(self, fn) -> "VARState":
        """A state with ``fn`` applied to every tensor."""
        return VARState(self.scale, fn(self.f_hat), None if self.next_input is None else fn(self.next_input),
                        tuple(fn(t) for t in self.kv), tuple(fn(t) for t in self.tokens),
                        {k: fn(v) for k, v in self.extra.items()})

    def select(self, index) -> "VARState":
        """Rows at ``index`` (a slice, or a sequence / tensor of row indices, repeats allowed)."""
        if not isinstance(index, slice):
            index = torch.as_tensor(np.asarray(index, dtype=np.int64) if not torch.is_tensor(index) else index,
                                    dtype=torch.long).reshape(-1)
            n = len(self)
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
                raise IndexError(f"index: row indices must be in [0, {n}), got {index.tolist()}")
        return self.map(lambda t: _index(t, index))

    def __getitem__(self, index) -> "VARState":
        if isinstance(index, (int, np.integer)):
            raise TypeError("VARState: index with a slice or a sequence of rows (state[k:k+1], state[[k]]), "
                            "not an int")
        return self.select(index)

    def cpu(self) -> "VARState":
        return self.map(lambda t: t.cpu())

    def detach(self) -> "VARState":
        return self.map(lambda t: t.detach())

    def to(self, device) -> "VARState":
        """Every tensor on ``device`` (dtypes unchanged)."""
        return self.map(lambda t: t.to(device))

    @property
    def device(self) -> torch.device:
        return self.f_hat.device

    @staticmethod
    def cat(states: Sequence["VARState"]) -> "VARState":
        """Rows of several states (all at the same scale, with the same pieces) one after another."""
        states = list(states)
        if not states:
            raise ValueError("states: need at least one VARState to concatenate")
        if len(states) == 1:
            return states[0]
        s0 = states[0]
        for s in states[1:]:
            if s.scale != s0.scale:
                raise ValueError(f"states: can only concatenate states at the same scale, got {s0.scale} and {s.scale}")
            if len(s.kv) != len(s0.kv) or len(s.tokens) != len(s0.tokens) or set(s.extra) != set(s0.extra) or (
                    (s.next_input is None) != (s0.next_input is None)):
                raise ValueError("states: can only concatenate states with the same pieces (KV layers, token maps)")
            if s.cfg_rows != s0.cfg_rows:
                raise ValueError(f"states: KV caches with {s0.cfg_rows} and {s.cfg_rows} guidance rows cannot be "
                                 f"joined")
        cat = lambda ts: torch.cat([t.to(ts[0].device) for t in ts])  # noqa: E731
        return VARState(
            s0.scale, cat([s.f_hat for s in states]),
            None if s0.next_input is None else cat([s.next_input for s in states]),
            tuple(cat([s.kv[j] for s in states]) for j in range(len(s0.kv))),
            tuple(cat([s.tokens[j] for s in states]) for j in range(len(s0.tokens))),
            {k: cat([s.extra[k] for s in states]) for k in s0.extra})

    @property
    def shape(self) -> tuple[int, ...]:
        """(N,): rows only; the pieces have their own shapes."""
        return (len(self),)

    # Gaussian mutations / re-noising / x0 previews make no sense on a token pyramid: say so clearly.
    def _not_a_latent(self, *args):
        raise TypeError(NOT_A_LATENT)

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = _not_a_latent

    @property
    def dtype(self):
        raise TypeError(NOT_A_LATENT)

    def __getattr__(self, name):  # only reached for missing attributes (tensor methods a latent-space method calls)
        if name.startswith("_"):
            raise AttributeError(name)
        raise AttributeError(f"VARState has no attribute {name!r}. {NOT_A_LATENT}")


# ----------------------------------------------------------------------------- sampling


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Logits with everything outside the top-k and (VAR/Infinity convention) the top-p
    nucleus set to -inf: sorted ascending, tokens whose cumulative probability is at most
    ``1 - top_p`` are removed, the most likely token always stays. 0 disables either filter."""
    V = logits.shape[-1]
    if 0 < top_k < V:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1.0 - top_p)
        remove[..., -1:] = False
        logits = logits.masked_fill(remove.scatter(-1, sorted_idx, remove), float("-inf"))
    return logits


def sample_tokens(logits: torch.Tensor, uniforms: torch.Tensor | None, top_k: int = 0, top_p: float = 0.0,
                  temperature: float = 1.0) -> torch.Tensor:
    """Token indices (...) from logits (..., V) and one uniform in [0, 1) per draw (...).

    ``uniforms=None``, ``temperature == 0`` or ``top_k == 1``: argmax. Otherwise the
    temperature-scaled, top-k/top-p filtered distribution is sampled by inverse CDF: the
    first token whose cumulative probability exceeds ``u`` (exactly that distribution,
    a deterministic function of the uniforms; zero-probability tokens are never chosen).
    """
    logits = logits.float()
    if uniforms is None or temperature == 0 or top_k == 1:
        return logits.argmax(dim=-1)
    if uniforms.shape != logits.shape[:-1]:
        raise ValueError(f"noise: expected {tuple(logits.shape[:-1])} uniforms (one per draw), "
                         f"got {tuple(uniforms.shape)}")
    logits = filter_logits(logits / temperature, top_k, top_p)
    u = uniforms.to(logits.device, torch.float32)
    probs = logits.softmax(dim=-1)
    cdf = probs.cumsum(dim=-1)
    value = (u * cdf[..., -1]).unsqueeze(-1).contiguous()
    idx = torch.searchsorted(cdf.contiguous(), value, right=True).squeeze(-1)
    return idx.clamp_(max=logits.shape[-1] - 1)


# ------------------------------------------------------------------------------ adapter


class VARAdapter:
    """A next-scale model as the VARStepper sees it. Subclasses set ``num_scales`` and
    implement the methods below; ``module`` is the transformer (its device and dtype are used).

    All per-row tensors are on dim 0; with guidance (``cfg=True``) a forward pass runs the
    conditional and unconditional rows of each sample, and the returned KV caches are
    (n, 2, ...) (index 0 conditional, 1 unconditional).
    """

    num_scales: int = 0
    categories: int = 0  # categories per draw (codebook size; 2 for bit labels)
    default_guidance_scale: float = 1.0
    default_top_k: int = 0
    default_top_p: float = 0.0
    default_temperature: float = 1.0
    default_cfg_schedule: str = "constant"
    module: torch.nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    def tokens_at(self, k: int) -> int:
        """Token positions of scale k."""
        raise NotImplementedError

    def draws_at(self, k: int) -> int:
        """Categorical draws of scale k (= tokens_at for codebook models, positions x bits for bit labels)."""
        return self.tokens_at(k)

    def check_size(self, height: int | None, width: int | None) -> None:
        """Raise for an image size the model cannot make (default: any size is the model's own)."""
        if height is not None or width is not None:
            raise ValueError(f"height/width: {type(self).__name__} makes images of one fixed size; pass None")

    def encode(self, prompt, negative_prompt=None) -> Any:
        """Per-request conditioning (for one sample; broadcast to any number of rows in forward)."""
        raise NotImplementedError

    def init_state(self, n: int, cond) -> VARState:
        """The state of n samples before scale 0."""
        raise NotImplementedError

    def forward(self, state: VARState, k: int, cond, cfg: bool) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                          tuple[torch.Tensor, ...]]:
        """Scale k through the transformer: (conditional logits (n, draws_at(k), categories),
        unconditional logits or None, the KV caches with scale k appended, each (n, G, ...))."""
        raise NotImplementedError

    def update(self, state: VARState, k: int, idx: torch.Tensor, kv: tuple[torch.Tensor, ...]) -> VARState:
        """The state after scale k with sampled draws ``idx`` (n, draws_at(k)); never modifies ``state``."""
        raise NotImplementedError

    def decode(self, state: VARState) -> torch.Tensor:
        """Images (n, C, H, W) in [0, 1] from the accumulated features (at any scale: a preview)."""
        raise NotImplementedError


# ------------------------------------------------------------------------------ stepper


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


class VARStepper(Stepper):
    """Stepper for next-scale (VAR) models: one step per scale (see module docstring).

    ``pipe`` is a pipeline with ``stepper_family = "var"`` and a ``var_adapter()`` method
    (``VARDigitsPipeline``, ``VARPipeline``), or pass ``adapter`` directly. ``eta`` is
    accepted for a uniform interface and recorded, but a token sampler has no eta.
    """

    family = "var"

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

    @property
    def device(self) -> torch.device:
        return self.adapter.device

    @property
    def dtype(self) -> torch.dtype:
        return self.adapter.dtype

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
        if num_inference_steps is not None and (not _is_int(num_inference_steps) or num_inference_steps != K):
            raise ValueError(f"num_inference_steps: a next-scale model takes one step per scale; this one has {K} "
                             f"scales, so pass None or {K}, got {num_inference_steps!r}")
        g = a.default_guidance_scale if guidance_scale is None else guidance_scale
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0:
            raise ValueError(f"guidance_scale: must be a finite number >= 0, got {guidance_scale!r}")
        top_k = a.default_top_k if top_k is None else top_k
        if not _is_int(top_k) or top_k < 0:
            raise ValueError(f"top_k: must be an integer >= 0 (0 = no top-k filter), got {top_k!r}")
        top_p = a.default_top_p if top_p is None else top_p
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 <= float(top_p) <= 1.0:
            raise ValueError(f"top_p: must be in [0, 1] (0 or 1 = no nucleus filter), got {top_p!r}")
        temperature = a.default_temperature if temperature is None else temperature
        if (isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature)
                or temperature < 0):
            raise ValueError(f"temperature: must be a finite number >= 0 (0 = greedy), got {temperature!r}")
        cfg_schedule = a.default_cfg_schedule if cfg_schedule is None else cfg_schedule
        if cfg_schedule not in CFG_SCHEDULES:
            raise ValueError(f"cfg_schedule: must be one of {', '.join(CFG_SCHEDULES)}, got {cfg_schedule!r}")
        a.check_size(height, width)
        extra = {"top_k": int(top_k), "top_p": float(top_p), "temperature": float(temperature),
                 "cfg_schedule": cfg_schedule}
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
        rows = [torch.rand(self.state_shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        return torch.stack(rows) if rows else torch.empty((0, *self.state_shape))

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
    def step(self, states: VARState, i: int, noise: torch.Tensor | None = None) -> VARState:
        """Sample scale i for every row (N rows in, N rows out); ``noise`` (N, >= draws_at(i))
        uniforms, None for greedy. Counts N NFE and N * tokens_at(i) tokens."""
        self._require_request()
        if not isinstance(states, VARState):
            raise TypeError(f"states: expected a VARState (from start() or step()), got {type(states).__name__}")
        if not 0 <= i < self.num_steps:
            raise IndexError(f"i: step index must be in [0, {self.num_steps}), got {i}")
        if states.scale != i:
            raise ValueError(f"states: are at scale {states.scale}; step {i} needs states at scale {i}")
        n = len(states)
        m = self.adapter.draws_at(i)
        if noise is not None:
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
            u = None if noise is None else noise[sl, :m]
            idx = sample_tokens(logits, u, x["top_k"], x["top_p"], x["temperature"])
            out.append(self.adapter.update(chunk, i, idx, kv))
        self.nfe += n
        self.tokens += n * self.adapter.tokens_at(i)
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


# --------------------------------------------------------------------- generic pipeline


class VARPipeline:
    """A minimal pipeline around any :class:`VARAdapter` (FoundationVision VAR, Infinity):
    ``SearchPipeline.from_pipe(VARPipeline(FoundationVARAdapter(var)), reward=..., method=TTSVAR())``.
    Calling it samples plainly (one sample per seed)."""

    stepper_family = "var"

    def __init__(self, adapter: VARAdapter):
        if not isinstance(adapter, VARAdapter):
            raise TypeError(f"adapter: expected a VARAdapter, got {type(adapter).__name__}")
        self.adapter = adapter

    def var_adapter(self) -> VARAdapter:
        return self.adapter

    @property
    def device(self) -> torch.device:
        return self.adapter.device

    @torch.no_grad()
    def __call__(self, prompt, num_images_per_prompt: int = 1, seed: int = 0, guidance_scale: float | None = None,
                 max_batch_size: int = 16, **sampling) -> torch.Tensor:
        """Images (n, 3, H, W) in [0, 1]; sample k uses noise seeds derived from (seed, k)."""
        from .base import derive_seed

        stepper = VARStepper(self, max_batch_size=max_batch_size)
        stepper.prepare(prompt, guidance_scale=guidance_scale, **sampling)
        seeds = [derive_seed(seed, k) for k in range(num_images_per_prompt)]
        s = stepper.start(seeds)
        for k in range(stepper.num_steps):
            noise = None if stepper.noise_scale(k) == 0 else stepper.sample_noise([derive_seed(x, k) for x in seeds])
            s = stepper.step(s, k, noise)
        return stepper.finish(s)


# ---------------------------------------------------------------- FoundationVision VAR


def _pairs(kv: tuple[torch.Tensor, ...]):
    return [(kv[2 * j], kv[2 * j + 1]) for j in range(len(kv) // 2)]


def _to_module_rows(t: torch.Tensor) -> torch.Tensor:
    """(n, G, ...) state layout -> (G * n, ...) rows [all conditional; all unconditional] (VAR/Infinity layout)."""
    return t.transpose(0, 1).reshape(t.shape[0] * t.shape[1], *t.shape[2:])


def _from_module_rows(t: torch.Tensor, g: int) -> torch.Tensor:
    """(G * n, ...) [conditional; unconditional] rows -> (n, G, ...)."""
    return t.reshape(g, t.shape[0] // g, *t.shape[1:]).transpose(0, 1)


def _parse_class_label(prompt, num_classes: int) -> int:
    allowed = f"a class id 0-{num_classes - 1} (an int, or a string such as '207')"
    if torch.is_tensor(prompt) and prompt.numel() == 1:
        prompt = int(prompt.item())
    if isinstance(prompt, np.integer):
        prompt = int(prompt)
    if isinstance(prompt, str) and prompt.strip().isdigit():
        prompt = int(prompt.strip())
    if isinstance(prompt, int) and not isinstance(prompt, bool) and 0 <= prompt < num_classes:
        return prompt
    raise ValueError(f"prompt: expected {allowed}, got {prompt!r}")


class _ModuleCaches:
    """Moves a state's KV caches into attention modules (``kv_caching(True)``, ``cached_k``/``cached_v``)
    for one forward pass and back out (as (n, G, ...)), leaving the modules without a cache."""

    def __init__(self, attns, kv, g: int):
        self.attns, self.kv, self.g = list(attns), kv, g

    def __enter__(self):
        for j, attn in enumerate(self.attns):
            attn.kv_caching(True)
            if self.kv:
                k, v = self.kv[2 * j], self.kv[2 * j + 1]
                attn.cached_k, attn.cached_v = _to_module_rows(k), _to_module_rows(v)
        return self

    def collect(self) -> tuple[torch.Tensor, ...]:
        out = []
        for attn in self.attns:
            out += [_from_module_rows(attn.cached_k, self.g), _from_module_rows(attn.cached_v, self.g)]
        return tuple(out)

    def __exit__(self, *exc):
        for attn in self.attns:
            attn.kv_caching(False)
        return False


class FoundationVARAdapter(VARAdapter):
    """FoundationVision's class-conditional ``VAR`` (models/var.py) by its public attributes.

    ``var``: a ``VAR`` model object (with its VQVAE attached, as ``build_vae_var`` returns
    it). Prompts: ImageNet class ids. Defaults: VAR's FID settings (cfg=1.5 -> guidance_scale
    2.5 on the linear ramp, top_k=900, top_p=0.96). With ``top_k=1`` the Stepper reproduces
    ``autoregressive_infer_cfg(..., top_k=1)`` (tested when the VAR code is importable).
    """

    default_guidance_scale = 2.5
    default_top_k = 900
    default_top_p = 0.96
    default_temperature = 1.0
    default_cfg_schedule = "linear"

    def __init__(self, var):
        for name in ("patch_nums", "class_emb", "blocks", "get_logits", "word_embed", "vae_proxy", "vae_quant_proxy"):
            if not hasattr(var, name):
                raise TypeError(f"var: expected FoundationVision's VAR model object (missing attribute {name!r}), "
                                f"got {type(var).__name__}")
        self.var = var
        self.module = var
        self.patch_nums = tuple(int(p) for p in var.patch_nums)
        self.num_scales = len(self.patch_nums)
        self.categories = int(var.V)
        ends = np.cumsum([p * p for p in self.patch_nums])
        self.begin_ends = [(int(e - p * p), int(e)) for p, e in zip(self.patch_nums, ends)]

    def tokens_at(self, k: int) -> int:
        return self.patch_nums[k] ** 2

    def encode(self, prompt, negative_prompt=None):
        if negative_prompt not in (None, ""):
            raise ValueError("negative_prompt: class-conditional VAR has no negative prompt (the unconditional rows "
                             "use the null class); pass None")
        return torch.tensor([_parse_class_label(prompt, int(self.var.num_classes))], dtype=torch.long)

    def init_state(self, n: int, cond) -> VARState:
        pn = self.patch_nums[-1]
        f_hat = torch.zeros(n, int(self.var.Cvae), pn, pn, device=self.device)
        return VARState(0, f_hat)

    def forward(self, state, k, cond, cfg):
        var = self.var
        n, g = len(state), (2 if cfg else 1)
        label = cond.to(self.device).expand(n)
        labels = torch.cat([label, torch.full_like(label, int(var.num_classes))]) if cfg else label
        cond_BD = var.class_emb(labels)
        lvl_pos = var.lvl_embed(var.lvl_1L) + var.pos_1LC
        bg, ed = self.begin_ends[k]
        if k == 0:
            first_l = int(var.first_l)
            x = (cond_BD.unsqueeze(1).expand(g * n, first_l, -1) + var.pos_start.expand(g * n, first_l, -1)
                 + lvl_pos[:, :first_l])
        else:
            x = var.word_embed(state.next_input) + lvl_pos[:, bg:ed]
            x = x.repeat(g, 1, 1)
        with _ModuleCaches([b.attn for b in var.blocks], state.kv, g) as caches:
            gss = var.shared_ada_lin(cond_BD)
            for b in var.blocks:
                x = b(x=x, cond_BD=gss, attn_bias=None)
            logits = var.get_logits(x, cond_BD)
            kv = caches.collect()
        return logits[:n], (logits[n:] if cfg else None), kv

    def update(self, state, k, idx, kv):
        quant = self.var.vae_quant_proxy[0]
        pn = self.patch_nums[k]
        n = len(state)
        h = quant.embedding(idx).transpose(1, 2).reshape(n, int(self.var.Cvae), pn, pn)
        f_hat, nxt = quant.get_next_autoregressive_input(k, self.num_scales, state.f_hat.clone(), h)
        next_input = None
        if k != self.num_scales - 1:
            next_input = nxt.reshape(n, int(self.var.Cvae), -1).transpose(1, 2)
        return VARState(k + 1, f_hat, next_input, kv, state.tokens + (idx,), dict(state.extra))

    def decode(self, state):
        return self.var.vae_proxy[0].fhat_to_img(state.f_hat).add(1).mul(0.5)


# ---------------------------------------------------------------------------- Infinity


class InfinityAdapter(VARAdapter):
    """FoundationVision's Infinity (text-to-image, bitwise tokens) by its public attributes.

    Args:
        infinity: the ``Infinity`` transformer (as ``tools/run_infinity.load_transformer`` returns it).
        vae: its BSQ VAE (``load_visual_tokenizer``).
        text_tokenizer, text_encoder: the T5 tokenizer and encoder (``load_tokenizer``).
        scale_schedule: the (t, h, w) token grid per scale, e.g.
            ``[(1, h, w) for _, h, w in dynamic_resolution_h_w[1.0]["1M"]["scales"]]``.
        max_text_length: tokenizer max_length (512 in Infinity's scripts).
    Defaults follow Infinity's scripts: guidance 3 (``cfg_list``), temperature 0.5
    (``tau``), top_k 900 (no effect on two-way draws), top_p 0.97.
    """

    default_guidance_scale = 3.0
    default_top_k = 900
    default_top_p = 0.97
    default_temperature = 0.5
    default_cfg_schedule = "constant"

    def __init__(self, infinity, vae, text_tokenizer, text_encoder, scale_schedule, max_text_length: int = 512):
        for name in ("unregistered_blocks", "codebook_dim", "text_proj_for_sos", "text_proj_for_ca", "get_logits",
                     "word_embed", "pos_start"):
            if not hasattr(infinity, name):
                raise TypeError(f"infinity: expected FoundationVision's Infinity model object (missing attribute "
                                f"{name!r}), got {type(infinity).__name__}")
        if not getattr(infinity, "use_bit_label", False):
            raise ValueError("infinity: only bit-label Infinity models (use_bit_label=1, the released ones) are "
                             "supported")
        self.infinity, self.vae = infinity, vae
        self.module = infinity
        self.tokenizer, self.text_encoder = text_tokenizer, text_encoder
        self.max_text_length = int(max_text_length)
        self.scale_schedule = [tuple(int(v) for v in s) for s in scale_schedule]
        if any(len(s) != 3 for s in self.scale_schedule):
            raise ValueError(f"scale_schedule: expected (t, h, w) triples, got {scale_schedule!r}")
        self.patchify = bool(getattr(infinity, "apply_spatial_patchify", False))
        self.vae_schedule = ([(t, 2 * h, 2 * w) for t, h, w in self.scale_schedule] if self.patchify
                             else list(self.scale_schedule))
        self.num_scales = len(self.scale_schedule)
        self.categories = 2
        self.bits = int(infinity.codebook_dim)  # bits per token position (x4 with spatial patchify)
        self.code_channels = self.bits // 4 if self.patchify else self.bits
        self._ca_cache: dict = {}

    def tokens_at(self, k: int) -> int:
        t, h, w = self.scale_schedule[k]
        return t * h * w

    def draws_at(self, k: int) -> int:
        return self.tokens_at(k) * self.bits

    def _text(self, prompt: str):
        tok = self.tokenizer(text=[prompt], max_length=self.max_text_length, padding="max_length", truncation=True,
                             return_tensors="pt")
        dev = next(self.text_encoder.parameters()).device
        ids, mask = tok.input_ids.to(dev), tok.attention_mask.to(dev)
        feats = self.text_encoder(input_ids=ids, attention_mask=mask)["last_hidden_state"].float()
        return feats[0, : int(mask.sum())].to(self.device)

    def encode(self, prompt, negative_prompt=None):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt: Infinity needs a non-empty text prompt, got {prompt!r}")
        cond = self._text(prompt)
        if negative_prompt:
            uncond = self._text(negative_prompt)
        else:
            uncond = self.infinity.cfg_uncond[: cond.shape[0]].to(self.device, cond.dtype)
        self._ca_cache = {}
        return {"cond": cond, "uncond": uncond}

    def init_state(self, n: int, cond) -> VARState:
        t, h, w = self.vae_schedule[-1]
        summed = torch.zeros(n, self.code_channels, t, h, w, device=self.device)
        return VARState(0, summed)

    def _text_inputs(self, cond, n: int, cfg: bool):
        key = (n, cfg)
        if key not in self._ca_cache:
            rows = [cond["cond"]] * n + ([cond["uncond"]] * n if cfg else [])
            lens = torch.tensor([r.shape[0] for r in rows], dtype=torch.int32)
            cu = F.pad(lens.cumsum(0, dtype=torch.int32), (1, 0)).to(self.device)
            kv = self.infinity.text_norm(torch.cat(rows))
            sos = self.infinity.text_proj_for_sos((kv, cu, int(lens.max())))
            ca_kv = (self.infinity.text_proj_for_ca(kv), cu, int(lens.max()))
            self._ca_cache = {key: (sos, ca_kv)}  # one entry: chunk sizes repeat step after step
        return self._ca_cache[key]

    def forward(self, state, k, cond, cfg):
        inf = self.infinity
        n, g = len(state), (2 if cfg else 1)
        sos, ca_kv = self._text_inputs(cond, n, cfg)
        cond_BD = sos
        if k == 0:
            x = sos.unsqueeze(1).expand(g * n, 1, -1) + inf.pos_start.expand(g * n, 1, -1)
        else:
            x = inf.word_embed(inf.norm0_ve(state.next_input)).repeat(g, 1, 1)
        attns = [(b.sa if hasattr(b, "sa") else b.attn) for b in inf.unregistered_blocks]
        with _ModuleCaches(attns, state.kv, g) as caches:
            gss = inf.shared_ada_lin(cond_BD.float()).float().contiguous()
            only_first = bool(getattr(inf, "add_lvl_embeding_only_first_block", True))
            chunks = [c.module for c in inf.block_chunks] if hasattr(inf, "block_chunks") else [inf.blocks]
            rope = getattr(inf, "rope2d_freqs_grid", None)
            for j, blocks in enumerate(chunks):
                if j == 0 or not only_first:
                    x = inf.add_lvl_embeding(x, k, self.scale_schedule, need_to_pad=0)
                for m in blocks:
                    x = m(x=x, cond_BD=gss, ca_kv=ca_kv, attn_bias_or_two_vector=None, attn_fn=None,
                          scale_schedule=self.scale_schedule, rope2d_freqs_grid=rope, scale_ind=k)
            logits = inf.get_logits(x, cond_BD)
            kv = caches.collect()
        logits = logits.reshape(g * n, -1, 2)
        return logits[:n], (logits[n:] if cfg else None), kv

    def update(self, state, k, idx, kv):
        n = len(state)
        t, h, w = self.scale_schedule[k]
        bits = idx.reshape(n, h, w, -1)
        if self.patchify:
            bits = F.pixel_shuffle(bits.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
        codes = self.vae.quantizer.lfq.indices_to_codes(bits.unsqueeze(1), label_type="bit_label")
        mode = self.vae.quantizer.z_interplote_up
        last = k == self.num_scales - 1
        summed = state.f_hat + (codes if last else F.interpolate(codes, size=self.vae_schedule[-1], mode=mode))
        next_input = None
        if not last:
            nxt = F.interpolate(summed, size=self.vae_schedule[k + 1], mode=mode).squeeze(-3)
            if self.patchify:
                nxt = F.pixel_unshuffle(nxt, 2)
            next_input = nxt.reshape(n, nxt.shape[1], -1).permute(0, 2, 1)
        return VARState(k + 1, summed, next_input, kv, state.tokens + (idx,), dict(state.extra))

    def decode(self, state):
        return self.vae.decode(state.f_hat.squeeze(-3)).add(1).mul(0.5)


__all__ = ["VARState", "VARStepper", "VARAdapter", "VARPipeline", "FoundationVARAdapter", "InfinityAdapter",
           "sample_tokens", "filter_logits", "CFG_SCHEDULES"]
