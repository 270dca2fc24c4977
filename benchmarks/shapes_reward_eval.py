"""How well each shapes reward holds: pairwise accuracy on held-out renders and AUC on generated samples.

- **Pairwise, renders** (``scripts/train_shapes_reward.py``'s held-out stream, never trained on):
  ``text``: the true prompt outscores its one-attribute perturbation on the scene's render;
  ``image``: the scene's render outscores a render of a hard-negative scene (a flipped relation,
  swapped colours, a count off by one, an object missing or extra) for the true prompt.
  ``flip``: the true prompt outscores the same prompt with its relation flipped ("left of" ->
  "right of"), position scenes only: whether the reward reads the relation at all.
- **Relation, generated samples**: the share of judge-correct position samples on which the
  prompt outscores its flipped relation (0.5 is chance).
- **AUC, generated samples**: for each (prompt, seed) pool of plain samples (``shapes_pool.py``)
  with both judge outcomes present, the chance that a judge-correct sample outscores a wrong one;
  averaged per category. This is what search relies on.

    python benchmarks/shapes_reward_eval.py --pools .cache/pool_select .cache/shapes_pools_tune .cache/shapes_pools

Prints a table per reward and writes ``benchmarks/results/shapes_reward_eval.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from evosearch.bundled import shapes  # noqa: E402
from evosearch.evaluation import roc_auc  # noqa: E402
from evosearch.io import atomic_write_json  # noqa: E402
from evosearch.registry import load_reward  # noqa: E402
from train_shapes_reward import evaluate, flipped_relation  # noqa: E402

REWARDS = ("shapes-clip", "shapes-clip-v1")


def pool_aucs(reward, judge, folders: list[Path]) -> tuple[dict[str, list[float]], list[bool]]:
    """(AUC per category over pools with both outcomes, relation read on each judge-correct position sample)."""
    out: dict[str, list[float]] = {}
    relation_read: list[bool] = []
    for folder in folders:
        for path in sorted(folder.glob("*.npz")):
            with np.load(path) as data:
                prompt, final = str(data["prompt"]), data["final"]
            correct = np.asarray([v["correct"] for v in judge(final, prompt)])
            images = torch.from_numpy(final).permute(0, 3, 1, 2).float() / 255
            r = np.asarray(reward(images, prompt), dtype=np.float64)
            spec = shapes.parse_prompt(prompt)
            if spec.relation is not None and correct.any():
                flipped = np.asarray(reward(images[correct], flipped_relation(spec).prompt()), dtype=np.float64)
                relation_read += list(r[correct] > flipped)
            auc = roc_auc(r, correct)
            if auc == auc:
                out.setdefault(spec.category, []).append(auc)
    return out, relation_read


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pools", type=Path, nargs="*", default=[], help="folders of candidate pools")
    ap.add_argument("--scenes", type=int, default=1200, help="held-out renders (default: 1200)")
    ap.add_argument("--rewards", nargs="+", default=list(REWARDS),
                    help="registry names, or NAME=FOLDER for a reward saved by train_shapes_reward.py")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "shapes_reward_eval.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    judge = shapes.Judge()
    results = {}
    for spec in args.rewards:
        name, _, folder = spec.partition("=")
        reward = shapes.load_reward(path=folder) if folder else load_reward(name)
        with torch.no_grad():
            pairwise = evaluate(reward.model, reward.tokenizer, args.scenes, seed=0)
            aucs, relation_read = pool_aucs(reward, judge, args.pools)
        results[name] = {"pairwise_renders": pairwise,
                         "relation_read_generated": {"share": float(np.mean(relation_read)) if relation_read else None,
                                                     "samples": len(relation_read)},
                         "auc_generated": {c: {"mean": float(np.mean(v)), "min": float(np.min(v)), "pools": len(v)}
                                           for c, v in aucs.items()}}
    cats = shapes.CATEGORIES
    print("| reward | measure | " + " | ".join(cats) + " |")
    print("|---|---|" + "---|" * len(cats))
    for name, res in results.items():
        for side in ("text", "image"):
            print(f"| {name} | pairwise, renders ({side}) | " + " | ".join(
                f"{res['pairwise_renders'][side][c]:.3f}" for c in cats) + " |")
        read = res["relation_read_generated"]
        print(f"| {name} | relation flip, renders / generated (correct samples) | " + " | ".join(
            f"{res['pairwise_renders']['flip']['position']:.3f} / "
            + (f"{read['share']:.3f} ({read['samples']})" if read["share"] is not None else "–")
            if c == "position" else "–" for c in cats) + " |")
        print(f"| {name} | AUC, generated (pools) | " + " | ".join(
            f"{res['auc_generated'][c]['mean']:.3f} ({res['auc_generated'][c]['pools']})" if c in res["auc_generated"]
            else "–" for c in cats) + " |")
    atomic_write_json(args.out, {"scenes": args.scenes,
                                 "pools": [p.name for p in args.pools], "rewards": results})


if __name__ == "__main__":
    main()
