"""The interface a next-scale model implements for the :class:`~evosearch.pipelines.var.stepper.VARStepper`:
:class:`VARAdapter` (forward one scale with KV caches, update the state with sampled
tokens, decode). Implementations: ``VARDigitsAdapter`` (:mod:`evosearch.bundled.var_digits`),
:class:`~evosearch.pipelines.var.foundation.FoundationVARAdapter`,
:class:`~evosearch.pipelines.var.infinity.InfinityAdapter`.
"""

from __future__ import annotations

from typing import Any

import torch

from .state import VARState


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
