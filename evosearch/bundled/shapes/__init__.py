"""The shapes world: a compositional text-to-image world with an exact judge.

Scenes of coloured circles, squares and triangles on a dark background, described by prompts
in GenEval's six categories (single object, colours, two objects, counting, position,
colour attribution). Small text-conditioned pixel diffusion and flow models draw them
imperfectly — composition fails the way it does for real text-to-image models — a learned
contrastive reward scores them like CLIPScore would, and a program, the judge, says exactly
whether a scene satisfies its prompt.

    >>> from evosearch.bundled import shapes
    >>> pipe = shapes.load_pipeline()              # or shapes.load_pipeline("flow")
    >>> reward = shapes.load_reward()              # the learned contrastive reward (a Reward)
    >>> judge = shapes.Judge()
    >>> verdicts = judge(images, prompts)          # [{"correct", "valid", "category", "objects", "reason"}]
    >>> prompts = shapes.benchmark_prompts()       # [(category, prompt)], 41, every category
    >>> hard = shapes.suite_prompts("hard", "test")  # the hard suite's test split
    >>> image = shapes.render("a red circle left of a blue square", seed=0)

Modules: :mod:`.grammar` (prompts), :mod:`.render` (scenes), :mod:`.judge`, :mod:`.model`
(pipelines), :mod:`.reward`. Training: ``scripts/train_shapes.py``, ``scripts/train_shapes_reward.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..paths import asset_path
from .grammar import CATEGORIES, COLORS, SHAPES, ObjectSpec, SceneSpec, benchmark_prompts, parse_prompt
from .judge import Judge
from .render import render
from .reward import REWARD_VERSIONS
from .suites import SPLITS, SUITES, suite_prompts

VARIANTS = ("diffusion", "flow")


def load_pipeline(variant: str = "diffusion", device: str | torch.device = "cpu", path: str | Path | None = None):
    """The bundled generator: ``"diffusion"`` (:class:`~.model.ShapesPipeline`) or ``"flow"``
    (:class:`~.model.ShapesFlowPipeline`), or one saved at ``path``; float32 on ``device``."""
    from ...core.validation import check_choice
    from .model import ShapesFlowPipeline, ShapesPipeline

    check_choice("variant", variant, VARIANTS)
    folder = Path(path) if path is not None else asset_path("shapes", variant)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"path: no shapes pipeline at {folder} (expected model_index.json); "
                                f"run scripts/train_shapes.py --variant {variant}")
    cls = ShapesPipeline if variant == "diffusion" else ShapesFlowPipeline
    pipe = cls.from_pretrained(str(folder), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_reward(path: str | Path | None = None, device: str | torch.device = "cpu", version: str = "v4"):
    """The learned contrastive reward (:class:`~.reward.ShapesCLIPScore`): the bundled ``version``
    ("v4", the default, or the weak "v1"), or one saved at ``path``."""
    from ...core.validation import check_choice
    from .reward import ShapesCLIPScore

    check_choice("version", version, REWARD_VERSIONS)
    return ShapesCLIPScore(path=path, device=device, version=version)


__all__ = ["load_pipeline", "load_reward", "Judge", "benchmark_prompts", "render", "parse_prompt", "SceneSpec",
           "ObjectSpec", "CATEGORIES", "COLORS", "SHAPES", "VARIANTS", "REWARD_VERSIONS", "suite_prompts", "SUITES", "SPLITS"]
