"""Overhead of the search machinery on an SD-shaped pipeline (random weights, UNet-dominated).

Measures (medians over --repeats runs):
  1. BestOfN(n) wall time / the plain diffusers pipeline producing the same n images with
     the same steps and the same batch size (n / batch_size calls of pipe(...)).
  2. EvoSearch wall time / the pure denoiser time of the NFE it spent (time inside
     unet.forward, measured with hooks during the same run).
Target: both ratios <= 1.05. Writes benchmarks/results/overhead.json.

    python benchmarks/overhead.py [--n 8] [--batch-size 4] [--steps 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from evosearch import BestOfN, EvoSearch, FunctionReward, SearchPipeline
from evosearch.io import atomic_write_json
from evosearch.testing import sd_shaped


class DenoiserTimer:
    """Wall time spent inside a module's forward (hooks)."""

    def __init__(self, module):
        self.seconds = 0.0
        self._t = None
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def _pre(self, *args):
        self._t = time.perf_counter()

    def _post(self, *args):
        self.seconds += time.perf_counter() - self._t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--guidance-scale", type=float, default=7.5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "overhead.json"))
    args = ap.parse_args()
    torch.manual_seed(0)

    pipe = sd_shaped(seed=0, resolution=args.resolution)
    timer = DenoiserTimer(pipe.unet)
    reward = FunctionReward(lambda images, prompts: images.mean(dim=(1, 2, 3)), name="brightness")
    prompt = "a photograph of an astronaut riding a horse"
    common = dict(num_inference_steps=args.steps, guidance_scale=args.guidance_scale)

    def plain():
        for k in range(args.n // args.batch_size):
            pipe(prompt, num_images_per_prompt=args.batch_size, height=args.resolution, width=args.resolution,
                 generator=torch.Generator().manual_seed(k), output_type="pt", **common)

    bon = SearchPipeline.from_pipe(pipe, reward=reward, method=BestOfN(n=args.n), max_batch_size=args.batch_size)
    budget = args.n * args.steps
    evo = SearchPipeline.from_pipe(pipe, reward=reward, method=EvoSearch(), max_batch_size=args.batch_size)

    def timed(fn):
        timer.seconds = 0.0
        t = time.perf_counter()
        result = fn()
        return time.perf_counter() - t, timer.seconds, result

    plain()  # warm-up
    rows = {"plain": [], "best_of_n": [], "evosearch": [], "evosearch_denoiser": [], "best_of_n_denoiser": []}
    for r in range(args.repeats):
        wall, _, _ = timed(plain)
        rows["plain"].append(wall)
        wall, den, out_b = timed(lambda: bon(prompt, seed=r, progress=False, height=args.resolution,
                                             width=args.resolution, **common))
        rows["best_of_n"].append(wall)
        rows["best_of_n_denoiser"].append(den)
        wall, den, out_e = timed(lambda: evo(prompt, seed=r, nfe_budget=budget, progress=False,
                                             height=args.resolution, width=args.resolution, **common))
        rows["evosearch"].append(wall)
        rows["evosearch_denoiser"].append(den)
    med = {k: statistics.median(v) for k, v in rows.items()}
    result = {
        "settings": vars(args) | {"torch_threads": torch.get_num_threads()},
        "seconds": rows,
        "median_seconds": med,
        "best_of_n_over_plain": med["best_of_n"] / med["plain"],
        "evosearch_over_denoiser": med["evosearch"] / med["evosearch_denoiser"],
        "evosearch_nfe": out_e.stats.nfe,
        "evosearch_plan": out_e.settings["plan"],
        "evosearch_phase_seconds": out_e.stats.seconds,
        "best_of_n_phase_seconds": out_b.stats.seconds,
    }
    print(f"SD-shaped pipeline, {args.resolution}px, {args.steps} steps, CFG {args.guidance_scale}, "
          f"batch {args.batch_size}, n={args.n}, {args.repeats} repeats (medians)")
    print(f"{'run':28s} {'seconds':>9s}")
    for k in ("plain", "best_of_n", "best_of_n_denoiser", "evosearch", "evosearch_denoiser"):
        print(f"{k:28s} {med[k]:9.3f}")
    print(f"{'BestOfN / plain pipeline':28s} {result['best_of_n_over_plain']:9.3f}   (target <= 1.05)")
    print(f"{'EvoSearch / denoiser time':28s} {result['evosearch_over_denoiser']:9.3f}   (target <= 1.05)")
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
