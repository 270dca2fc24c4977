"""SearchPipeline: a diffusers pipeline + a reward + a search method."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .pipelines import stepper_for
from .rewards.base import as_reward
from .search import BestOfN, SearchContext, SearchInterrupted, SearchStats
from .search.context import replay_lineage
from .search.lineage import Lineage

OUTPUT_TYPES = ("pil", "np", "pt")


def convert_images(images: torch.Tensor, output_type: str):
    """(N, 3, H, W) uint8 or float [0, 1] -> list of PIL images, (N, H, W, 3) float numpy, or a float tensor."""
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    if output_type == "pt":
        return images
    arr = images.permute(0, 2, 3, 1).numpy()
    if output_type == "np":
        return arr
    return [Image.fromarray((a * 255).round().clip(0, 255).astype(np.uint8)) for a in arr]


def convert_videos(videos: torch.Tensor, output_type: str):
    """(N, F, 3, H, W) uint8 or float [0, 1] -> N lists of PIL frames, (N, F, H, W, 3) float numpy, or a float
    tensor (N, F, 3, H, W)."""
    if videos.dtype == torch.uint8:
        videos = videos.float() / 255.0
    if output_type == "pt":
        return videos
    if output_type == "np":
        return videos.permute(0, 1, 3, 4, 2).numpy()
    return [convert_images(v, "pil") for v in videos]


@dataclass
class BestCandidate:
    """The best sample: ``image`` (for a video model its first frame), ``video`` (video models:
    the frames, in the output type), reward, lineage."""

    image: Any
    reward: float
    lineage: Lineage
    video: Any = None


@dataclass
class SearchPipelineOutput:
    """``images``/``rewards``: the final population, best first (the best-ever candidate on
    top even when an earlier generation found it); ``best``; ``stats``; ``history`` (one
    entry per scored generation or wave); ``complete`` is False after an interrupt.

    Video models: ``videos`` holds the population's videos in the same order — for
    ``output_type="pil"`` one list of PIL frames per video, for ``"np"`` an array
    (N, F, H, W, 3), for ``"pt"`` a tensor (N, F, 3, H, W) — and ``images`` each video's
    first frame (a poster image, so image-only consumers keep working). ``videos`` is None
    for image models."""

    images: Any
    rewards: list[float]
    best: BestCandidate | None
    stats: SearchStats
    history: list[dict]
    complete: bool = True
    settings: dict = field(default_factory=dict)
    videos: Any = None

    def to_record(self) -> dict:
        """A JSON-serialisable record (no images)."""
        return {"best_reward": None if self.best is None else self.best.reward, "complete": self.complete,
                "settings": self.settings, "stats": self.stats.to_dict(),
                "lineage": None if self.best is None else self.best.lineage.to_dict(),
                "rewards": self.rewards,
                "history": [{k: v for k, v in h.items() if k != "images"} for h in self.history]}


class SearchPipeline:
    """Test-time search around a diffusers pipeline.

    >>> search = SearchPipeline.from_pipe(pipe, reward=reward, method=EvoSearch(), max_batch_size=16)
    >>> out = search("a cat", seed=0, num_inference_steps=50, nfe_budget=2000)
    """

    def __init__(self, pipe, reward, method=None, max_batch_size: int = 16, eta: float = 1.0, *, stepper=None):
        self.pipe = pipe
        self.reward = as_reward(reward)
        self.method = method if method is not None else BestOfN(n=4)
        if not hasattr(self.method, "run"):
            raise TypeError(f"method: expected a search method such as EvoSearch(...) or BestOfN(...), "
                            f"got {type(method).__name__}")
        # a ready Stepper (from_stepper) brings its own max_batch_size and eta
        self.stepper = stepper if stepper is not None else stepper_for(pipe, max_batch_size=max_batch_size, eta=eta)
        self._lock = threading.Lock()

    @classmethod
    def from_pipe(cls, pipe, reward, method=None, max_batch_size: int = 16, eta: float = 1.0) -> "SearchPipeline":
        """Wrap an existing diffusers pipeline object (its modules are shared, not copied).

        ``eta`` is the sampler's noise level in [0, 1] (1: ancestral; EvoSearch needs > 0)."""
        return cls(pipe, reward=reward, method=method, max_batch_size=max_batch_size, eta=eta)

    @classmethod
    def from_stepper(cls, stepper, reward, method=None) -> "SearchPipeline":
        """Wrap a ready Stepper (e.g. :class:`~evosearch.pipelines.kdiffusion.KDiffusionStepper` over
        ComfyUI's model call); its ``max_batch_size`` and ``eta`` apply."""
        if not all(hasattr(stepper, a) for a in ("prepare", "start", "step", "finish", "noise_scale")):
            raise TypeError(f"stepper: expected an evosearch Stepper, got {type(stepper).__name__}")
        return cls(getattr(stepper, "pipe", None), reward=reward, method=method, stepper=stepper)

    @property
    def max_batch_size(self) -> int:
        return self.stepper.max_batch_size

    def __call__(self, prompt, seed: int | Sequence[int] = 0, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, nfe_budget: int | None = None, negative_prompt=None,
                 height: int | None = None, width: int | None = None, output_type: str = "pil",
                 callback: Callable[[dict], None] | None = None, stop: Callable[[], bool] | None = None,
                 progress: bool = True, method=None, **extra):
        """Search for one prompt (returns a SearchPipelineOutput) or a list of prompts with a
        list of seeds of the same length (returns a list of outputs).

        ``extra`` keyword arguments go to the Stepper's ``prepare`` and are recorded in each
        lineage's request: ``num_frames`` (video models), ``num_segments`` (segment models),
        ``max_sequence_length``, ..."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type: must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if nfe_budget is not None and (not isinstance(nfe_budget, (int, np.integer)) or nfe_budget < 1):
            raise ValueError(f"nfe_budget: must be a positive integer or None, got {nfe_budget!r}")
        if isinstance(prompt, (list, tuple)):
            seeds = list(seed) if isinstance(seed, (list, tuple)) else None
            if seeds is None or len(seeds) != len(prompt):
                raise ValueError(f"seed: with a list of {len(prompt)} prompts, pass a list of {len(prompt)} seeds, "
                                 f"got {seed!r}")
            return [self(p, seed=s, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                         nfe_budget=nfe_budget, negative_prompt=negative_prompt, height=height, width=width,
                         output_type=output_type, callback=callback, stop=stop, progress=progress, method=method,
                         **extra)
                    for p, s in zip(prompt, seeds)]
        if isinstance(seed, (list, tuple)):
            raise ValueError(f"seed: a list of seeds needs a list of prompts of the same length, got one prompt")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed: must be a non-negative integer, got {seed!r}")
        method = method or self.method
        with self._lock:
            self.stepper.prepare(prompt, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                 negative_prompt=negative_prompt, height=height, width=width, **extra)
            if getattr(method, "uses_segments", False):  # Tree-of-Frames sizes itself by the video's segments
                method.plan(nfe_budget, self.stepper.num_steps, getattr(self.stepper, "num_segments", None))
            else:
                method.plan(nfe_budget, self.stepper.num_steps)  # validate before any compute
            ctx = SearchContext(self.stepper, self.reward, prompt, seed, nfe_budget=nfe_budget, callback=callback,
                                stop=stop, progress=progress)
            complete = True
            try:
                method.run(ctx)
            except (SearchInterrupted, KeyboardInterrupt):
                complete = False
            finally:
                ctx.finalize()
        return self._output(ctx, method, seed, nfe_budget, output_type, complete)

    def _output(self, ctx: SearchContext, method, seed, nfe_budget, output_type, complete) -> SearchPipelineOutput:
        ranked = ctx.ranked()
        settings = {"request": ctx.request, "seed": int(seed), "nfe_budget": nfe_budget, "method": method.config(),
                    "plan": getattr(ctx, "plan", None), "max_batch_size": self.max_batch_size,
                    "reward": repr(self.reward), "pipeline": type(self.pipe).__name__, "family": self.stepper.family}
        is_video = bool(ranked) and ranked[0].image.ndim == 4  # candidates hold (F, 3, H, W) videos
        videos = None
        if is_video:
            stacked = torch.stack([c.image for c in ranked])
            videos = convert_videos(stacked, output_type)
            images = convert_images(stacked[:, 0], output_type)
        else:
            images = convert_images(torch.stack([c.image for c in ranked]), output_type) if ranked else []
        best = None
        if ctx.best is not None:
            if is_video:
                best = BestCandidate(convert_images(ctx.best.image[:1], output_type)[0], ctx.best.reward,
                                     ctx.best.lineage, video=convert_videos(ctx.best.image[None], output_type)[0])
            else:
                best = BestCandidate(convert_images(ctx.best.image[None], output_type)[0], ctx.best.reward,
                                     ctx.best.lineage)
        return SearchPipelineOutput(images=images, rewards=[c.reward for c in ranked], best=best, stats=ctx.stats,
                                    history=ctx.history, complete=complete, settings=settings, videos=videos)

    @torch.no_grad()
    def replay_states(self, lineage: Lineage | dict) -> torch.Tensor:
        """The final state (1, ...) of ``lineage``, re-generated alone."""
        if isinstance(lineage, dict):
            lineage = Lineage.from_dict(lineage)
        if not lineage.request:
            raise ValueError("lineage: has no request settings; pass a lineage taken from a search output")
        r = dict(lineage.request)
        extra = r.pop("extra", {}) or {}
        if r.pop("eta") != self.stepper.eta:
            raise ValueError(f"lineage: was made with eta={lineage.request['eta']}, this pipeline has "
                             f"eta={self.stepper.eta}")
        self.stepper.prepare(r.pop("prompt"), **r, **extra)
        return replay_lineage(self.stepper, lineage)

    def replay(self, lineage: Lineage | dict, output_type: str = "pil"):
        """Re-generate one candidate from its lineage (identical to the search's on CPU); for a video
        model its video (a list of PIL frames, an (F, H, W, 3) array or an (F, 3, H, W) tensor)."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type: must be one of {OUTPUT_TYPES}, got {output_type!r}")
        with self._lock:
            images = self.stepper.finish(self.replay_states(lineage))
        if images.ndim == 5:
            return convert_videos(images, output_type)[0]
        return convert_images(images, output_type)[0]
