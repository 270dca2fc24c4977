"""The segment-continuation interface :class:`SegmentModel`: what a model provides so that
:class:`~evosearch.pipelines.segments.SegmentStepper` can continue a video segment by segment
(see :mod:`evosearch.pipelines.segments`)."""

from __future__ import annotations

import torch

from ..core.records import Request
from ..core.schedule import NoiseSchedule

__all__ = ["SegmentModel"]


class SegmentModel:
    """The segment-continuation interface (subclass it, or provide the same attributes).

    After :meth:`prepare`:
      - ``schedules``: one :class:`NoiseSchedule` per segment (same length T), usually the same one
      - ``segment_shape``: the latent shape of one segment
      - ``num_segments``: S
    and
      - :meth:`context` ``(prefix)`` — conditioning of segment d from the finished segments
        ``prefix`` (n, d, *segment_shape); ``d == 0`` for the first segment. Returns anything the
        model's :meth:`predict` understands with n rows (a dict of tensors), or None.
      - :meth:`predict` ``(x, d, j, context)`` — (x0_hat, eps_hat) of segment d's latents x
        (n, *segment_shape) at its step j. One network pass per row (with CFG inside).
      - :meth:`decode` ``(segments)`` — frames (n, F, C, H, W) in [0, 1] of the finished segments
        (n, d, *segment_shape), joined into one clip (segments that repeat their conditioning
        frame drop it).
    ``pipe`` (the diffusers pipeline, for the device), ``denoiser`` (its network) and the
    defaults ``default_num_inference_steps`` / ``default_guidance_scale`` / ``default_num_segments``
    complete it.
    """

    pipe = None
    schedules: list[NoiseSchedule]
    segment_shape: tuple[int, ...]
    num_segments: int
    default_num_inference_steps: int = 50
    default_guidance_scale: float = 5.0
    default_num_segments: int = 4
    #: the context depends on the last this-many finished segments only (for the cache)
    context_segments: int = 1
    #: computing a context decodes the previous segment (counted in the Stepper's decode_calls)
    context_decodes: bool = False

    @property
    def denoiser(self) -> torch.nn.Module:
        raise NotImplementedError

    def prepare(self, request: Request, eta: float) -> None:
        raise NotImplementedError

    def context(self, prefix: torch.Tensor):
        raise NotImplementedError

    def predict(self, x: torch.Tensor, d: int, j: int, context) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def decode(self, segments: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
