"""The shapes world's benchmark suites and their tune/test splits.

- ``"standard"``: :func:`~.grammar.benchmark_prompts` — 41 prompts over GenEval's six
  categories (most are solved by plain sampling or a little search).
- ``"hard"``: position, colour-attribution and counting prompts on which plain sampling mostly
  fails but correct samples exist, chosen by plain accuracy on *selection* seeds
  (``benchmarks/shapes_suites.py``; stored in ``assets/shapes/hard_suite.json``).

Each suite is split into ``"tune"`` (choose defaults and hyperparameters here) and ``"test"``
(report here, on held-out seeds); ``"all"`` is both.
"""

from __future__ import annotations

import json

from ...core.validation import check_choice
from ..paths import asset_path
from .grammar import benchmark_prompts

SUITES = ("standard", "hard")
SPLITS = ("tune", "test", "all")


def suite_prompts(suite: str = "standard", split: str = "all") -> list[tuple[str, str]]:
    """[(category, prompt)] of a suite's split, the same list on every machine. The standard
    suite's split alternates within each category (first prompt tune, second test, ...)."""
    check_choice("suite", suite, SUITES)
    check_choice("split", split, SPLITS)
    if suite == "standard":
        prompts = benchmark_prompts()
        rank = {}
        for k, (category, prompt) in enumerate(prompts):
            rank[prompt] = sum(1 for c, _ in prompts[:k] if c == category)
        return [p for p in prompts if split == "all" or (rank[p[1]] % 2 == 0) == (split == "tune")]
    path = asset_path("shapes", "hard_suite.json")
    if not path.is_file():
        raise FileNotFoundError(f"suite: the hard suite is not there yet (no {path}); run benchmarks/shapes_suites.py")
    data = json.loads(path.read_text())
    parts = ("tune", "test") if split == "all" else (split,)
    return [(c, p) for part in parts for c, p in data[part]]
