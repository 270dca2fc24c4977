"""The state of a next-scale (VAR) model: :class:`VARState` and its row selection / concatenation.

A :class:`VARState` holds, for N samples, the accumulated features ``f_hat``, the next
scale's input, the KV caches (CFG rows paired), the sampled token maps and
adapter-specific extras; see :mod:`evosearch.pipelines.var` for the layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

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
    """The state of N samples of a next-scale model after ``scale`` scales (see :mod:`evosearch.pipelines.var`).

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
