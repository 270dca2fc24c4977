"""Plain sampling on the shapes world, judged: accuracy and validity per category, and the oracle.

For each benchmark prompt, ``--samples`` plain samples are drawn exactly as a search draws its
candidates (the ``diffusion`` or ``flow`` Stepper at eta 1, the pipeline's default steps),
from held-out seeds, and the exact judge reads each. Reports, per category and overall:
plain judge accuracy, validity, and the *oracle* hit rate: the fraction of prompts for which
at least one of the samples is correct (best-of-N with the judge itself as the selector —
what a perfect reward could find at that budget). ``--guidance`` takes several values to
compare. Writes JSON (default benchmarks/results/shapes_plain.json) and prints a table.

    python benchmarks/shapes_plain.py [--variant diffusion] [--samples 64] [--guidance 2.0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evosearch.bundled import shapes  # noqa: E402
from evosearch.core.noise import NoiseSeeds, derive_seed  # noqa: E402
from evosearch.io import atomic_write_json  # noqa: E402
from evosearch.pipelines import stepper_for  # noqa: E402


def plain_samples(stepper, prompt: str, n: int, seed: int, steps: int, guidance: float) -> torch.Tensor:
    """n samples (N, 3, H, W) in [0, 1] as a search's candidates are drawn (same keys: seed k, step i)."""
    stepper.prepare(prompt, num_inference_steps=steps, guidance_scale=guidance)
    seeds = [derive_seed(seed, k) for k in range(n)]
    x = stepper.start(seeds)
    for i in range(stepper.num_steps):
        x = stepper.step(x, i, NoiseSeeds.for_step(seeds, i) if stepper.noise_scale(i) > 0 else None)
    return stepper.finish(x)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=shapes.VARIANTS, default="diffusion", help="which generator")
    ap.add_argument("--samples", type=int, default=64, help="plain samples per prompt (default: 64)")
    ap.add_argument("--guidance", type=float, nargs="+", default=None, help="guidance scales (default: the model's)")
    ap.add_argument("--steps", type=int, default=None, help="num_inference_steps (default: the model's)")
    ap.add_argument("--seed", type=int, default=5000, help="seed of the held-out samples (default: 5000)")
    ap.add_argument("--path", type=Path, default=None, help="a saved shapes pipeline (default: the bundled one)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "shapes_plain.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    pipe = shapes.load_pipeline(args.variant, path=args.path)
    stepper = stepper_for(pipe, max_batch_size=64, eta=1.0)
    judge = shapes.Judge()
    steps = args.steps or pipe.default_num_inference_steps
    prompts = shapes.benchmark_prompts()
    rows = []
    for g in args.guidance or [pipe.default_guidance_scale]:
        t = time.time()
        per_prompt = []
        for k, (category, prompt) in enumerate(prompts):
            images = plain_samples(stepper, prompt, args.samples, args.seed + k, steps, g)
            v = judge(images, prompt)
            per_prompt.append({"category": category, "prompt": prompt,
                               "correct": float(np.mean([x["correct"] for x in v])),
                               "valid": float(np.mean([x["valid"] for x in v])),
                               "oracle": bool(any(x["correct"] for x in v))})
        for category in ["all", *shapes.CATEGORIES]:
            sel = [r for r in per_prompt if category == "all" or r["category"] == category]
            row = {"variant": args.variant, "guidance_scale": g, "steps": steps, "category": category,
                   "prompts": len(sel), "samples": args.samples,
                   "accuracy": float(np.mean([r["correct"] for r in sel])),
                   "valid": float(np.mean([r["valid"] for r in sel])),
                   "oracle_hit_rate": float(np.mean([r["oracle"] for r in sel]))}
            rows.append(row)
            print(f"{args.variant:9s} g={g:<4} {category:14s} accuracy {row['accuracy']:.3f} valid {row['valid']:.3f} "
                  f"oracle best-of-{args.samples} {row['oracle_hit_rate']:.3f} ({len(sel)} prompts)", flush=True)
        rows.append({"variant": args.variant, "guidance_scale": g, "per_prompt": per_prompt,
                     "seconds": round(time.time() - t, 1)})
    atomic_write_json(args.out, {"rows": rows})
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
