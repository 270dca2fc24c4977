"""Token sampling for next-scale models: top-k / top-p filtering (:func:`filter_logits`) and
inverse-CDF sampling with one uniform per draw (:func:`sample_tokens`); see the
"Randomness" section of :mod:`evosearch.pipelines.var`.
"""

from __future__ import annotations

import torch


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
