"""A batch's total budget spent by headroom vs spread evenly, on the shapes benchmark prompts, judged.

For each base seed, the benchmark prompts (``shapes.benchmark_prompts()``) are searched twice
with ``evosearch batch`` (the CLI, as a user runs it), at the same total NFE:

- ``even``: ``--nfe-budget B`` for every prompt (B = ``--trajectories`` x steps);
- ``total``: ``--total-nfe-budget P*B``: wave 1 gives every prompt a small budget, wave 2 the
  rest to the prompts with the most estimated headroom (``evosearch.batch.budget``).

The world's judge (never seen by the search) reads each prompt's final image; the table gives
judge accuracy, validity, mean best reward and the NFE spent, per mode, over all seeds.
Seeds start at ``--seed-offset`` (2000: held out from every other benchmark and from tuning).

    python benchmarks/batch_budget.py [--seeds 4] [--trajectories 8] [--method evosearch]

Writes ``{"rows": [{"mode", "judge", "valid", "reward", "nfe", "n"}], "per_seed": ..., "settings"}``
to ``--out`` (default benchmarks/results/batch_budget.json).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evosearch.batch import RESULTS, read_jsonl  # noqa: E402
from evosearch.bundled import shapes  # noqa: E402
from evosearch.io import atomic_write_json  # noqa: E402


def run_cli(args: list[str], threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, "-m", "evosearch.cli", *args], check=True, env=env, stdout=subprocess.DEVNULL)


def read(out_dir: Path) -> list[dict]:
    return sorted(read_jsonl(out_dir / RESULTS), key=lambda r: r["index"])


def summarize(lines: list[dict]) -> dict:
    ok = [r for r in lines if r["status"] == "ok"]
    return {"judge": float(np.mean([r["judge"]["best"]["correct"] for r in ok])),
            "valid": float(np.mean([r["judge"]["best"]["valid"] for r in ok])),
            "reward": float(np.mean([r["best_reward"] for r in ok])),
            "nfe": int(sum(r["nfe"] for r in lines)), "n": len(ok), "failed": len(lines) - len(ok)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=4, help="base seeds (default: 4)")
    ap.add_argument("--seed-offset", type=int, default=2000, help="first base seed (default: 2000, held out)")
    ap.add_argument("--trajectories", type=int, default=8, help="even budget per prompt, in trajectories (default: 8)")
    ap.add_argument("--method", default="evosearch", help="search method, a CLI name (default: evosearch)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per run (default: 1)")
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "batch_budget",
                    help="where the batch runs write (re-running resumes them)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "batch_budget.json")
    args = ap.parse_args(argv)
    prompts = [p for _, p in shapes.benchmark_prompts()]
    args.work.mkdir(parents=True, exist_ok=True)
    prompt_file = args.work / "prompts.txt"
    prompt_file.write_text("\n".join(prompts) + "\n")
    steps = shapes.load_pipeline().default_num_inference_steps
    per_prompt = args.trajectories * steps
    total = per_prompt * len(prompts)
    per_seed, t0 = [], time.time()
    for k in range(args.seeds):
        seed = args.seed_offset + k * 100  # batch seeds are seed + prompt index: keep seed sets disjoint
        common = [str(prompt_file), "--method", args.method, "--seed", str(seed), "--quiet"]
        for mode, extra in (("even", ["--nfe-budget", str(per_prompt)]), ("total", ["--total-nfe-budget", str(total)])):
            out_dir = args.work / f"{mode}-{seed}"
            run_cli(["batch", *common, "--out", str(out_dir), *extra], args.threads)
            row = {"mode": mode, "seed": seed, **summarize(read(out_dir))}
            per_seed.append(row)
            print(f"seed {seed} {mode:5s} judge {row['judge']:.3f} valid {row['valid']:.3f} reward {row['reward']:.2f} "
                  f"NFE {row['nfe']} / {total}", flush=True)
    rows = []
    print(f"\n{'mode':6s} {'judge':>6s} {'valid':>6s} {'reward':>7s} {'NFE':>8s} {'n':>4s}")
    for mode in ("even", "total"):
        sel = [r for r in per_seed if r["mode"] == mode]
        n = sum(r["n"] for r in sel)
        row = {"mode": mode, "n": n, "nfe": int(np.mean([r["nfe"] for r in sel])),
               **{key: float(np.average([r[key] for r in sel], weights=[r["n"] for r in sel]))
                  for key in ("judge", "valid", "reward")}}
        rows.append(row)
        print(f"{mode:6s} {row['judge']:6.3f} {row['valid']:6.3f} {row['reward']:7.2f} {row['nfe']:8d} {n:4d}")
    settings = {"method": args.method, "prompts": len(prompts), "trajectories_per_prompt": args.trajectories,
                "steps": steps, "total_nfe_budget": total, "seeds": [r["seed"] for r in per_seed[::2]],
                "minutes": round((time.time() - t0) / 60, 1)}
    atomic_write_json(args.out, {"rows": rows, "per_seed": per_seed, "settings": settings})
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
