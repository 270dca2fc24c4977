"""Choose the shapes world's hard suite and its tune/test split from plain accuracy on selection seeds.

1. ``--candidates``: writes the candidate prompts (every prompt in the grammar's position, colour
   attribution and counting forms that the standard suite does not use, a fixed random draw of
   ``--per-category`` of each) to ``--prompts-file``.
2. Collect plain samples of them on the selection seeds (no reward involved):
   ``python benchmarks/shapes_pool.py --prompts-file P --seeds 7000 --n 12 --out POOL``.
3. ``--select POOL``: judges every sample, keeps prompts whose plain accuracy on the selection
   seeds lies in [``--lo``, ``--hi``] (hard, but with correct samples seen), balances categories,
   splits them alternately into *tune* and *test* (within each category, by plain accuracy, so
   the splits are alike), and writes ``evosearch/bundled/assets/shapes/hard_suite.json``, which
   ``shapes.suite_prompts("hard", split)`` reads. Report seeds (1000+) are never
   selection seeds, so a suite's accuracy on them is not biased by its choice.

    python benchmarks/shapes_suites.py --candidates --prompts-file /tmp/hard_candidates.txt
    python benchmarks/shapes_suites.py --select /tmp/pool_select --prompts-file /tmp/hard_candidates.txt
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evosearch.bundled import shapes  # noqa: E402
from evosearch.bundled.paths import asset_path  # noqa: E402
from evosearch.bundled.shapes.grammar import (COLORS, NUMBERS, RELATIONS, SHAPES, ObjectSpec,  # noqa: E402
                                              SceneSpec)
from evosearch.io import atomic_write_json  # noqa: E402

HARD_CATEGORIES = ("position", "color_attr", "counting")
SELECTION_SEEDS = (7000,)


def all_prompts(category: str) -> list[str]:
    """Every prompt of ``category`` in the grammar (counting: two to four objects)."""
    colors = (None, *COLORS)
    if category == "position":
        objs = [ObjectSpec(s, c) for s in SHAPES for c in colors]
        return [SceneSpec(category, (a, b), r).prompt() for a, b in itertools.permutations(objs, 2) if a.shape != b.shape
                or (a.color and b.color) for r in RELATIONS]
    if category == "color_attr":
        objs = [ObjectSpec(s, c) for s in SHAPES for c in COLORS]
        return [SceneSpec(category, (a, b)).prompt() for a, b in itertools.permutations(objs, 2)
                if a.shape != b.shape and a.color != b.color]
    if category == "counting":
        return [SceneSpec(category, (ObjectSpec(s, c),) * n).prompt() for n in (2, 3, 4) for s in SHAPES for c in colors]
    raise ValueError(category)


def candidates(per_category: int, seed: int = 2025) -> list[str]:
    standard = {p for _, p in shapes.benchmark_prompts()}
    rng = np.random.default_rng(seed)
    out = []
    for category in HARD_CATEGORIES:
        pool = [p for p in all_prompts(category) if p not in standard]
        out += [pool[i] for i in rng.permutation(len(pool))[:per_category]]
    return out


def select(pool: Path, prompts: list[str], lo: float, hi: float, per_category: int) -> dict:
    from shapes_pool import load_pool

    judge = shapes.Judge()
    rows = []
    for prompt in prompts:
        correct = []
        for seed in SELECTION_SEEDS:
            data = load_pool(pool, prompt, seed)
            if data is None:
                continue
            correct += [v["correct"] for v in judge(data["final"], prompt)]
        if correct:
            rows.append({"prompt": prompt, "category": shapes.parse_prompt(prompt).category,
                         "plain": float(np.mean(correct)), "n": len(correct)})
    chosen = {"tune": [], "test": []}
    for category in HARD_CATEGORIES:
        keep = sorted((r for r in rows if r["category"] == category and lo <= r["plain"] <= hi),
                      key=lambda r: (r["plain"], r["prompt"]))[: 2 * per_category]
        if len(keep) < 2:  # a category needs a prompt in each split
            continue
        for k, r in enumerate(keep):  # alternate within the accuracy order: two alike splits
            chosen["tune" if k % 2 == 0 else "test"].append(r)
    return {"selection_seeds": list(SELECTION_SEEDS), "rule": f"plain accuracy on the selection seeds in [{lo}, {hi}]",
            "candidates": rows, **{split: [[r["category"], r["prompt"]] for r in chosen[split]] for split in chosen}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", action="store_true", help="write the candidate prompts to --prompts-file")
    ap.add_argument("--select", type=Path, default=None, metavar="POOL", help="choose the suite from this pool")
    ap.add_argument("--prompts-file", type=Path, required=True)
    ap.add_argument("--per-category", type=int, default=40, help="candidates per category (default: 40)")
    ap.add_argument("--suite-per-category", type=int, default=10,
                    help="prompts per category and split in the suite (default: 10)")
    ap.add_argument("--lo", type=float, default=1 / 12)
    ap.add_argument("--hi", type=float, default=0.34)
    ap.add_argument("--out", type=Path, default=asset_path("shapes", "hard_suite.json"))
    args = ap.parse_args(argv)
    if args.candidates:
        args.prompts_file.write_text("\n".join(candidates(args.per_category)) + "\n")
        print(f"wrote {args.prompts_file}")
    if args.select:
        prompts = [p.strip() for p in args.prompts_file.read_text().splitlines() if p.strip()]
        suite = select(args.select, prompts, args.lo, args.hi, args.suite_per_category)
        atomic_write_json(args.out, suite)
        for split in ("tune", "test"):
            by = {c: sum(1 for cat, _ in suite[split] if cat == c) for c in HARD_CATEGORIES}
            print(f"{split}: {len(suite[split])} prompts {by}")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
