"""Every method x NFE budget on the bundled digits model and on the Gaussian-mixture testbed.

For each suite, method and budget (in trajectories: K trajectories = K * steps NFE) and
each seed: the winner's reward, an independent judge's verdict on the winner, NFE spent
and wall time split into denoise / decode / reward. Judges:
  digits  an SVC on the 8x8 digits (never used for search): did the winner draw the digit?
  gmm     the exact density: is the winner inside the data distribution (log p above the
          1% quantile of p)? A linear reward can be "hacked" by drifting off the mixture.
Reports, per suite, the smallest budget at which each method matches BestOfN-64's mean
reward. Writes benchmarks/results/scaling.json and scaling.png.

    python benchmarks/scaling.py [--seeds 16] [--budgets 1 4 16 64] [--suites digits gmm]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from evosearch import BestOfN, EvoSearch, ParticleSearch, PathSearch, SearchPipeline, ZeroOrderSearch
from evosearch.io import atomic_write_bytes, atomic_write_json

METHODS = {
    "best-of-n": lambda: BestOfN(),
    "evosearch": lambda: EvoSearch(),
    "zero-order": lambda: ZeroOrderSearch(),
    "paths": lambda: PathSearch(),
    "particles": lambda: ParticleSearch(lambda_=2.0, standardize=False),
}


class DigitsSuite:
    name = "digits"

    def __init__(self):
        from evosearch.bundled.digits import DigitClassifierReward, DigitJudge, load_digits_pipeline

        self.pipe = load_digits_pipeline()
        self.reward = DigitClassifierReward()
        self.judge = DigitJudge()
        self.steps = self.pipe.default_num_inference_steps

    def prompt(self, seed):
        return str(seed % 10)

    def judge_winners(self, winners, seeds):
        images = torch.stack([self.pipe_images(w) for w in winners])
        return float(self.judge.accuracy(images, [s % 10 for s in seeds]))

    @staticmethod
    def pipe_images(w):
        return w["image"]


class MixtureSuite:
    name = "gmm"

    def __init__(self):
        from evosearch.testbed import GaussianMixture, gaussian_mixture_pipeline, projection_reward

        self.gm = GaussianMixture(weights=[0.5, 0.3, 0.2], means=[[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]],
                                  variances=[[1.0, 1.0], [0.5, 0.5], [1.0, 0.25]])
        self.pipe = gaussian_mixture_pipeline(self.gm, family="diffusion", prediction_type="epsilon")
        self.reward = projection_reward([1.0, 0.5])
        self.steps = 25
        x, _ = self.gm.sample(20000, rng=0)
        self.threshold = float(np.quantile(self.gm.log_prob(x), 0.01))

    def prompt(self, seed):
        return ""

    def judge_winners(self, winners, seeds):
        xs = np.stack([w["sample"] for w in winners])
        return float(np.mean(self.gm.log_prob(xs) >= self.threshold))


def run_suite(suite, methods, budgets, seeds, max_batch_size):
    search = SearchPipeline.from_pipe(suite.pipe, reward=suite.reward, method=BestOfN(), max_batch_size=max_batch_size)
    rows = []
    for k in budgets:
        budget = k * suite.steps
        for name in methods:
            method = METHODS[name]()
            try:
                method.plan(budget, suite.steps)
            except ValueError as e:
                rows.append({"suite": suite.name, "method": name, "budget_trajectories": k, "nfe_budget": budget,
                             "skipped": str(e)})
                continue
            winners, rewards, nfe, seconds = [], [], [], {"denoise": 0.0, "decode": 0.0, "reward": 0.0, "total": 0.0}
            for seed in seeds:
                out = search(suite.prompt(seed), seed=seed, num_inference_steps=suite.steps, nfe_budget=budget,
                             output_type="pt", progress=False, method=method)
                assert out.stats.nfe <= budget, (name, k, out.stats.nfe)
                w = {"image": out.best.image}
                if suite.name == "gmm":
                    from evosearch.testbed import samples_from

                    w["sample"] = samples_from(search.stepper.finish(search.replay_states(out.best.lineage)))[0].numpy()
                winners.append(w)
                rewards.append(out.best.reward)
                nfe.append(out.stats.nfe)
                for p in seconds:
                    seconds[p] += out.stats.seconds.get(p, 0.0) / len(seeds)
            r = np.asarray(rewards)
            row = {"suite": suite.name, "method": name, "budget_trajectories": k, "nfe_budget": budget,
                   "mean_nfe": float(np.mean(nfe)), "mean_reward": float(r.mean()), "std_reward": float(r.std(ddof=1)),
                   "sem_reward": float(r.std(ddof=1) / np.sqrt(len(r))), "judge": suite.judge_winners(winners, seeds),
                   "seconds": {p: round(v, 4) for p, v in seconds.items()}, "rewards": rewards}
            rows.append(row)
            print(f"{suite.name:6s} {name:11s} {k:4d} {row['mean_nfe']:8.0f} {row['mean_reward']:9.4f} "
                  f"±{row['std_reward']:7.4f} {row['judge']:6.2f} {seconds['denoise']:8.2f} {seconds['decode']:7.3f} "
                  f"{seconds['reward']:7.3f}", flush=True)
    return rows


def efficiency(rows, budgets):
    """Per suite and method: the smallest budget whose mean reward reaches BestOfN at the largest budget."""
    out = {}
    top = max(budgets)
    for suite in sorted({r["suite"] for r in rows}):
        ref = next((r for r in rows if r["suite"] == suite and r["method"] == "best-of-n"
                    and r["budget_trajectories"] == top and "mean_reward" in r), None)
        if ref is None:
            continue
        out[suite] = {"target": f"best-of-{top} mean reward", "target_reward": ref["mean_reward"],
                      "target_judge": ref["judge"], "methods": {}}
        for method in METHODS:
            hits = sorted((r for r in rows if r["suite"] == suite and r["method"] == method and "mean_reward" in r
                           and r["mean_reward"] >= ref["mean_reward"]), key=lambda r: r["budget_trajectories"])
            out[suite]["methods"][method] = (None if not hits else
                                             {"budget_trajectories": hits[0]["budget_trajectories"],
                                              "compute_saving": top / hits[0]["budget_trajectories"],
                                              "judge": hits[0]["judge"]})
    return out


def plot(rows, path):
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suites = sorted({r["suite"] for r in rows})
    fig, axes = plt.subplots(2, len(suites), figsize=(5 * len(suites), 7), dpi=110, squeeze=False)
    for j, suite in enumerate(suites):
        for method in METHODS:
            rs = sorted((r for r in rows if r["suite"] == suite and r["method"] == method and "mean_reward" in r),
                        key=lambda r: r["nfe_budget"])
            if not rs:
                continue
            x = [r["nfe_budget"] for r in rs]
            axes[0, j].errorbar(x, [r["mean_reward"] for r in rs], yerr=[r["sem_reward"] for r in rs], marker="o",
                                capsize=3, label=method)
            axes[1, j].plot(x, [r["judge"] for r in rs], marker="o", label=method)
        axes[0, j].set_title(f"{suite}: winner reward (mean ± s.e.)")
        axes[1, j].set_title(f"{suite}: independent judge on winners")
        for ax in axes[:, j]:
            ax.set_xscale("log")
            ax.set_xlabel("NFE budget")
            ax.grid(alpha=0.3)
        axes[0, j].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--budgets", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--suites", nargs="+", default=["digits", "gmm"], choices=["digits", "gmm"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "scaling"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    seeds = list(range(args.seeds))
    print(f"{'suite':6s} {'method':11s} {'K':>4s} {'NFE':>8s} {'reward':>9s} {'std':>8s} {'judge':>6s} "
          f"{'denoise':>8s} {'decode':>7s} {'reward':>7s}   (K = budget in trajectories; seconds per run)")
    rows = []
    t0 = time.perf_counter()
    for name in args.suites:
        suite = DigitsSuite() if name == "digits" else MixtureSuite()
        rows += run_suite(suite, args.methods, args.budgets, seeds, args.max_batch_size)
    eff = efficiency(rows, args.budgets)
    print("\nsmallest budget (trajectories) reaching BestOfN's mean reward at the largest budget:")
    for suite, e in eff.items():
        print(f"  {suite}: target {e['target_reward']:.4f} (judge {e['target_judge']:.2f})")
        for method, hit in e["methods"].items():
            print(f"    {method:11s} " + ("not reached" if hit is None else
                                          f"{hit['budget_trajectories']:3d}  ({hit['compute_saving']:.0f}x less "
                                          f"compute, judge {hit['judge']:.2f})"))
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), {"settings": vars(args), "rows": rows, "efficiency": eff,
                                                 "seconds": time.perf_counter() - t0})
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
