"""A minimal pipeline object around any :class:`~evosearch.pipelines.var.adapter.VARAdapter`
(``stepper_family = "var"``): :class:`VARPipeline`.
"""

from __future__ import annotations

import torch

from .adapter import VARAdapter
from .stepper import VARStepper


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
        from ...core.noise import derive_seed

        stepper = VARStepper(self, max_batch_size=max_batch_size)
        stepper.prepare(prompt, guidance_scale=guidance_scale, **sampling)
        seeds = [derive_seed(seed, k) for k in range(num_images_per_prompt)]
        s = stepper.start(seeds)
        for k in range(stepper.num_steps):
            noise = None if stepper.noise_scale(k) == 0 else stepper.sample_noise([derive_seed(x, k) for x in seeds])
            s = stepper.step(s, k, noise)
        return stepper.finish(s)
