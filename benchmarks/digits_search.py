"""BestOfN vs EvoSearch at equal NFE on the bundled digits model, judged independently.

For each budget (in trajectories: best-of-K costs K * steps NFE) and each seed (the
requested digit is seed % 10), both methods run at the same NFE; the table gives the
mean (and standard error) of the winner's reward (the classifier's log-probability of
the requested digit) and the accuracy of an independent judge (scikit-learn SVC on
the 8x8 digits, never used for search) on the winners. Writes
benchmarks/results/digits_search.json and digits_search.png.

    python benchmarks/digits_search.py [--seeds 20] [--budgets 1 16 64] [--steps 25]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from evosearch import BestOfN, EvoSearch, SearchPipeline
from evosearch.bundled.digits import DigitClassifierReward, DigitJudge, load_digits_pipeline
from evosearch.io import atomic_write_bytes, atomic_write_json


def run(search: SearchPipeline, method, seeds, steps, budget, judge):
    rewards, winners, targets, seconds, nfe = [], [], [], [], []
    for seed in seeds:
        digit = seed % 10
        t = time.perf_counter()
        out = search(str(digit), seed=seed, num_inference_steps=steps, nfe_budget=budget, output_type="pt",
                     progress=False, method=method)
        seconds.append(time.perf_counter() - t)
        rewards.append(out.best.reward)
        winners.append(out.best.image)
        targets.append(digit)
        nfe.append(out.stats.nfe)
        assert out.stats.nfe <= budget
    acc = judge.accuracy(torch.stack(winners), targets)
    r = np.array(rewards)
    return {"mean_reward": float(r.mean()), "sem_reward": float(r.std(ddof=1) / np.sqrt(len(r))),
            "judge_accuracy": float(acc), "mean_nfe": float(np.mean(nfe)), "mean_seconds": float(np.mean(seconds)),
            "rewards": rewards}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--budgets", type=int, nargs="+", default=[1, 16, 64], help="in trajectories (best-of-K)")
    ap.add_argument("--steps", type=int, default=None, help="default: the bundled model's")
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "digits_search"))
    args = ap.parse_args()

    pipe = load_digits_pipeline()
    steps = args.steps or pipe.default_num_inference_steps
    search = SearchPipeline.from_pipe(pipe, reward=DigitClassifierReward(), method=BestOfN(),
                                      max_batch_size=args.max_batch_size)
    judge = DigitJudge()
    seeds = list(range(args.seeds))
    results = []
    print(f"bundled digits model, {steps} steps, eta=1, {len(seeds)} seeds (digit = seed % 10)")
    print(f"{'budget':>14s} {'method':>10s} {'NFE':>6s} {'reward (logp)':>16s} {'judge acc':>10s} {'s/run':>7s}")
    for k in args.budgets:
        budget = k * steps
        methods = {"best-of-n": BestOfN()} if k < 4 else {"best-of-n": BestOfN(), "evosearch": EvoSearch()}
        for name, method in methods.items():
            r = run(search, method, seeds, steps, budget, judge)
            r.update(method=name, budget_trajectories=k, nfe_budget=budget)
            results.append(r)
            print(f"{f'best-of-{k} cost':>14s} {name:>10s} {r['mean_nfe']:6.0f} "
                  f"{r['mean_reward']:9.4f} ± {r['sem_reward']:.4f} {r['judge_accuracy']:10.2f} "
                  f"{r['mean_seconds']:7.2f}")
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), {"settings": vars(args) | {"steps": steps}, "results": results})
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


def plot(results, path):
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    for name in ("best-of-n", "evosearch"):
        rows = [r for r in results if r["method"] == name or (r["budget_trajectories"] < 4)]
        x = [r["nfe_budget"] for r in rows]
        axes[0].errorbar(x, [r["mean_reward"] for r in rows], yerr=[r["sem_reward"] for r in rows], marker="o",
                         capsize=3, label=name)
        axes[1].plot(x, [r["judge_accuracy"] for r in rows], marker="o", label=name)
    for ax, label in zip(axes, ("mean winner reward (log p)", "judge accuracy on winners")):
        ax.set_xscale("log")
        ax.set_xlabel("NFE budget")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


if __name__ == "__main__":
    main()
