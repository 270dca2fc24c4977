"""KV caches of external next-scale models (FoundationVision VAR, Infinity): moving a
:class:`~evosearch.pipelines.var.state.VARState`'s caches, stored (n, G, ...), into the
models' attention modules, which hold them as (G * n, ...) rows, for one forward pass
and back out (:class:`_ModuleCaches`).
"""

from __future__ import annotations

import torch


def _pairs(kv: tuple[torch.Tensor, ...]):
    return [(kv[2 * j], kv[2 * j + 1]) for j in range(len(kv) // 2)]


def _to_module_rows(t: torch.Tensor) -> torch.Tensor:
    """(n, G, ...) state layout -> (G * n, ...) rows [all conditional; all unconditional] (VAR/Infinity layout)."""
    return t.transpose(0, 1).reshape(t.shape[0] * t.shape[1], *t.shape[2:])


def _from_module_rows(t: torch.Tensor, g: int) -> torch.Tensor:
    """(G * n, ...) [conditional; unconditional] rows -> (n, G, ...)."""
    return t.reshape(g, t.shape[0] // g, *t.shape[1:]).transpose(0, 1)


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
