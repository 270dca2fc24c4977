"""Tree-of-Frames vs best-of-N (linear search) on the bundled moving-digits segment model.

Each run asks for one digit (seed % 10) as a video of ``--segments`` segments. Best-of-N
samples N whole videos (N * segments * steps NFE); Tree-of-Frames grows them segment by
segment with median pruning (roots R, branch factor 2 at every depth: exactly R whole
videos' worth of NFE, R * segments * steps). The reward (the search's verifier) is the
bundled frame classifier's log p(digit) averaged over frames; the independent judge is an
SVC on the 8x8 window around the digit in every frame (never used for search): the
fraction of frames it reads as the requested digit, and the fraction of videos with at
least 3/4 of their frames read so. Temporal consistency (pixel correlation of consecutive frames) of the
winners is reported too. Also reported: how many NFE Tree-of-Frames needs to reach
best-of-N's mean reward (log-linear interpolation between tree sizes); Video-T1 reports
about 3x less than linear search.

Writes benchmarks/results/tree_of_frames.json.

    python benchmarks/tree_of_frames.py [--seeds 20] [--steps 10] [--segments 4]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from evosearch import BestOfN, SearchPipeline, TreeOfFrames
from evosearch.io import atomic_write_json
from evosearch.bundled.moving_digits import MovingDigitJudge, load_moving_digits_pipeline, moving_digits_reward
from evosearch.rewards.video import TemporalConsistency


def run(search, method, seeds, steps, segments, judge, consistency):
    rewards, frame_acc, video_acc, temporal, seconds, nfe, calls = [], [], [], [], [], [], []
    for seed in seeds:
        digit = seed % 10
        t = time.perf_counter()
        out = search(str(digit), seed=seed, num_inference_steps=steps, num_segments=segments, output_type="pt",
                     progress=False, method=method)
        seconds.append(time.perf_counter() - t)
        video = out.best.video[None]
        rewards.append(out.best.reward)
        frame_acc.append(judge.frame_accuracy(video, digit))
        video_acc.append(judge.video_accuracy(video, digit, min_fraction=0.75))
        temporal.append(float(consistency(video)[0]))
        nfe.append(out.stats.nfe)
        calls.append(out.stats.reward_calls)
    r = np.array(rewards)
    return {"mean_reward": float(r.mean()), "sem_reward": float(r.std(ddof=1) / math.sqrt(len(r))),
            "judge_frame_accuracy": float(np.mean(frame_acc)), "judge_video_accuracy_3_4": float(np.mean(video_acc)),
            "temporal_consistency": float(np.mean(temporal)), "nfe": float(np.mean(nfe)),
            "reward_calls": float(np.mean(calls)), "seconds": float(np.mean(seconds)), "rewards": rewards}


def nfe_to_match(target: float, points: list[tuple[float, float]]) -> float | None:
    """Smallest NFE at which the (NFE, reward) curve reaches ``target``, interpolating linearly in log NFE;
    None when it never does. ``points`` sorted by NFE."""
    if points[0][1] >= target:
        return points[0][0]
    for (n0, r0), (n1, r1) in zip(points, points[1:]):
        if r1 >= target > r0:
            f = (target - r0) / (r1 - r0)
            return math.exp(math.log(n0) + f * (math.log(n1) - math.log(n0)))
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20, help="runs per method (the digit is seed %% 10)")
    ap.add_argument("--steps", type=int, default=10, help="denoising steps per segment")
    ap.add_argument("--segments", type=int, default=4)
    ap.add_argument("--best-of", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--roots", type=int, nargs="+", default=[2, 4, 8, 16], help="Tree-of-Frames sizes (branch 2)")
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default=None, help="a trained moving-digits folder (default: the bundled one)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "tree_of_frames.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    pipe = load_moving_digits_pipeline(path=args.model)
    reward = moving_digits_reward(None if args.model is None else Path(args.model) / "classifier")
    search = SearchPipeline.from_pipe(pipe, reward=reward, method=BestOfN(),
                                      max_batch_size=args.max_batch_size)
    judge, consistency = MovingDigitJudge(), TemporalConsistency()
    seeds = list(range(args.seeds))
    S, T = args.segments, args.steps
    results = {}
    configs = [(f"best-of-{n}", BestOfN(n=n)) for n in args.best_of]
    configs += [(f"tree-of-frames R={r}", TreeOfFrames(roots=r, branch_factors=2)) for r in args.roots]
    configs.append(("tree-of-frames default (R=5)", TreeOfFrames()))
    for name, method in configs:
        t = time.perf_counter()
        results[name] = {"config": method.config(), **run(search, method, seeds, T, S, judge, consistency)}
        print(f"  {name:30s} done in {time.perf_counter() - t:.1f}s", flush=True)

    header = (f"{'method':30s} {'NFE':>6s} {'reward':>15s} {'judge frames':>12s} {'videos >=3/4':>12s} "
              f"{'temporal':>8s} {'calls':>6s} {'s/run':>6s}")
    print(f"\nmoving digits, {S} segments x {T} steps, {len(seeds)} runs per method")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{name:30s} {r['nfe']:6.0f} {r['mean_reward']:8.3f} ±{r['sem_reward']:5.3f} "
              f"{r['judge_frame_accuracy']:12.3f} {r['judge_video_accuracy_3_4']:12.3f} {r['temporal_consistency']:8.3f} "
              f"{r['reward_calls']:6.0f} {r['seconds']:6.2f}")

    tree = sorted((r["nfe"], r["mean_reward"]) for n, r in results.items() if n.startswith("tree-of-frames R="))
    matches = {}
    print("\nNFE Tree-of-Frames needs to reach best-of-N's mean reward:")
    for n in args.best_of:
        r = results[f"best-of-{n}"]
        need = nfe_to_match(r["mean_reward"], tree)
        ratio = None if need is None else r["nfe"] / need
        matches[f"best-of-{n}"] = {"best_of_n_nfe": r["nfe"], "best_of_n_reward": r["mean_reward"],
                                   "tree_nfe_needed": need, "compute_ratio": ratio,
                                   "note": None if need is None or need != tree[0][0] else
                                   "an upper bound: the smallest tree already matches"}
        at_most = need is not None and need == tree[0][0]
        text = ("not reached by the largest tree" if need is None
                else f"{'<=' if at_most else '  '}{need:5.0f} NFE  (best-of-N NFE / tree NFE = "
                     f"{'>=' if at_most else ''}{ratio:.2f})")
        print(f"  best-of-{n:<3d} ({r['nfe']:6.0f} NFE, reward {r['mean_reward']:.3f}): {text}")
    record = {"settings": {"segments": S, "steps_per_segment": T, "seeds": seeds, "guidance_scale":
                           pipe.default_guidance_scale, "eta": search.stepper.eta, "reward": repr(search.reward),
                           "judge": "MovingDigitJudge (SVC on 8x8 centre-of-mass crops)",
                           "torch_threads": args.threads},
              "results": results, "nfe_to_match_best_of_n": matches}
    path = atomic_write_json(args.out, record)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
