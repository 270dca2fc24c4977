"""GenEval-style benchmark on the bundled shapes world: methods paired against best-of-N, judged.

The protocol (``shared/DESIGN.md``, "Measuring search"):

- **Suites and splits**: ``--suite standard`` (41 prompts over GenEval's six categories) or
  ``--suite hard`` (position / colour-attribution / counting prompts on which plain sampling
  mostly fails), each split into ``tune`` and ``test`` (``shapes.suite_prompts``). Defaults are
  chosen on tune; numbers are reported on test, on seeds (1000+) that no choice was made on.
- **Rewards**: ``--reward shapes-clip`` (trained with hard negatives) or ``shapes-clip-v1`` (the
  weak one, to see how a method behaves when the reward is wrong).
- **Per-winner records**: every (prompt, seed, method, K) winner is one JSON line in
  ``--records``: reward, judge, valid, NFE, seconds, a hash of the image. A run skips the keys
  already there, so a cut run resumes and one cell re-runs on its own.
- **Best-of-N, plain and oracle** come from one candidate pool per (prompt, seed)
  (``shapes_pool.py``: 64 candidates drawn exactly as ``BestOfN`` draws them, with x0 previews):
  best-of-K is the best of its first K (what ``BestOfN(n=K)`` returns), ``plain`` judges every
  candidate, ``oracle`` lets the judge pick among all 64. Pools are kept in ``--pool`` and
  re-scored under each reward for free.
- **Other methods** run for real through ``SearchPipeline`` at ``nfe_budget = K * 25``.
- **Paired statistics** (``report``): each method minus best-of-N at the same K on the same
  (prompt, seed) pairs, with a 95% bootstrap interval clustered by prompt
  (:mod:`evosearch.evaluation`); an interval holding 0 is a tie.

    python benchmarks/shapes_geneval.py run --suite hard --split test --reward shapes-clip \\
        --methods best-of-n evosearch --budgets 4 8 16 64 --seeds 1000 1001
    python benchmarks/shapes_geneval.py report      # -> benchmarks/results/shapes_geneval.{json,png} + tables
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from evosearch import SearchPipeline  # noqa: E402
from evosearch.bundled import shapes  # noqa: E402
from evosearch.evaluation import cluster_bootstrap, paired_difference  # noqa: E402
from evosearch.io import atomic_path, atomic_write_bytes, atomic_write_json  # noqa: E402
from evosearch.judging import hacking_suspected  # noqa: E402
from evosearch.registry import build_method, load_reward  # noqa: E402
from shapes_pool import collect, load_pool, to_uint8  # noqa: E402

METHODS = ("best-of-n", "evosearch", "particles", "paths", "zero-order")
REWARDS = ("shapes-clip", "shapes-clip-v1")
RESULTS = ROOT / "benchmarks" / "results"
RECORDS = RESULTS / "shapes_geneval_records.jsonl"
POOL_SIZE = 64
PLAIN_SAMPLES = 8  # SearchContext.plain_samples
STEPS = 25


def image_hash(image_u8: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image_u8).tobytes()).hexdigest()[:16]


# ------------------------------------------------------------------------------ records
def read_records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record_key(r: dict) -> tuple:
    return (r["suite"], r["reward_model"], r["method"], r["K"], r["prompt"], r["seed"], r.get("source", "run"))


def deduplicate(records: list[dict]) -> tuple[list[dict], dict]:
    """One record per (suite, reward, method, K, prompt, seed): a real run wins over the same winner
    computed from a pool. Returns the records and how the two agreed where both exist."""
    by = {}
    for r in records:
        by.setdefault(record_key(r)[:6], []).append(r)
    out, same, both = [], 0, 0
    for group in by.values():
        runs = [r for r in group if r.get("source", "run") == "run"]
        pools = [r for r in group if r.get("source") == "pool"]
        if runs and pools:  # the same candidate: rows computed in other micro-batches differ in float rounding
            both += 1
            same += (abs(runs[-1]["reward"] - pools[-1]["reward"]) < 0.05 and runs[-1]["judge"] == pools[-1]["judge"])
        out.append((runs or pools)[-1])
    return out, {"cells_with_both": both, "same_winner": same}


def append_records(path: Path, rows: list[dict]) -> None:
    """Append lines and fsync: a cut run loses at most the cell it was in."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------ running
def scores(reward, images: np.ndarray, prompt: str) -> np.ndarray:
    return np.asarray(reward(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, prompt), dtype=np.float64)


def screening_winner(pool: dict, previews_of, final_rewards: np.ndarray, k: int, method) -> tuple[int, dict] | None:
    """The index of the winner that ``method`` (EvoSearch with elites-only screening, at one step or
    several) picks at budget K from this pool, and its plan; None when the pool is too small or the
    plan mutates. Exact: the finished rows are the pool's candidates (``tests/test_search.py::
    test_evosearch_screening_finishes_the_best_previews_as_best_of_n_draws_them``, ``::
    test_staged_screening_finishes_the_best_of_the_best_previews_as_best_of_n_draws_them``)."""
    plan = method.plan(k * STEPS, STEPS)
    d = plan.details
    if not d.get("screen") or d["elite_size"] != d["population_schedule"][-1]:
        return None
    steps, sizes = d["evolution_schedule"], d["population_schedule"]
    if sizes[0] > len(final_rewards) or any(f"preview_{s}" not in pool for s in steps):
        return None
    alive = np.arange(sizes[0])
    for step, keep in zip(steps, sizes[1:]):
        alive = alive[np.argsort(-previews_of(step)[alive], kind="stable")[:keep]]
    return int(alive[np.argmax(final_rewards[alive])]), {"nfe": plan.nfe, "screened": sizes[0], "step": steps[0],
                                                          "finished": alive}


def pool_records(pool: dict, prompt, category, seed, suite, split, reward_name, reward, judge, ks,
                 seconds_per_candidate, methods=("best-of-n", "evosearch"), evosearch_options: dict | None = None
                 ) -> list[dict]:
    """Best-of-K (K in ``ks``), plain and oracle records of one pool under one reward; with
    "evosearch" in ``methods``, also EvoSearch's winners where the pool holds them (the default, or
    ``EvoSearch(**evosearch_options)``, labelled as ``run`` labels it)."""
    options = evosearch_options or {}
    label = method_label("evosearch", options)
    final = pool["final"]
    rewards = scores(reward, final, prompt)
    verdicts = judge(final, prompt)
    base = {"suite": suite, "split": split, "reward_model": reward_name, "prompt": prompt, "category": category,
            "seed": seed}
    rows = []
    correct = np.asarray([v["correct"] for v in verdicts])
    for k in ks:
        if k > len(final):
            continue
        w = int(np.argmax(rewards[:k]))
        plain = slice(0, min(k, PLAIN_SAMPLES))  # the judge's plain reference: the first generation's first samples
        rows.append({**base, "method": "best-of-n", "K": k, "nfe": k * STEPS, "reward": float(rewards[w]),
                     "judge": bool(verdicts[w]["correct"]), "valid": bool(verdicts[w]["valid"]),
                     "seconds": round(seconds_per_candidate * k, 3), "image": image_hash(final[w]),
                     "warning": hacking_suspected(rewards[w], correct[w], rewards[plain], correct[plain])})
    if "evosearch" in methods:
        cache = {}
        previews_of = lambda step: cache.setdefault(step, scores(reward, pool[f"preview_{step}"], prompt))  # noqa
        for k in ks:
            found = screening_winner(pool, previews_of, rewards, k, build_method("evosearch", **options))
            if found is None:
                continue
            w, info = found
            step = info["step"]  # the plain reference of a screening search: the first previews at its step
            shown = pool[f"preview_{step}"][:PLAIN_SAMPLES]
            shown_correct = np.asarray([v["correct"] for v in judge(shown, prompt)])
            rows.append({**base, "method": label, "K": k, "nfe": info["nfe"], "reward": float(rewards[w]),
                         "judge": bool(verdicts[w]["correct"]), "valid": bool(verdicts[w]["valid"]), "seconds": None,
                         "image": image_hash(final[w]), "source": "pool", "screened": info["screened"],
                         "warning": hacking_suspected(rewards[w], correct[w], previews_of(step)[:PLAIN_SAMPLES],
                                                    shown_correct)})
    rows.append({**base, "method": "plain", "K": 1, "nfe": STEPS, "reward": float(rewards.mean()),
                 "judge": float(np.mean([v["correct"] for v in verdicts])),
                 "valid": float(np.mean([v["valid"] for v in verdicts])), "seconds": seconds_per_candidate,
                 "image": None})
    rows.append({**base, "method": "oracle", "K": len(final), "nfe": len(final) * STEPS, "reward": float("nan"),
                 "judge": bool(any(v["correct"] for v in verdicts)),
                 "valid": float(np.mean([v["valid"] for v in verdicts])), "seconds": None, "image": None})
    return rows


def method_label(name: str, options: dict) -> str:
    """A record's method name: the registry name, then each option given, e.g. ``evosearch[keep_fraction=0.5]``."""
    return name + "".join(f"[{k}={v}]" for k, v in sorted(options.items()))


def parse_options(specs: list[str]) -> dict[str, dict]:
    """``METHOD:KEY=VALUE`` strings (VALUE a Python literal) -> {method: {key: value}}."""
    options = {}
    for spec in specs:
        m, _, kv = spec.partition(":")
        key, _, value = kv.partition("=")
        options.setdefault(m, {})[key] = ast.literal_eval(value)
    return options


def run(args) -> None:
    torch.set_num_threads(args.threads)
    prompts = shapes.suite_prompts(args.suite, args.split)
    if args.prompts is not None:
        prompts = prompts[: args.prompts]
    pipe = shapes.load_pipeline()
    judge = shapes.Judge()
    reward = load_reward(args.reward)
    search = SearchPipeline.from_pipe(pipe, reward=reward, max_batch_size=args.max_batch_size, judge=False)
    done = {record_key(r) for r in read_records(args.records)}
    split_of = {p: s for s in ("tune", "test") for _, p in shapes.suite_prompts(args.suite, s)}
    options = parse_options(args.option)
    t_start = time.time()
    for name in args.methods:
        label = method_label(name, options.get(name, {}))
        for category, prompt in prompts:
            for seed in args.seeds:
                base = {"suite": args.suite, "split": split_of[prompt], "reward_model": args.reward, "prompt": prompt,
                        "category": category, "seed": seed}
                if name == "best-of-n":
                    if all((args.suite, args.reward, "best-of-n", k, prompt, seed, "run") in done for k in args.budgets):
                        continue
                    t = time.time()
                    collect(search, [prompt], [seed], POOL_SIZE, args.preview_steps, args.pool, STEPS)
                    pool = load_pool(args.pool, prompt, seed)
                    per = float(pool["seconds"]) / POOL_SIZE if "seconds" in pool else (time.time() - t) / POOL_SIZE
                    rows = pool_records(pool, prompt, category, seed, args.suite, split_of[prompt], args.reward,
                                        reward, judge, args.budgets, per, methods=("best-of-n",))
                    append_records(args.records, [r for r in rows if record_key(r) not in done])
                    done |= {record_key(r) for r in rows}
                    continue
                method = build_method(name, **options.get(name, {}))
                rows = []
                for k in args.budgets:
                    if (args.suite, args.reward, label, k, prompt, seed, "run") in done:
                        continue
                    t = time.time()
                    out = search(prompt, seed=seed, num_inference_steps=STEPS, nfe_budget=k * STEPS, method=method,
                                 output_type="pt", progress=False)
                    seconds = time.time() - t
                    img = to_uint8(out.best.image[None])[0]
                    v = judge(img[None], prompt)[0]
                    rows.append({**base, "method": label, "K": k, "nfe": out.stats.nfe, "reward": float(out.best.reward),
                                 "judge": bool(v["correct"]), "valid": bool(v["valid"]), "seconds": round(seconds, 3),
                                 "image": image_hash(img), "source": "run", "threads": torch.get_num_threads()})
                append_records(args.records, rows)
                done |= {record_key(r) for r in rows}
        print(f"{label}: done ({(time.time() - t_start) / 60:.1f} min so far)", flush=True)


def score(args) -> None:
    """Records from existing pools only (no search): best-of-K, plain, oracle, and the default
    EvoSearch's winners where a pool holds them (``source`` "pool")."""
    torch.set_num_threads(args.threads)
    judge = shapes.Judge()
    reward = load_reward(args.reward)
    done = {record_key(r) for r in read_records(args.records)}
    split_of = {p: s for s in ("tune", "test") for _, p in shapes.suite_prompts(args.suite, s)}
    evosearch_options = parse_options(args.option).get("evosearch")
    for category, prompt in shapes.suite_prompts(args.suite, args.split):
        for seed in args.seeds:
            pool = load_pool(args.pool, prompt, seed, extensions=args.extend)
            if pool is None:
                continue
            per = float(pool["seconds"]) / len(pool["final"]) if "seconds" in pool else None
            rows = pool_records(pool, prompt, category, seed, args.suite, split_of[prompt], args.reward, reward, judge,
                                args.budgets, per, evosearch_options=evosearch_options)
            for r in rows:
                r.setdefault("source", "pool")
            rows = [r for r in rows if record_key(r) not in done]
            append_records(args.records, rows)
            done |= {record_key(r) for r in rows}
    print(f"scored pools of {args.suite}/{args.split} seeds {args.seeds} under {args.reward}")


# ------------------------------------------------------------------------------ reporting
def summarize(records: list[dict]) -> list[dict]:
    """One row per (suite, split, reward, method, K, category) with judge CIs and, for search
    methods, the paired difference from best-of-N at the same K."""
    rows = []
    groups = {}
    for r in records:
        groups.setdefault((r["suite"], r["split"], r["reward_model"], r["method"], r["K"]), []).append(r)
    for (suite, split, reward_model, method, k), recs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        by_cat = {"all": recs}
        for r in recs:
            by_cat.setdefault(r["category"], []).append(r)
        for category, sel in by_cat.items():
            ci = cluster_bootstrap([float(r["judge"]) for r in sel], [r["prompt"] for r in sel])
            row = {"suite": suite, "split": split, "reward_model": reward_model, "method": method, "K": k,
                   "category": category, "n": len(sel), "prompts": len({r["prompt"] for r in sel}),
                   "seeds": sorted({int(r["seed"]) for r in sel}),
                   "nfe": float(np.mean([r["nfe"] for r in sel])),
                   "reward": float(np.nanmean([r["reward"] for r in sel])) if method != "oracle" else float("nan"),
                   "judge": ci.mean, "judge_ci_low": ci.low, "judge_ci_high": ci.high,
                   "valid": float(np.mean([float(r["valid"]) for r in sel])),
                   "seconds": (float(np.mean([r["seconds"] for r in sel])) if all(r["seconds"] is not None for r in sel)
                               else None),
                   "diff_vs_bon": None, "diff_ci_low": None, "diff_ci_high": None}
            if method not in ("best-of-n", "plain", "oracle"):
                pool = [r for r in records if r["suite"] == suite and r["reward_model"] == reward_model
                        and (category == "all" or r["category"] == category)]
                d = paired_difference(pool, method, "best-of-n", k)
                if d.n:
                    row.update(diff_vs_bon=d.mean, diff_ci_low=d.low, diff_ci_high=d.high, pairs=d.n,
                               reward_vs_bon=paired_difference(pool, method, "best-of-n", k, key="reward").mean)
            flagged = [r for r in sel if r.get("warning") is not None]
            if flagged and method not in ("plain", "oracle"):  # the reward-hacking warning's hits and false alarms
                wrong = [r["warning"] for r in flagged if not r["judge"]]
                right = [r["warning"] for r in flagged if r["judge"]]
                row.update(warning_hit_rate=float(np.mean(wrong)) if wrong else None, warning_wrong=len(wrong),
                           warning_false_alarms=float(np.mean(right)) if right else None, warning_right=len(right))
            per_prompt = {}
            for r in sel:
                if r.get("image") is not None:
                    per_prompt.setdefault(r["prompt"], []).append(r["image"])
            row["distinct_winners"] = (float(np.mean([len(set(v)) / len(v) for v in per_prompt.values()]))
                                       if per_prompt else None)
            rows.append(row)
    return rows


def judge_cells(records: list[dict]) -> dict:
    """{(suite, split, reward, method, K, prompt, seed): judge} of the search winners."""
    return {(r["suite"], r["split"], r["reward_model"], r["method"], r["K"], r["prompt"], r["seed"]): float(r["judge"])
            for r in records if r["method"] not in ("plain", "oracle")}


def paired_cells(by: dict, a: tuple, b: tuple):
    """Cell ``a`` minus cell ``b`` (each (suite, split, reward, method, K)) over the (prompt, seed)
    pairs both hold, clustered by prompt: (Interval, mean of a, mean of b), or None without pairs."""
    pairs = [key[5:] for key in sorted(by) if key[:5] == a and b + key[5:] in by]
    if not pairs:
        return None
    d = cluster_bootstrap([by[a + p] - by[b + p] for p in pairs], [p[0] for p in pairs])
    return d, float(np.mean([by[a + p] for p in pairs])), float(np.mean([by[b + p] for p in pairs]))


def collapse(records: list[dict], low: int = 8, high: int = 64) -> list[dict]:
    """Goodhart check per (suite, split, reward, method): judge at K = ``high`` minus at K = ``low``
    on the same (prompt, seed) pairs, with a 95% interval clustered by prompt (a fall is a collapse)."""
    by, rows = judge_cells(records), []
    for head in sorted({key[:4] for key in by}):
        found = paired_cells(by, head + (high,), head + (low,))
        if found:
            d, at_high, at_low = found
            rows.append({**dict(zip(("suite", "split", "reward_model", "method"), head)), f"judge_K{low}": at_low,
                         f"judge_K{high}": at_high, "change": d.mean, "change_ci_low": d.low,
                         "change_ci_high": d.high, "pairs": d.n, "prompts": d.clusters})
    return rows


def efficiency(records: list[dict], factor: int = 4) -> list[dict]:
    """Each search method at K against best-of-N at ``factor`` * K on the same (prompt, seed) pairs,
    with a 95% interval clustered by prompt: a difference >= 0 is ``factor`` x the compute efficiency."""
    by, rows = judge_cells(records), []
    for cell in sorted({key[:5] for key in by if key[3] != "best-of-n"}):
        found = paired_cells(by, cell, cell[:3] + ("best-of-n", factor * cell[4]))
        if found:
            d = found[0]
            rows.append({**dict(zip(("suite", "split", "reward_model", "method", "K"), cell)), "bon_K": factor * cell[4],
                         "diff": d.mean, "diff_ci_low": d.low, "diff_ci_high": d.high, "pairs": d.n,
                         "prompts": d.clusters})
    return rows


def winner_spread(images: list[np.ndarray]) -> float:
    """Mean pairwise RMS distance of (H, W, 3) uint8 images, in [0, 1] units, area-downsampled to
    16x16 (composition, not pixel noise); NaN for fewer than two."""
    import itertools

    import torch.nn.functional as F

    if len(images) < 2:
        return float("nan")
    x = F.interpolate(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255, size=(16, 16),
                      mode="area").flatten(1)
    return float(np.mean([float(((a - b) ** 2).mean().sqrt()) for a, b in itertools.combinations(x, 2)]))


def diversity(records: list[dict], pools: list[Path]) -> list[dict]:
    """How different a method's winners of one prompt are across seeds (:func:`winner_spread`),
    per (suite, split, reward, method, K), with the ratio to best-of-N's on the same prompts and a
    95% interval of the paired difference clustered by prompt. Winner images are found by their
    hash among the candidates of ``pools`` (seed pools keep every image best-of-N and EvoSearch's
    screening pick from); a winner not found there is left out."""
    keys = {(r["prompt"], r["seed"]) for r in records if r.get("image")}
    images = {}
    for folder in pools:
        for prompt, seed in keys:
            pool = load_pool(folder, prompt, seed)
            if pool is not None:
                images.update((image_hash(img), img) for img in pool["final"])
    cells = {}
    for r in records:
        if r.get("image") in images:
            cells.setdefault((r["suite"], r["split"], r["reward_model"], r["method"], r["K"]), {}).setdefault(
                r["prompt"], {})[r["seed"]] = images[r["image"]]
    spread = {cell: {p: winner_spread(list(by_seed.values())) for p, by_seed in per.items() if len(by_seed) > 1}
              for cell, per in cells.items()}
    rows = []
    for cell, per in sorted(spread.items(), key=lambda kv: (str(kv[0][:4]), kv[0][4])):
        if not per or cell[3] in ("plain", "oracle"):
            continue
        row = {**dict(zip(("suite", "split", "reward_model", "method", "K"), cell)), "spread": float(np.mean(
            list(per.values()))), "prompts": len(per), "seeds": max(len(cells[cell][p]) for p in per)}
        bon = spread.get(cell[:3] + ("best-of-n", cell[4]), {})
        common = [p for p in per if p in bon and len(cells[cell][p]) == len(cells[cell[:3] + ("best-of-n", cell[4])][p])]
        if cell[3] != "best-of-n" and common:
            d = cluster_bootstrap([per[p] - bon[p] for p in common], common)
            row.update(bon_spread=float(np.mean([bon[p] for p in common])),
                       ratio_vs_bon=float(np.mean([per[p] for p in common]) / np.mean([bon[p] for p in common])),
                       diff_vs_bon=d.mean, diff_ci_low=d.low, diff_ci_high=d.high, paired_prompts=len(common))
        rows.append(row)
    return rows


def fmt_ci(r) -> str:
    return f"{r['judge']:.3f} [{r['judge_ci_low']:.2f}, {r['judge_ci_high']:.2f}]"


def fmt_diff(r) -> str:
    if r.get("diff_vs_bon") is None:
        return "–"
    mark = " ▲" if r["diff_ci_low"] > 0 else (" ▼" if r["diff_ci_high"] < 0 else "")
    return f"{r['diff_vs_bon']:+.3f} [{r['diff_ci_low']:+.2f}, {r['diff_ci_high']:+.2f}]{mark}"


def fmt_seeds(seeds: list[int]) -> str:
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"seeds {seeds[0]}–{seeds[-1]}"
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


DOC_KS = (4, 8, 16, 32, 64, 128)  # the columns of the docs' tables (docs/benchmarks.md)
DOCS_RESULTS = ROOT / "docs" / "results"


def panels(rows: list[dict]) -> dict:
    """The overall rows per (suite, split, reward)."""
    overall = [r for r in rows if r["category"] == "all"]
    return {key: [r for r in overall if (r["suite"], r["split"], r["reward_model"]) == key]
            for key in sorted({(r["suite"], r["split"], r["reward_model"]) for r in overall})}


def method_lines(sel: list[dict], ks) -> dict[str, list[str]]:
    """Table lines per method of one panel: judge [95% CI] per K (a cell on fewer seeds than the
    panel says which), and for search methods the paired difference from best-of-N."""
    cell = {(r["method"], r["K"]): r for r in sel}
    seeds = max((r["seeds"] for r in sel), key=len)

    def shown(r):
        return fmt_ci(r) + (f" ({fmt_seeds(r['seeds'])})" if r["seeds"] != seeds else "")

    lines = {}
    for m in dict.fromkeys(r["method"] for r in sorted(sel, key=lambda r: r["method"] != "best-of-n")):
        if m in ("plain", "oracle"):
            lines[m] = [f"| {m} (K={r['K']}) | {shown(r)} |" + " |" * (len(ks) - 1) for r in sel if r["method"] == m]
            continue
        lines[m] = [f"| {m} | " + " | ".join(shown(cell[m, k]) if (m, k) in cell else "–" for k in ks) + " |"]
        if m != "best-of-n":
            lines[m].append(f"| {m} − best-of-n | " + " | ".join(fmt_diff(cell[m, k]) if (m, k) in cell else "–"
                                                               for k in ks) + " |")
    return lines


def write_snippets(rows: list[dict], folder: Path = DOCS_RESULTS) -> list[Path]:
    """Each method's rows of each test-split panel into ``folder/<method>.md`` (plain and oracle into
    ``baselines.md``) between ``--8<-- [start:<suite>-<reward>]`` markers, replacing what was there:
    the one place the docs take these numbers from (``docs/benchmarks.md`` and the method pages
    include them)."""
    import re

    blocks = {}  # file -> snippet name -> lines
    for (suite, split, reward_model), sel in panels(rows).items():
        if split == "test":
            for m, lines in method_lines(sel, DOC_KS).items():
                file = folder / f"{'baselines' if m in ('plain', 'oracle') else m}.md"
                blocks.setdefault(file, {}).setdefault(f"{suite}-{reward_model}", []).extend(lines)
    for file, snippets in blocks.items():
        text = file.read_text() if file.is_file() else ""
        for name, lines in snippets.items():
            start, end = f"<!-- --8<-- [start:{name}] -->\n", f"<!-- --8<-- [end:{name}] -->\n"
            block = start + "\n".join(lines) + "\n" + end
            pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
            text = pattern.sub(lambda _: block, text) if pattern.search(text) else text + block
        atomic_write_bytes(file, text.encode())
    return sorted(blocks)


def markdown(rows: list[dict]) -> str:
    """Per suite/split/reward: judge [95% CI] per method x K, and the paired difference from best-of-N."""
    out = []
    for (suite, split, reward_model), sel in panels(rows).items():
        ks = sorted({r["K"] for r in sel if r["method"] not in ("plain", "oracle")})
        seeds = max((r["seeds"] for r in sel), key=len)
        out.append(f"\n**{suite} suite, {split} split, reward {reward_model}** "
                   f"({max(r['prompts'] for r in sel)} prompts, {fmt_seeds(seeds)})\n")
        out.append("| method | " + " | ".join(f"K={k}" for k in ks) + " |")
        out.append("|---|" + "---|" * len(ks))
        for lines in method_lines(sel, ks).values():
            out += lines
    overall = [r for r in rows if r["category"] == "all"]
    fooled = [r for r in overall if r.get("warning_hit_rate") is not None or r.get("reward_vs_bon") is not None]
    if fooled:
        out.append("\n**How much each method is fooled** (paired with best-of-N at the same K: reward rise vs judge "
                   "change; the reward-hacking warning: share of wrong winners it flags / of right winners it flags)\n")
        out.append("| suite/split | reward | method | K | reward − best-of-n | judge − best-of-n | warning hits | "
                   "false alarms |")
        out.append("|---|---|---|---|---|---|---|---|")
        for r in sorted(fooled, key=lambda r: (r["suite"], r["split"], r["reward_model"], r["method"], r["K"])):
            hits = (f"{r['warning_hit_rate']:.2f} ({r['warning_wrong']})" if r.get("warning_hit_rate") is not None
                    else "–")
            alarms = (f"{r['warning_false_alarms']:.2f} ({r['warning_right']})"
                      if r.get("warning_false_alarms") is not None else "–")
            gain = f"{r['reward_vs_bon']:+.2f}" if r.get("reward_vs_bon") is not None else "–"
            out.append(f"| {r['suite']}/{r['split']} | {r['reward_model']} | {r['method']} | {r['K']} | {gain} | "
                       f"{fmt_diff(r)} | {hits} | {alarms} |")
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    """Judge accuracy vs NFE with 95% CIs, one panel per (suite, split, reward)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overall = [r for r in rows if r["category"] == "all"]
    panels = sorted({(r["suite"], r["split"], r["reward_model"]) for r in overall})
    cols = min(2, len(panels))
    rows_ = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(5.6 * cols, 4.2 * rows_), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, panels):
        sel = [r for r in overall if (r["suite"], r["split"], r["reward_model"]) == key]
        seeds = max((r["seeds"] for r in sel), key=len)
        for m in dict.fromkeys(r["method"] for r in sel):
            own = sorted({s for r in sel if r["method"] == m for s in r["seeds"]})
            label = m + (f" ({fmt_seeds(own)})" if own != seeds else "")
            pts = sorted((r["nfe"], r["judge"], r["judge_ci_low"], r["judge_ci_high"]) for r in sel if r["method"] == m)
            x, y, lo, hi = map(np.asarray, zip(*pts))
            if m == "plain":
                ax.axhline(y[0], color="gray", ls="--", lw=1, label=f"plain ({y[0]:.2f})")
            elif m == "oracle":
                ax.errorbar(x, y, [y - lo, hi - y], fmt="*", ms=12, color="gold", mec="k", label="oracle (judge picks)")
            else:
                ax.errorbar(x * (1.03 if m != "best-of-n" else 1), y, [y - lo, hi - y], marker="o", capsize=3,
                            label=label)
        ax.set_xscale("log")
        ax.set_xlabel("NFE per prompt (25 per trajectory)")
        ax.set_ylabel("judge accuracy of the winner (95% CI)")
        ax.set_title(f"{key[0]} suite, {key[1]} split, {fmt_seeds(seeds)}\nreward {key[2]}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def report(args) -> None:
    records, agreement = deduplicate([r for path in args.records_in for r in read_records(path)])
    rows = summarize(records)
    falls = {high: collapse(records, 8, high) for high in (32, 64)}
    efficient = efficiency(records, 2) + efficiency(records, 4)
    spreads = diversity(records, args.pools) if args.pools else []
    print(f"winners computed from pools and also run for real: {agreement['cells_with_both']} cells, the same "
          f"winner (reward within 0.05, same verdict) in {agreement['same_winner']}")
    atomic_write_json(args.out, {"rows": rows, "settings": {
        "steps": STEPS, "guidance_scale": 2.0, "eta": 1.0, "pool_size": POOL_SIZE,
        "records": [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else p.name for p in args.records_in],
        "bootstrap": "95% percentile, 4000 resamples of prompts", "judge": "shapes.Judge()",
        "pool_vs_run": agreement}, **{f"collapse_k8_to_k{high}": rows_ for high, rows_ in falls.items()},
        "vs_best_of_more": efficient, "diversity": spreads})
    plot(rows, args.out.with_suffix(".png"))
    print(markdown(rows))
    for high, rows_ in falls.items():
        if not rows_:
            continue
        print(f"\n**Goodhart check**: judge at K = {high} minus at K = 8, same (prompt, seed) pairs, 95% CI\n")
        print(f"| suite/split | reward | method | K=8 | K={high} | change | pairs (prompts) |")
        print("|---|---|---|---|---|---|---|")
        for r in rows_:
            print(f"| {r['suite']}/{r['split']} | {r['reward_model']} | {r['method']} | {r['judge_K8']:.3f} | "
                  f"{r[f'judge_K{high}']:.3f} | {r['change']:+.3f} [{r['change_ci_low']:+.2f}, "
                  f"{r['change_ci_high']:+.2f}] | {r['pairs']} ({r['prompts']}) |")
    if efficient:
        print("\n**2x and 4x the compute efficiency?** Each method at K minus best-of-N at 2K and 4K, same (prompt, "
              "seed) pairs, 95% CI\n")
        print("| suite/split | reward | method | K | best-of-N at | difference | pairs (prompts) |")
        print("|---|---|---|---|---|---|---|")
        for r in efficient:
            print(f"| {r['suite']}/{r['split']} | {r['reward_model']} | {r['method']} | {r['K']} | {r['bon_K']} | "
                  f"{r['diff']:+.3f} [{r['diff_ci_low']:+.2f}, {r['diff_ci_high']:+.2f}] | {r['pairs']} ({r['prompts']}) |")
    compared = [r for r in spreads if r.get("ratio_vs_bon") is not None]
    if compared:
        print("\n**Diversity**: how far apart a prompt's winners are across seeds (mean pairwise RMS at 16x16, "
              "[0, 1] units), against best-of-N's on the same prompts and seeds\n")
        print("| suite/split | reward | method | K | spread | best-of-n | ratio | difference [95% CI] | prompts (seeds) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in compared:
            print(f"| {r['suite']}/{r['split']} | {r['reward_model']} | {r['method']} | {r['K']} | {r['spread']:.3f} | "
                  f"{r['bon_spread']:.3f} | {r['ratio_vs_bon']:.2f} | {r['diff_vs_bon']:+.3f} [{r['diff_ci_low']:+.3f}, "
                  f"{r['diff_ci_high']:+.3f}] | {r['paired_prompts']} ({r['seeds']}) |")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    if args.docs is not None:
        print("docs rows:", ", ".join(str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p)
                                      for p in write_snippets(rows, args.docs)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="search and append per-winner records")
    r.add_argument("--suite", choices=shapes.SUITES, default="hard")
    r.add_argument("--split", choices=shapes.SPLITS, default="test")
    r.add_argument("--reward", choices=REWARDS, default="shapes-clip")
    r.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    r.add_argument("--budgets", type=int, nargs="+", default=[4, 8, 16, 64], help="K, in trajectories")
    r.add_argument("--seeds", type=int, nargs="+", default=[1000, 1001], help="held-out seeds")
    r.add_argument("--prompts", type=int, default=None, help="only the first N prompts of the split")
    r.add_argument("--option", action="append", default=[], metavar="METHOD:KEY=VALUE",
                   help="a method option (the records then name the method name[key=value])")
    r.add_argument("--preview-steps", type=int, nargs="*", default=[4, 6, 8, 10, 12],
                   help="steps whose x0 previews the best-of-N pools keep")
    r.add_argument("--pool", type=Path, default=ROOT / ".cache" / "shapes_pools", help="candidate pools folder")
    r.add_argument("--records", type=Path, default=RECORDS)
    r.add_argument("--max-batch-size", type=int, default=64)
    r.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1, the seconds column's unit)")
    c = sub.add_parser("score", help="records from existing candidate pools (no search)")
    c.add_argument("--suite", choices=shapes.SUITES, default="hard")
    c.add_argument("--split", choices=shapes.SPLITS, default="test")
    c.add_argument("--reward", choices=REWARDS, default="shapes-clip")
    c.add_argument("--seeds", type=int, nargs="+", default=[1000, 1001])
    c.add_argument("--budgets", type=int, nargs="+", default=[4, 8, 16, 64, 128])
    c.add_argument("--pool", type=Path, default=ROOT / ".cache" / "shapes_pools")
    c.add_argument("--extend", type=Path, nargs="*", default=[], help="pool extension folders (shapes_pool.py --skip)")
    c.add_argument("--records", type=Path, default=RECORDS)
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--option", action="append", default=[], metavar="evosearch:KEY=VALUE",
                   help="EvoSearch's winners for these options instead of the default (elites-only screening)")
    p = sub.add_parser("report", help="paired tables, JSON and plot from records")
    p.add_argument("--records-in", type=Path, nargs="+", default=[RECORDS])
    p.add_argument("--out", type=Path, default=RESULTS / "shapes_geneval.json")
    p.add_argument("--docs", type=Path, nargs="?", const=DOCS_RESULTS, default=None, metavar="FOLDER",
                   help="also write each method's test-split rows into FOLDER/<method>.md (default: docs/results)")
    p.add_argument("--pools", type=Path, nargs="*", default=[],
                   help="pool folders holding the winners' images: adds the winners' diversity across seeds")
    args = ap.parse_args(argv)
    {"run": run, "score": score, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
