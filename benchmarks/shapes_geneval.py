"""GenEval-style benchmark on the bundled shapes world: every category x method x budget, judged.

For each benchmark prompt (``shapes.benchmark_prompts()``: 41 prompts over GenEval's six
categories) and each held-out seed, each method searches with the world's learned
contrastive reward at a budget of K trajectories (K * steps NFE); the exact judge — never
used by the search — says whether the winner satisfies the prompt (``judge``) and whether it
is a clean scene (``valid``). ``diversity`` is the mean pairwise RMS distance between the
winners of the same prompt across seeds, on the images area-downsampled to 16x16 RGB in
[0, 1] (a pixel feature space shared by nothing the search or the judge uses); it is 0 when
every seed finds the same picture. K = 1 is plain sampling.

    python benchmarks/shapes_geneval.py                      # every cell (long)
    python benchmarks/shapes_geneval.py --methods evosearch --budgets 16 --prompts 6 --seeds 2
    python benchmarks/shapes_geneval.py --merge a.json b.json  # cells run separately -> --out + README tables

Best-of-N also yields two reference rows at no extra NFE: ``plain`` (every one of its K
candidates judged: plain sampling's accuracy) and ``oracle`` (the judge itself picks among the
K = max(--budgets) candidates: what a perfect reward could find at that budget). A method run
with options other than its defaults (``--option``, ``--patience``) is labelled
``name[key=value]``. ``--patience``/``--tol`` turn on early stop and report the NFE spent.

Writes ``{"rows": [{"suite", "category", "method", "K", "nfe", "reward", "judge", "valid",
"diversity", "n"}, ...], "settings": ...}`` (``category`` "all" for the overall row) to
``--out`` (default benchmarks/results/shapes_geneval.json) and prints a table. The same
settings give the same numbers (seeds: ``--seed-offset + i``; everything else is seeded).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evosearch import EarlyStop, SearchPipeline  # noqa: E402
from evosearch.bundled import shapes  # noqa: E402
from evosearch.io import atomic_path, atomic_write_json  # noqa: E402
from evosearch.registry import build_method  # noqa: E402

METHODS = ("best-of-n", "evosearch", "particles", "paths", "zero-order")
#: per-method options for this world (the learned reward is 100 x cosine: particles need a lambda
#: for that scale, and at least 2 trajectories for paths/zero-order)
OPTIONS = {"particles": {"lambda_": 0.5}}


def diversity(images: list[torch.Tensor]) -> float:
    """Mean pairwise RMS distance of (3, H, W) images in [0, 1], area-downsampled to 16x16."""
    if len(images) < 2:
        return float("nan")
    x = F.interpolate(torch.stack(images).float(), size=(16, 16), mode="area").flatten(1)
    d = [float(((a - b) ** 2).mean().sqrt()) for a, b in itertools.combinations(x, 2)]
    return float(np.mean(d))


def winners(search, prompt, seed, method, ks, steps, early_stop=None) -> dict[int, tuple]:
    """{K: (reward, image, nfe)} of the winner at each budget K. Best-of-N is searched once at the
    largest K: BestOfN(n=K) draws the first K seeds of the same sequence, so best-of-K is the best of
    the first K candidates of best-of-max(K) (the same numbers, a quarter of the compute)."""
    if method.name == "best-of-n":
        top = max(ks)
        out = search(prompt, seed=seed, num_inference_steps=steps, method=type(method)(n=top), output_type="pt",
                     progress=False)
        in_order = [r for h in out.history for r in h["rewards"]]  # candidates in seed order
        result = {}
        for k in ks:
            r = max(in_order[:k])
            result[k] = (r, out.images[out.rewards.index(r)], k * steps)
        result["all"] = out.images  # every plain candidate, for the plain and oracle rows
        return result
    result = {}
    for k in ks:
        out = search(prompt, seed=seed, num_inference_steps=steps, nfe_budget=k * steps, method=method,
                     output_type="pt", progress=False, early_stop=early_stop)
        result[k] = (out.best.reward, out.best.image, out.stats.nfe)
    return result


def cells(search, judge, prompts, seeds, method, ks, steps, early_stop=None) -> dict[int, list[dict]]:
    """{K: per-prompt rows} of one method over prompts x seeds: the winners' reward, verdicts, diversity."""
    rows = {k: [] for k in ks}
    for category, prompt in prompts:
        found = [winners(search, prompt, seed, method, ks, steps, early_stop) for seed in seeds]
        if "all" in found[0]:  # best-of-N: judge every plain candidate too (no extra NFE)
            verdicts = [judge(torch.stack(list(w.pop("all"))), prompt) for w in found]
            flat = [v for vs in verdicts for v in vs]
            for key, judged, nfe in (("plain", [v["correct"] for v in flat], steps),
                                     ("oracle", [any(v["correct"] for v in vs) for vs in verdicts], max(ks) * steps)):
                rows.setdefault(key, []).append({
                    "category": category, "prompt": prompt, "reward": float("nan"), "judge": float(np.mean(judged)),
                    "valid": float(np.mean([v["valid"] for v in flat])), "diversity": float("nan"),
                    "nfe": float(nfe), "n": len(judged)})
        for k in ks:
            rewards, images, nfe = zip(*(w[k] for w in found))
            verdicts = judge(torch.stack(list(images)), prompt)
            rows[k].append({"category": category, "prompt": prompt, "reward": float(np.mean(rewards)),
                            "judge": float(np.mean([v["correct"] for v in verdicts])),
                            "valid": float(np.mean([v["valid"] for v in verdicts])),
                            "diversity": diversity(list(images)), "nfe": float(np.mean(nfe)), "n": len(seeds)})
    return rows


def summarize(per_prompt: list[dict], method: str, k: int, variant: str) -> list[dict]:
    rows = []
    categories = sorted({r["category"] for r in per_prompt}, key=list(shapes.CATEGORIES).index)
    for category in ["all", *categories]:
        sel = [r for r in per_prompt if category == "all" or r["category"] == category]
        n = sum(r["n"] for r in sel)
        mean = lambda key: float(np.average([r[key] for r in sel], weights=[r["n"] for r in sel]))  # noqa: E731
        rows.append({"suite": f"shapes-{variant}", "category": category, "method": method, "K": k,
                     "nfe": mean("nfe"), "reward": mean("reward"), "judge": mean("judge"), "valid": mean("valid"),
                     "diversity": float(np.nanmean([r["diversity"] for r in sel])) if any(
                         r["diversity"] == r["diversity"] for r in sel) else float("nan"), "n": n})
    return rows


def markdown(rows: list[dict]) -> str:
    """The README tables: judge accuracy (validity) overall per method x K, and per category."""
    cells = {(r["method"], r["K"], r["category"]): r for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    ks = sorted({r["K"] for r in rows})
    out = ["| method | " + " | ".join(f"K={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for m in methods:
        line = [f"{cells[m, k, 'all']['judge']:.3f} ({cells[m, k, 'all']['valid']:.2f})" if (m, k, "all") in cells
                else "–" for k in ks]
        out.append(f"| {m} | " + " | ".join(line) + " |")
    categories = [c for c in shapes.CATEGORIES if any(r["category"] == c for r in rows)]
    out += ["", "| method | K | NFE | reward | " + " | ".join(categories) + " | all | valid | diversity |",
            "|---|---|---|---|" + "---|" * (len(categories) + 3)]
    for (m, k, c), r in cells.items():
        if c != "all":
            continue
        reward = "–" if r["reward"] != r["reward"] else f"{r['reward']:.1f}"
        div = "–" if r["diversity"] != r["diversity"] else f"{r['diversity']:.3f}"
        per = " | ".join(f"{cells[m, k, cat]['judge']:.2f}" if (m, k, cat) in cells else "–" for cat in categories)
        out.append(f"| {m} | {k} | {r['nfe']:.0f} | {reward} | {per} | **{r['judge']:.3f}** | {r['valid']:.3f} | {div} |")
    return "\n".join(out)


def default_label(label: str) -> str:
    """``evosearch[intermediate_mutation=resample]`` -> ``evosearch`` when those options are the
    method's defaults (so the default variant carries the CLI name)."""
    name, _, rest = label.partition("[")
    if not rest or name not in METHODS:
        return label
    pairs = [kv.split("=", 1) for kv in rest.rstrip("]").split("][")]
    default = build_method(name, **OPTIONS.get(name, {}))
    return name if all(len(kv) == 2 and str(getattr(default, kv[0], None)) == kv[1] for kv in pairs) else label


def plot(rows: list[dict], path: Path) -> None:
    """Judge accuracy (overall) vs NFE per method, plain sampling and the oracle as references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, ax = plt.subplots(figsize=(7, 4.2))
    overall = [r for r in rows if r["category"] == "all"]
    for m in dict.fromkeys(r["method"] for r in overall):
        pts = sorted((r["nfe"], r["judge"]) for r in overall if r["method"] == m)
        if m == "plain":
            ax.axhline(pts[0][1], color="gray", ls="--", lw=1, label=f"plain sampling ({pts[0][1]:.2f})")
        elif m == "oracle":
            ax.scatter(*zip(*pts), marker="*", s=120, color="gold", edgecolor="k", zorder=3,
                       label="oracle: the judge picks among best-of-N's samples")
        else:
            ax.plot(*zip(*pts), marker="o", label=m)
    ax.set_xscale("log")
    ax.set_xlabel("NFE per prompt (denoiser evaluations; 25 per trajectory)")
    ax.set_ylabel("judge accuracy of the winner")
    ax.set_title("shapes world: what search buys, judged (held-out seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def merge(paths: list[Path], out: Path) -> None:
    rows, settings = [], {}
    for path in paths:
        data = json.loads(path.read_text())
        if data.get("settings", {}).get("partial"):
            raise SystemExit(f"--merge: {path} is from an unfinished run")
        rows += [{**r, "method": default_label(r["method"])} for r in data["rows"]]
        settings[path.stem] = data["settings"]
    atomic_write_json(out, {"rows": rows, "settings": settings})
    plot(rows, out.with_suffix(".png"))
    print(markdown(rows))
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="methods (CLI names)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[1, 4, 16, 64], help="K, in trajectories")
    ap.add_argument("--prompts", type=int, default=None, help="first N benchmark prompts, spread over categories "
                    "(default: all 41)")
    ap.add_argument("--seeds", type=int, default=4, help="seeds per prompt (default: 4)")
    ap.add_argument("--seed-offset", type=int, default=1000, help="first seed (default 1000: held out from tuning)")
    ap.add_argument("--variant", choices=shapes.VARIANTS, default="diffusion", help="which generator")
    ap.add_argument("--steps", type=int, default=None, help="num_inference_steps (default: the pipeline's)")
    ap.add_argument("--max-batch-size", type=int, default=32, help="samples per denoiser call (default: 32)")
    ap.add_argument("--option", action="append", default=[], metavar="METHOD:KEY=VALUE",
                    help="a method option, e.g. evosearch:intermediate_mutation=\\'sigma\\' (repeatable)")
    ap.add_argument("--patience", type=int, default=None,
                    help="early stop: no rise above --tol for this many generations (default: off)")
    ap.add_argument("--tol", type=float, default=0.0, help="early stop: the rise that counts (default: 0)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "shapes_geneval.json")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                    help="no search: merge these result files (cells run separately) into --out and print the "
                         "README's markdown tables")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    torch.set_num_threads(args.threads)
    prompts = shapes.benchmark_prompts()
    if args.prompts is not None:  # round-robin over categories so a small run still covers them
        by_cat = {c: [p for p in prompts if p[0] == c] for c in shapes.CATEGORIES}
        order = [p for group in itertools.zip_longest(*by_cat.values()) for p in group if p is not None]
        prompts = order[: args.prompts]
    seeds = [args.seed_offset + i for i in range(args.seeds)]
    options = {m: dict(OPTIONS.get(m, {})) for m in args.methods}
    import ast

    for spec in args.option:
        m, _, kv = spec.partition(":")
        key, _, value = kv.partition("=")
        options.setdefault(m, {})[key] = ast.literal_eval(value)
    pipe = shapes.load_pipeline(args.variant)
    # the winners are judged here, once; the pipeline's own judge report is not needed
    search = SearchPipeline.from_pipe(pipe, reward=shapes.load_reward(), max_batch_size=args.max_batch_size, judge=False)
    steps = args.steps or pipe.default_num_inference_steps
    judge = shapes.Judge()
    rows, t0 = [], time.time()
    print(f"{'method':11s} {'K':>3s} {'category':14s} {'NFE':>6s} {'reward':>7s} {'judge':>6s} {'valid':>6s} "
          f"{'div':>6s} {'n':>4s}")
    for name in args.methods:
        method = build_method(name, **options.get(name, {}))
        ks = []
        for k in args.budgets:
            try:
                method.plan(k * steps, steps)
                ks.append(k)
            except ValueError as err:
                print(f"{name:11s} {k:3d} skipped: {err}")
        if not ks:
            continue
        t = time.time()
        label = name + "".join(f"[{k}={v}]" for k, v in sorted(options.get(name, {}).items())
                               if OPTIONS.get(name, {}).get(k) != v)
        if args.patience is not None:
            label += f"[patience={args.patience},tol={args.tol:g}]"
        early_stop = EarlyStop(patience=args.patience, tol=args.tol) if args.patience is not None else None
        for k, per_prompt in cells(search, judge, prompts, seeds, method, ks, steps, early_stop).items():
            # "plain": every one of best-of-N's candidates judged; "oracle": the judge picks among them
            row_name, k = (label, k) if isinstance(k, int) else (k, 1 if k == "plain" else max(ks))
            for row in summarize(per_prompt, row_name, k, args.variant):
                rows.append(row)
                print(f"{row_name:11s} {k:3d} {row['category']:14s} {row['nfe']:6.0f} {row['reward']:7.2f} "
                      f"{row['judge']:6.3f} {row['valid']:6.3f} {row['diversity']:6.3f} {row['n']:4d}", flush=True)
        print(f"  ({time.time() - t:.0f} s)", flush=True)
        atomic_write_json(args.out, {"rows": rows, "settings": {"partial": True}})  # progress survives a cut
    settings = {"variant": args.variant, "steps": steps, "prompts": len(prompts), "seeds": seeds,
                "options": options, "guidance_scale": pipe.default_guidance_scale, "eta": 1.0,
                "reward": "shapes-clip (bundled)", "judge": "shapes.Judge()", "minutes": round((time.time() - t0) / 60, 1)}
    atomic_write_json(args.out, {"rows": rows, "settings": settings})
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
