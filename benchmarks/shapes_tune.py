"""Choose EvoSearch's screening defaults on the shapes world's *tune* split, from candidate pools.

With elites only (``elite_fraction=1``), EvoSearch's screening generation finishes exactly
best-of-N's candidates (same lineages, same noise) whose x0 preview at the screening step scored
best (``tests/test_search.py::test_evosearch_screening_finishes_the_best_previews_as_best_of_n_draws_them``).
So from one pool per (prompt, seed) — ``shapes_pool.py``: n candidates with their previews —
every (screen step, keep fraction) at every budget K is computed exactly, without search:
the first N0 candidates are screened, the ``finished`` best previews are the finished samples,
and the winner is the best final reward among them. Best-of-K is the best of the first K.

    python benchmarks/shapes_tune.py --pool .cache/shapes_pools --seeds 1500 --reward shapes-clip

Prints judge accuracy per configuration and K, each paired against best-of-K (mean difference
and its 95% cluster-bootstrap interval), and the preview's AUC for the judge's verdict per step;
writes ``benchmarks/results/shapes_tune_<reward>.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from evosearch import EvoSearch  # noqa: E402
from evosearch.bundled import shapes  # noqa: E402
from evosearch.evaluation import paired_difference, roc_auc  # noqa: E402
from evosearch.io import atomic_write_json  # noqa: E402
from evosearch.registry import load_reward  # noqa: E402
from shapes_geneval import STEPS, scores, screening_winner  # noqa: E402
from shapes_pool import load_pool  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=Path, default=ROOT / ".cache" / "shapes_pools")
    ap.add_argument("--suite", default="hard")
    ap.add_argument("--split", default="tune")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1500])
    ap.add_argument("--reward", default="shapes-clip")
    ap.add_argument("--budgets", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--keep", type=float, nargs="+", default=[0.125, 0.25, 0.5])
    ap.add_argument("--steps", type=int, nargs="+", default=None, help="screening steps (default: every preview)")
    ap.add_argument("--agreement", action="store_true", help="also pick the winner on final + preview z-scores")
    ap.add_argument("--stages", nargs="*", default=[], metavar="S:KEEP,S:KEEP",
                    help="EvoSearch screenings ranked at several steps to try, e.g. 4:0.5,8:0.25 (rank at step 4 and "
                         "keep half, then at step 8 keep a quarter of those, finish them)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default: benchmarks/results/shapes_tune_<reward>.json")
    args = ap.parse_args(argv)
    args.out = args.out or ROOT / "benchmarks" / "results" / f"shapes_tune_{args.reward}.json"
    reward = load_reward(args.reward)
    judge = shapes.Judge()
    records, auc = [], {}
    for category, prompt in shapes.suite_prompts(args.suite, args.split):
        for seed in args.seeds:
            pool = load_pool(args.pool, prompt, seed)
            if pool is None:
                continue
            n = len(pool["final"])
            final = scores(reward, pool["final"], prompt)
            correct = np.asarray([v["correct"] for v in judge(pool["final"], prompt)])
            steps = sorted(int(k.split("_")[1]) for k in pool if k.startswith("preview_"))
            previews = {s: scores(reward, pool[f"preview_{s}"], prompt) for s in steps}
            for s in steps + [STEPS]:
                auc.setdefault(s, []).append(roc_auc(previews[s] if s < STEPS else final, correct))
            base = {"prompt": prompt, "category": category, "seed": seed}
            for k in args.budgets:
                records.append({**base, "method": "best-of-n", "K": k, "judge": bool(correct[np.argmax(final[:k])])})
                for s in [s for s in steps if args.steps is None or s in args.steps]:
                    for q in args.keep:
                        found = screening_winner(pool, previews.__getitem__, final, k,
                                                 EvoSearch(screen_fraction=s / STEPS, keep_fraction=q))
                        if found is None:
                            continue
                        w, info = found
                        records.append({**base, "method": f"screen s={s} keep={q}", "K": k,
                                        "judge": bool(correct[w]), "screened": info["screened"]})
                        if args.agreement:  # the finished sample best on both views: z(final) + z(preview)
                            top = info["finished"]
                            z = lambda v: (v - v.mean()) / (v.std() + 1e-9)  # noqa: E731
                            w = top[np.argmax(z(final[top]) + z(previews[s][top]))]
                            records.append({**base, "method": f"screen s={s} keep={q} agree", "K": k,
                                            "judge": bool(correct[w]), "screened": info["screened"]})
                for spec in args.stages:
                    stages = [x.split(":") for x in spec.split(",")]
                    method = EvoSearch(screen_fraction=tuple(int(a) / STEPS for a, _ in stages),
                                       keep_fraction=tuple(float(b) for _, b in stages))
                    found = screening_winner(pool, previews.__getitem__, final, k, method)
                    if found is not None:
                        w, info = found
                        records.append({**base, "method": f"stages {spec}", "K": k, "judge": bool(correct[w]),
                                        "screened": info["screened"]})
                for more in (2, 4):  # what screening aims at: best-of-N with more compute
                    if more * k <= n:
                        records.append({**base, "method": f"best-of-{more}K", "K": k,
                                        "judge": bool(correct[np.argmax(final[:more * k])]), "screened": more * k})
    prompts = {r["prompt"] for r in records}
    print(f"{len(prompts)} prompts x {len(args.seeds)} seeds, reward {args.reward}")
    print("preview AUC for the judge's verdict (mean over prompt-seeds with both outcomes):")
    print("  " + "  ".join(f"step {s}: {np.nanmean(v):.3f}" for s, v in sorted(auc.items())))
    rows = []
    for k in args.budgets:
        bon = np.mean([r["judge"] for r in records if r["method"] == "best-of-n" and r["K"] == k])
        print(f"K={k}: best-of-n {bon:.3f}")
        for m in sorted({r["method"] for r in records if r["K"] == k and r["method"] != "best-of-n"}):
            sel = [r for r in records if r["method"] == m and r["K"] == k]
            d = paired_difference(records, m, "best-of-n", k)
            rows.append({"K": k, "method": m, "judge": float(np.mean([r["judge"] for r in sel])),
                         "screened": sel[0]["screened"], "diff_vs_bon": d.mean, "diff_ci_low": d.low,
                         "diff_ci_high": d.high, "n": d.n})
            print(f"  {m:28s} screened {sel[0]['screened']:4d}  judge {rows[-1]['judge']:.3f}  vs best-of-n {d}")
    atomic_write_json(args.out, {"reward": args.reward, "suite": args.suite, "split": args.split, "seeds": args.seeds,
                                 "preview_auc": {str(s): float(np.nanmean(v)) for s, v in auc.items()}, "rows": rows})


if __name__ == "__main__":
    main()
