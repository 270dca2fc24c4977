"""TTS-VAR vs BestOfN at equal compute on the bundled next-scale (VAR) digits model.

For each seed (the requested digit is seed % 10) and each TTS-VAR size N (the batch
schedule {8,8,6,6,6,4,2,2,2,1,1,1,1} x N mapped onto the model's 6 scales: 8,6,4,2,1,1 x N,
clustering after scales 1 and 2, VALUE-potential resampling after 3 and 4), TTS-VAR runs at
its own cost (29 N NFE) and BestOfN runs with the same NFE budget (floor(29 N / 6)
samples) and with the same number of predicted tokens (TTS-VAR runs few samples at the
token-heavy fine scales, so it predicts fewer tokens per NFE); best-of-8 (the authors'
reference point: TTS-VAR at N=2 beats it) and plain sampling (best-of-1) are included, and
ablations at N=2 (DIFF/MAX/SUM potentials; clustering replaced by resampling; resampling
replaced by clustering). The table gives the mean (and standard error) of the
winner's reward, the accuracy of an independent judge (scikit-learn SVC on the 8x8
digits, never used for search) on the winners, NFE, tokens predicted and seconds per run.
Writes benchmarks/results/tts_var.json.

The reward is the bundled digit classifier (DigitClassifierReward: log-probability of the
requested digit) when its weights exist; otherwise (``--reward auto``) a stand-in: a
logistic regression on the 16x16 training images (log-probability of the requested
digit), which is named in the results.

    python benchmarks/tts_var.py [--seeds 100] [--n 1 2 4] [--guidance 1.0] [--no-ablations]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from evosearch import TTSVAR, BestOfN, FunctionReward, SearchPipeline
from evosearch.bundled.digits import DigitJudge, load_digits_images, parse_digit
from evosearch.bundled.var_digits import load_var_digits_pipeline
from evosearch.io import atomic_write_json


def logistic_reward():
    """Stand-in reward: multinomial logistic regression on the 16x16 train split, log p(digit)."""
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits_images("train", size=16)
    clf = LogisticRegression(C=0.5, max_iter=2000).fit(x.reshape(len(x), -1).numpy(), y.numpy())

    def score(images, prompts):
        gray = images.mean(dim=1).reshape(len(images), -1).numpy()
        logp = clf.predict_log_proba(gray)
        return torch.tensor([logp[i, parse_digit(p)] for i, p in enumerate(prompts)], dtype=torch.float32)

    return FunctionReward(score, name="logreg16_logprob")


def make_reward(name: str):
    if name in ("auto", "digits"):
        try:
            from evosearch.bundled.digits import DigitClassifierReward

            return DigitClassifierReward(), "DigitClassifierReward (bundled CNN, log p)"
        except (FileNotFoundError, ImportError) as e:
            if name == "digits":
                raise SystemExit(f"--reward digits: the bundled classifier is missing ({e})")
    return logistic_reward(), "logistic regression on 16x16 train images, log p (stand-in)"


def run(search: SearchPipeline, method, seeds, budget, judge, guidance):
    rewards, winners, targets, seconds, nfe, tokens = [], [], [], [], [], []
    for seed in seeds:
        digit = seed % 10
        t = time.perf_counter()
        out = search(str(digit), seed=seed, nfe_budget=budget, guidance_scale=guidance, output_type="pt",
                     progress=False, method=method)
        seconds.append(time.perf_counter() - t)
        assert out.stats.nfe <= budget, (method, out.stats.nfe, budget)
        rewards.append(out.best.reward)
        winners.append(out.best.image)
        targets.append(digit)
        nfe.append(out.stats.nfe)
        tokens.append(out.stats.tokens)
    hits = judge.predict(torch.stack(winners)) == np.asarray(targets)
    r = np.array(rewards)
    return {"mean_reward": float(r.mean()), "sem_reward": float(r.std(ddof=1) / np.sqrt(len(r))),
            "judge_accuracy": float(hits.mean()), "sem_judge_accuracy": float(hits.std(ddof=1) / np.sqrt(len(hits))),
            "mean_nfe": float(np.mean(nfe)), "mean_tokens": float(np.mean(tokens)),
            "mean_seconds": float(np.mean(seconds)), "rewards": [float(v) for v in rewards],
            "hits": [bool(h) for h in hits]}


def main():
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--no-ablations", dest="ablations", action="store_false",
                    help="skip the N=2 ablations (other potentials, clustering only, resampling only)")
    ap.add_argument("--n", type=int, nargs="+", default=[1, 2, 4], help="TTS-VAR sizes N")
    ap.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    ap.add_argument("--potential", default="value")
    ap.add_argument("--reward", default="auto", choices=["auto", "digits", "logreg"])
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "tts_var.json"))
    args = ap.parse_args()

    pipe = load_var_digits_pipeline()
    reward, reward_name = make_reward(args.reward)
    search = SearchPipeline.from_pipe(pipe, reward=reward, method=BestOfN(), max_batch_size=args.max_batch_size)
    K = len(pipe.model.patch_nums)
    judge = DigitJudge()
    seeds = list(range(args.seeds))
    rows = []

    def add(label, method, budget, **info):
        r = run(search, method, seeds, budget, judge, args.guidance)
        r.update(label=label, nfe_budget=budget, method=method.config(), **info)
        rows.append(r)
        print(f"{label:>22s} {r['mean_nfe']:6.0f} {r['mean_tokens']:7.0f} "
              f"{r['mean_reward']:9.4f} ± {r['sem_reward']:.4f}"
              f" {r['judge_accuracy']:9.3f} ± {r['sem_judge_accuracy']:.3f} {r['mean_seconds']:7.3f}", flush=True)

    print(f"bundled VAR digits model ({K} scales, patch_nums {pipe.model.patch_nums}), reward: {reward_name}, "
          f"judge: {judge!r}, {len(seeds)} seeds (digit = seed % 10)")
    print(f"{'method':>22s} {'NFE':>6s} {'tokens':>7s} {'reward':>18s} {'judge acc':>17s} {'s/run':>7s}")
    add("plain (best-of-1)", BestOfN(n=1), K)
    add("best-of-8", BestOfN(n=8), 8 * K)
    tokens_per_sample = rows[0]["mean_tokens"]
    for n in args.n:
        tts = TTSVAR(n=n, potential=args.potential)
        budget = tts.cost(None, K)
        add(f"TTS-VAR N={n}", tts, budget, n=n)
        add(f"best-of-{budget // K} (= NFE)", BestOfN(), budget, equal_compute_to=f"TTS-VAR N={n}", equal="nfe")
        m = int(rows[-2]["mean_tokens"] // tokens_per_sample)
        add(f"best-of-{m} (= tokens)", BestOfN(n=m), m * K, equal_compute_to=f"TTS-VAR N={n}", equal="tokens")
    if args.ablations:
        n = 2
        for pot in ("diff", "max", "sum"):
            add(f"TTS-VAR N={n} {pot}", TTSVAR(n=n, potential=pot), TTSVAR(n=n).cost(None, K), n=n, ablation=pot)
        drops = TTSVAR(n=1).plan(None, K)
        sel = drops["cluster_scales"] + drops["resample_scales"]
        add(f"N={n} resample only", TTSVAR(n=n, cluster_scales=[], resample_scales=sel, potential=args.potential),
            TTSVAR(n=n).cost(None, K), n=n, ablation="no clustering")
        add(f"N={n} cluster only", TTSVAR(n=n, cluster_scales=sel, resample_scales=[], potential=args.potential),
            TTSVAR(n=n).cost(None, K), n=n, ablation="no resampling")
    settings = vars(args) | {"reward_name": reward_name, "num_scales": K, "patch_nums": list(pipe.model.patch_nums),
                             "judge_heldout_accuracy": judge.heldout_accuracy(),
                             "tts_var_plan_n1": TTSVAR(n=1).plan(None, K)}
    atomic_write_json(Path(args.out), {"settings": settings, "results": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
