"""Seconds at equal NFE on the shapes world: each search method against best-of-N, interleaved.

For each K (a budget of K trajectories = K * 25 NFE), prompt and seed, runs ``BestOfN`` and each
method with its registry default (what ``evosearch generate --method M`` builds) in alternating
order (A B, then B A), at one torch thread, and records wall time (``time.perf_counter``), CPU
time (``time.process_time``), the time per phase (denoise, decode, reward) and the decode and
reward calls. Prints, per K, the median ratio method / best-of-N of wall and CPU time, and
writes ``benchmarks/results/shapes_wall_time.json``. The ratio is what "equal NFE" costs in
seconds: a method that decodes and scores more previews, or runs generations smaller than a
micro-batch, takes longer per NFE.

    python benchmarks/shapes_wall_time.py --methods evosearch --budgets 4 8 16 --prompts 4 --seeds 1000 1001
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evosearch import SearchPipeline  # noqa: E402
from evosearch.bundled import shapes  # noqa: E402
from evosearch.io import atomic_write_json  # noqa: E402
from evosearch.registry import build_method, load_reward  # noqa: E402

STEPS = 25


def timed(search, prompt: str, seed: int, k: int, method) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    out = search(prompt, seed=seed, num_inference_steps=STEPS, nfe_budget=k * STEPS, method=method, progress=False)
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, "nfe": out.stats.nfe,
            "decode_calls": out.stats.decode_calls, "reward_calls": out.stats.reward_calls,
            "phases_s": {k: round(v, 4) for k, v in out.stats.seconds.items()}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["evosearch"], help="registry names, each timed against best-of-n")
    ap.add_argument("--budgets", type=int, nargs="+", default=[4, 8, 16], help="K, in trajectories")
    ap.add_argument("--prompts", type=int, default=4, help="the first N prompts of the hard suite's test split")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1000, 1001])
    ap.add_argument("--max-batch-size", type=int, default=16, help="default: SearchPipeline's (16)")
    ap.add_argument("--reward", default="shapes-clip")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "shapes_wall_time.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    search = SearchPipeline.from_pipe(shapes.load_pipeline(), reward=load_reward(args.reward),
                                      max_batch_size=args.max_batch_size, judge=False)
    prompts = [p for _, p in shapes.suite_prompts("hard", "test")][: args.prompts]
    search(prompts[0], seed=0, num_inference_steps=STEPS, nfe_budget=STEPS, method=build_method("best-of-n"),
           progress=False)  # warm-up
    runs, rows = [], []
    for name in args.methods:
        for k in args.budgets:
            pairs = []
            for i, (prompt, seed) in enumerate((p, s) for p in prompts for s in args.seeds):
                order = [("best-of-n", build_method("best-of-n")), (name, build_method(name))]
                result = {m: timed(search, prompt, seed, k, method) for m, method in order[:: 1 if i % 2 == 0 else -1]}
                runs.append({"method": name, "K": k, "prompt": prompt, "seed": seed, **result})
                pairs.append(result)
            ratio = {unit: statistics.median(p[name][unit] / p["best-of-n"][unit] for p in pairs)
                     for unit in ("wall_s", "cpu_s")}
            mean = lambda m, key: statistics.mean(p[m][key] for p in pairs)  # noqa: E731
            rows.append({"method": name, "K": k, "pairs": len(pairs), "bon_wall_s": mean("best-of-n", "wall_s"),
                         "method_wall_s": mean(name, "wall_s"), "wall_ratio": ratio["wall_s"],
                         "cpu_ratio": ratio["cpu_s"], "bon_nfe": mean("best-of-n", "nfe"), "method_nfe": mean(name, "nfe"),
                         "bon_decodes": mean("best-of-n", "decode_calls"), "method_decodes": mean(name, "decode_calls"),
                         "bon_reward_calls": mean("best-of-n", "reward_calls"),
                         "method_reward_calls": mean(name, "reward_calls")})
    print(f"Median ratios over {len(prompts) * len(args.seeds)} prompt-seeds, 1 torch thread, max_batch_size "
          f"{args.max_batch_size}:\n")
    print("| method | K | NFE (method / best-of-n) | seconds (best-of-n → method) | wall ratio | CPU ratio | "
          "decodes | reward calls |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['K']} | {r['method_nfe']:.0f} / {r['bon_nfe']:.0f} | {r['bon_wall_s']:.1f} → "
              f"{r['method_wall_s']:.1f} | {r['wall_ratio']:.3f} | {r['cpu_ratio']:.3f} | "
              f"{r['method_decodes']:.0f} / {r['bon_decodes']:.0f} | {r['method_reward_calls']:.0f} / "
              f"{r['bon_reward_calls']:.0f} |")
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    atomic_write_json(args.out, {"settings": {**settings, "torch_threads": 1, "steps": STEPS, "prompts_used": prompts},
                                 "rows": rows, "runs": runs})
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
