"""The shapes world's exact judge at its edges: fresh renders, adversarial images, hand labels, speed.

- **Renders**: ``--renders`` fresh scenes (spread evenly over the six categories, seeds the tests
  never use) drawn by the renderer for their own prompt: the judge must call each correct.
- **Adversarial**: every (image, prompt) pair of :func:`~evosearch.bundled.shapes.adversarial.adversarial_cases`
  (off-palette colours, near-shapes): the judge must accept none.
- **Hand labels**: agreement with the 120 hand-labelled generated samples in ``tests/data`` on
  ``correct`` and on ``valid``.
- **Speed**: milliseconds per image (one thread, the renders' mean).

Prints a table, writes JSON (default benchmarks/results/shapes_judge.json).

    python benchmarks/shapes_judge.py [--renders 3000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evosearch.bundled.shapes.adversarial import adversarial_cases  # noqa: E402
from evosearch.bundled.shapes.grammar import CATEGORIES, parse_prompt, sample_spec  # noqa: E402
from evosearch.bundled.shapes.judge import Judge  # noqa: E402
from evosearch.bundled.shapes.render import render_array  # noqa: E402

DATA = ROOT / "tests" / "data"


def judge_renders(judge: Judge, n: int, seed: int = 2026) -> tuple[dict, list, float]:
    """({category: accuracy}, failures, seconds per image) over n fresh renders."""
    per, failures, seconds = {}, [], 0.0
    for ci, c in enumerate(CATEGORIES):
        rng = np.random.default_rng([seed, ci])
        k = n // len(CATEGORIES) + (ci < n % len(CATEGORIES))
        ok = 0
        for _ in range(k):
            spec = sample_spec(rng, c)
            s = int(rng.integers(2**31))
            img, _ = render_array(spec, seed=s)
            t0 = time.perf_counter()
            v = judge.verdict(img, spec)
            seconds += time.perf_counter() - t0
            ok += v["correct"]
            if not v["correct"]:
                failures.append({"prompt": spec.prompt(), "seed": s, "reason": v["reason"]})
        per[c] = ok / k
    return per, failures, seconds / n


def judge_adversarial(judge: Judge, variants: int = 4) -> tuple[int, int, list]:
    """(accepted, total, accepted cases) over every adversarial (image, prompt) pair."""
    accepted, total = [], 0
    for case in adversarial_cases(variants):
        for p in case.prompts:
            total += 1
            if judge.verdict(case.image, parse_prompt(p))["correct"]:
                accepted.append({"name": case.name, "prompt": p})
    return len(accepted), total, accepted


def judge_hand_labels(judge: Judge) -> tuple[float, float, list]:
    """(agreement on correct, agreement on valid, disagreements) with the hand-labelled samples."""
    labels = json.loads((DATA / "shapes_judge_labels.json").read_text())["samples"]
    images = np.load(DATA / "shapes_judge_samples.npz")["images"].astype(np.float32) / 255.0
    verdicts = [judge.verdict(img, parse_prompt(s["prompt"])) for img, s in zip(images, labels)]
    disagree = [{"index": i, "prompt": s["prompt"], "label": [s["correct"], s["valid"]],
                 "judge": [v["correct"], v["valid"]], "reason": v["reason"], "seen": s["seen"]}
                for i, (v, s) in enumerate(zip(verdicts, labels))
                if v["correct"] != s["correct"] or v["valid"] != s["valid"]]
    agree_c = float(np.mean([v["correct"] == s["correct"] for v, s in zip(verdicts, labels)]))
    agree_v = float(np.mean([v["valid"] == s["valid"] for v, s in zip(verdicts, labels)]))
    return agree_c, agree_v, disagree


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--renders", type=int, default=3000, help="fresh renders to judge (default: 3000)")
    ap.add_argument("--seed", type=int, default=2026, help="seed of the renders (default: 2026)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "shapes_judge.json")
    args = ap.parse_args(argv)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # the judge itself needs only numpy and scipy
        pass
    judge = Judge()
    t0 = time.time()
    per, failures, spi = judge_renders(judge, args.renders, args.seed)
    accuracy = float(np.mean([per[c] for c in CATEGORIES]))
    n_acc, n_adv, accepted = judge_adversarial(judge)
    agree_c, agree_v, disagree = judge_hand_labels(judge)
    result = {"renders": args.renders, "seed": args.seed, "render_accuracy": accuracy, "per_category": per,
              "render_failures": failures, "adversarial_accepted": n_acc, "adversarial_total": n_adv,
              "adversarial_accepted_cases": accepted, "hand_label_agreement_correct": agree_c,
              "hand_label_agreement_valid": agree_v, "hand_label_disagreements": disagree,
              "ms_per_image": 1000 * spi, "minutes": round((time.time() - t0) / 60, 2)}
    print(f"{'category':<14} accuracy")
    for c in CATEGORIES:
        print(f"{c:<14} {per[c]:.4f}")
    print(f"{'all':<14} {accuracy:.4f}  ({len(failures)} of {args.renders} renders wrong)")
    print(f"adversarial accepted: {n_acc} of {n_adv}")
    print(f"hand labels: agree on correct {agree_c:.3f}, on valid {agree_v:.3f}")
    print(f"speed: {1000 * spi:.2f} ms per image")
    if args.out:
        from evosearch.io import atomic_write_json

        atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
