"""A total NFE budget for a batch (``evosearch batch --total-nfe-budget N``): a small first wave
for every prompt, then the rest to the prompts with the most estimated headroom.

The rule (P prompts, T = the NFE of one trajectory, i.e. the number of denoising steps):

- **Wave 1**: every prompt is searched with ``min(N // (2 P), its own cap)`` NFE (its cap: the
  prompt's ``nfe_budget`` or ``--nfe-budget``, when given).
- **Headroom** of a prompt that finished wave 1, from wave 1 only: ``spread`` = the standard
  deviation of its plain samples' rewards (how much the reward still varies between samples,
  so how much more samples can find), ``gap`` = the best wave-1 reward of any prompt minus this
  prompt's (how far it is from what the reward reached elsewhere); ``headroom = min(spread,
  gap)``, so a prompt already as good as the best one, or whose samples all score alike, gets
  little. When every headroom is 0 (one prompt, say) the spread alone is used. This is a
  heuristic: rewards of different prompts are not always comparable, and a wide spread does not
  promise a better sample.
- **Wave 2**: the pool ``N - (NFE spent in wave 1, failed attempts included)`` is shared by the
  ``ceil(k / 2)`` prompts with the largest positive headroom (k: prompts that finished wave 1),
  in proportion to headroom, each share rounded down to whole trajectories and to its cap
  (minus its wave-1 NFE); a share too small for the method is dropped. What is not given stays
  unspent. Wave 2 searches anew from another seed (``derive_seed(seed, 2)``); a prompt's result
  is the better of its two waves, and its ``nfe`` counts both.

So the NFE of all results (failed attempts included) never exceeds N. The plan is written to
``DIR/budget_plan.json`` once wave 1 is complete and reused on resume, so a killed run resumed
gives the same results. ``--retry-failed`` re-runs a failed prompt's wave 1 only while the
budget not yet spent or promised covers it.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from ..core.noise import derive_seed
from ..core.validation import ParameterError
from ..io import atomic_write_json
from .lock import locked
from .prompts import BatchItem
from .results import load_results, merge_results, repair_jsonl, spent_nfe, status, writing
from .runner import (BatchSummary, Job, owner, progress_bar, run_batch, run_jobs, wait_for_everyone,
                     warn_other_settings)

PLAN = "budget_plan.json"
RULE = ("wave 1: min(N // (2 P), cap) per prompt; headroom = min(spread of plain rewards, gap to the best prompt's "
        "best reward); wave 2: the rest to the ceil(k/2) prompts of largest headroom, in proportion, whole "
        "trajectories")


def wave1_budget(total: int, n_prompts: int, cap: int | None) -> int:
    share = total // (2 * n_prompts)
    return share if cap is None else min(share, cap)


def first_wave(rec: dict) -> dict:
    """A line's wave-1 summary (nfe, best_reward, spread)."""
    return (rec.get("waves") or [{}])[0]


def compute_plan(items: Sequence[BatchItem], records: dict, total: int, caps: dict, trajectory_nfe: int,
                 viable: Callable[[int], bool]) -> dict:
    """The wave-2 budgets (see the module's rule) from every prompt's wave-1 line."""
    missing = [it.id for it in items if status(records.get(it.id)) not in ("ok", "failed")]
    if missing:
        raise ParameterError(f"--total-nfe-budget: wave 1 is not finished (no result for {missing[0]})")
    spent = {it.id: int(first_wave(records[it.id]).get("nfe") or 0) + int(records[it.id].get("nfe_failed_attempts")
                                                                         or 0) for it in items}
    ok = [it for it in items if status(records[it.id]) == "ok"]
    best = {it.id: first_wave(records[it.id])["best_reward"] for it in ok}
    top = max(best.values(), default=0.0)
    rows = {it.id: {"wave1_nfe": spent[it.id], "status": status(records[it.id])} for it in items}
    for it in ok:
        w = first_wave(records[it.id])
        rows[it.id].update(best_reward=best[it.id], spread=float(w.get("spread") or 0.0), gap=top - best[it.id])
        rows[it.id]["headroom"] = min(rows[it.id]["spread"], rows[it.id]["gap"])
    if ok and not any(rows[it.id]["headroom"] > 0 for it in ok):
        for it in ok:
            rows[it.id]["headroom"] = rows[it.id]["spread"]
    chosen = sorted((it for it in ok if rows[it.id]["headroom"] > 0),
                    key=lambda it: (-rows[it.id]["headroom"], it.index))[:math.ceil(len(ok) / 2)]
    pool = max(0, total - sum(spent.values()))
    weight = sum(rows[it.id]["headroom"] for it in chosen)
    for it in items:
        share = 0
        if it in chosen:
            share = int(pool * rows[it.id]["headroom"] / weight)
            if caps.get(it.id) is not None:
                share = min(share, max(0, caps[it.id] - spent[it.id]))
            share = share // trajectory_nfe * trajectory_nfe
            share = share if share > 0 and viable(share) else 0
        rows[it.id]["wave2_budget"] = share
    given = sum(r["wave2_budget"] for r in rows.values())
    assert given <= pool, "the plan would exceed the total budget"
    return {"total_nfe_budget": total, "trajectory_nfe": trajectory_nfe, "rule": RULE, "pool": pool,
            "unallocated": pool - given, "prompts": rows}


def load_plan(out_dir: Path, total: int) -> dict | None:
    path = out_dir / PLAN
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as err:
        raise ParameterError(f"--out: {PLAN} is unreadable ({err}); remove it to plan wave 2 again") from None
    if plan.get("total_nfe_budget") != total:
        raise ParameterError(f"--total-nfe-budget: {out_dir} was planned with a total of "
                             f"{plan.get('total_nfe_budget')} NFE, not {total}; use that, or a new --out")
    return plan


def merge_waves(first: dict, second: dict) -> dict:
    """One line for a prompt searched twice: the better wave's result, the NFE of both."""
    better = status(second) == "ok" and second["best_reward"] > first["best_reward"]
    rec = dict(second if better else first)
    rec.update(wave=2, best_wave=2 if better else first.get("best_wave", 1), status="ok", complete=True,
               nfe=first["nfe"] + second["nfe"], nfe_budget=(first.get("nfe_budget") or 0) + (second.get(
                   "nfe_budget") or 0), waves=list(first.get("waves") or []) + list(second.get("waves") or []),
               seed=first["seed"])
    rec.pop("error", None)
    if first.get("nfe_failed_attempts"):
        rec["nfe_failed_attempts"] = first["nfe_failed_attempts"]
    return rec


def retry_allowance(items, records: dict, plan: dict | None, total: int, budgets: dict, num_processes: int) -> set:
    """The failed ids this process may retry, in prompt order, while their wave-1 budgets fit in
    what is neither spent nor promised: before wave 2 is planned, the wave-1 budgets of prompts
    without a result yet; after, the wave-2 budgets not yet spent. Shared evenly by the processes."""
    if plan is None:
        promised = sum(budgets[it.id] for it in items if status(records.get(it.id)) not in ("ok", "failed"))
    else:
        promised = sum(row["wave2_budget"] for pid, row in plan["prompts"].items()
                       if (records.get(pid) or {}).get("wave", 1) < 2)
    left = (total - sum(spent_nfe(records.get(it.id)) for it in items) - promised) // num_processes
    allowed = set()
    for it in items:
        if status(records.get(it.id)) == "failed" and budgets[it.id] <= left:
            allowed.add(it.id)
            left -= budgets[it.id]
    return allowed


def run_total_budget(search, items: Sequence[BatchItem], out_dir, total: int, *, trajectory_nfe: int,
                     viable: Callable[[int], bool], nfe_budget: int | None = None,
                     num_inference_steps: int | None = None, guidance_scale: float | None = None,
                     config: dict | None = None, save_population: bool = False, progress: bool = True,
                     state=None, process_index: int | None = None, num_processes: int | None = None,
                     retry_failed: bool = False) -> BatchSummary:
    """Run the batch in two waves within ``total`` NFE (the module's rule). ``trajectory_nfe``:
    the NFE of one sample; ``viable(budget)``: whether the method can run at that budget."""
    out_dir = Path(out_dir)
    process_index, num_processes, state = owner(state, process_index, num_processes)
    with locked(out_dir, state, process_index, num_processes):
        return _run_total_budget(search, items, out_dir, total, trajectory_nfe, viable, nfe_budget,
                                 num_inference_steps, guidance_scale, config, save_population, progress, state,
                                 process_index, num_processes, retry_failed)


def _run_total_budget(search, items, out_dir: Path, total, trajectory_nfe, viable, nfe_budget, num_inference_steps,
                      guidance_scale, config, save_population, progress, state, process_index, num_processes,
                      retry_failed) -> BatchSummary:
    caps = {it.id: it.nfe_budget if it.nfe_budget is not None else nfe_budget for it in items}
    budgets = {it.id: wave1_budget(total, len(items), caps[it.id]) for it in items}
    small = min(budgets.values())
    if not viable(small):
        least = next((k * trajectory_nfe for k in range(1, 257) if viable(k * trajectory_nfe)), None)
        need = "" if least is None else f"; give at least {2 * len(items) * least} ({least} NFE per prompt)"
        raise ParameterError(f"--total-nfe-budget: {total} NFE leaves each of the {len(items)} prompts {small} NFE "
                             f"for wave 1 (N // (2 x prompts), or its cap), too little for the method{need}")
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    repair_jsonl(out_dir / f"results.rank{process_index}.jsonl")
    plan = load_plan(out_dir, total)
    retry = False
    if retry_failed:
        records = load_results(out_dir)
        retry = retry_allowance(items, records, plan, total, budgets, num_processes)
        refused = [it.id for it in items if status(records.get(it.id)) == "failed" and it.id not in retry]
        if refused and process_index == 0:
            print(f"evosearch batch: --retry-failed: {len(refused)} failed prompt(s) not retried (e.g. {refused[0]}): "
                  f"the total budget not yet spent or promised does not cover their wave 1", file=sys.stderr)
    first = run_batch(search, [replace(it, nfe_budget=budgets[it.id]) for it in items], out_dir,
                      num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, config=config,
                      save_population=save_population, progress=progress, state=state, process_index=process_index,
                      num_processes=num_processes, merge=False, retry_failed=retry)
    if not first.complete:
        return first
    wait_for_everyone(state, num_processes)
    records = load_results(out_dir)
    if plan is None:
        if process_index == 0:
            with writing(out_dir, PLAN):
                atomic_write_json(out_dir / PLAN, compute_plan(items, records, total, caps, trajectory_nfe, viable))
        wait_for_everyone(state, num_processes)
        plan = load_plan(out_dir, total)
    rows = plan["prompts"]
    mine = [it for it in items if it.index % num_processes == process_index and
            rows.get(it.id, {}).get("wave2_budget", 0) > 0 and status(records.get(it.id)) == "ok"]
    todo = [it for it in mine if records[it.id].get("wave", 1) < 2]
    warn_other_settings(out_dir, [it for it in mine if it not in todo], records, dict(config or {}))
    second, complete = [], True
    if todo:
        search = search.load() if callable(getattr(search, "load", None)) else search
        jobs = [Job(it, rows[it.id]["wave2_budget"], derive_seed(it.seed, 2), wave=2, image=f"images/wave2/{it.id}.png")
                for it in todo]
        desc = "wave 2" if num_processes == 1 else f"wave 2 (process {process_index}/{num_processes})"
        bar = progress_bar(len(mine), len(mine) - len(todo), desc, progress and process_index == 0)
        try:
            second, complete = run_jobs(search, jobs, out_dir, out_dir / f"results.rank{process_index}.jsonl",
                                        steps=num_inference_steps, guidance_scale=guidance_scale,
                                        config=dict(config or {}), save_population=save_population, previous=records,
                                        finish=lambda job, rec: merge_waves(records[job.item.id], rec),
                                        keep_interrupted=False, bar=bar)
        finally:
            bar.close()
    results_path = None
    if complete:
        wait_for_everyone(state, num_processes)
        if process_index == 0:
            with writing(out_dir, "results.jsonl"):
                results_path = merge_results(out_dir, items)
    return BatchSummary(total=len(items), assigned=first.assigned, skipped=first.skipped, ran=first.ran + len(second),
                        complete=complete, results_path=results_path, records=first.records + second,
                        failed=first.failed)
