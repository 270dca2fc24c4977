"""``evosearch batch``: the command (its flags are defined in :mod:`evosearch.cli`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..core.validation import ParameterError, check_int
from .budget import run_total_budget
from .lock import locked
from .prompts import read_prompts
from .results import RESULTS, load_results, spent_nfe, status
from .runner import run_batch

#: failed prompts listed by name at the end of a run
LISTED_FAILURES = 10


class LazySearch:
    """The batch's SearchPipeline, built on first need (a re-run with nothing left to do loads no
    model); a prompt without a budget of its own gets the default one
    (:func:`~evosearch.preflight.default_nfe_budget`)."""

    def __init__(self, make, nfe_budget, population, steps):
        self._make, self._flags = make, (nfe_budget, population, steps)
        self.search, self.default_budget = None, None

    def load(self) -> "LazySearch":
        if self.search is None:
            from ..preflight import default_nfe_budget

            self.search = self._make()
            self.default_budget = default_nfe_budget(*self._flags, self.search.stepper)
        return self

    def __call__(self, prompt, **kw):
        if kw.get("nfe_budget") is None:
            kw["nfe_budget"] = self.default_budget
        return self.search(prompt, **kw)

    def trajectory_nfe(self) -> int:
        return self._flags[2] or self.search.stepper.default_num_inference_steps

    def viable(self, budget: int) -> bool:
        """Whether the method can plan a search of ``budget`` NFE."""
        try:
            self.search.method.plan(budget, self.trajectory_nfe())
        except (ValueError, TypeError):
            return False
        return True


def resolve_device(device: str, state) -> str:
    """``auto``: the launcher's device for this process; a bare ``cuda`` under a multi-process
    launch: this process's GPU."""
    if device == "auto" or (":" not in device and device == state.device.type and state.num_processes > 1):
        return "cpu" if state.device.type == "cpu" else str(state.device)
    return device


def wants_cpu(device: str) -> bool:
    if device == "cpu" or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return True
    if device != "auto":
        return False
    import torch

    acc = getattr(torch, "accelerator", None)
    if acc is not None and hasattr(acc, "is_available"):
        return not acc.is_available()
    return not torch.cuda.is_available()


def cmd_batch(args) -> int:
    from .. import preflight as pf

    t0 = time.perf_counter()
    items = read_prompts(args.prompts, base_seed=args.seed)
    model = pf.resolve_model(args.model)
    pf.check_method_for_model(args.method, model)
    options = pf.parse_options(args.option)
    pf.make_method(args.method, args.population, options)  # every flag checked before anything loads
    early_stop = pf.make_early_stop(args.patience, args.tol, args.target_reward, args.target_judge)
    total = None if args.total_nfe_budget is None else check_int("--total-nfe-budget", args.total_nfe_budget, lo=1)
    if total is not None and args.population is not None:
        raise ParameterError("--population: with --total-nfe-budget the budget sizes every search; leave it unset")
    if args.nfe_budget is not None:
        check_int("--nfe-budget", args.nfe_budget, lo=1)
    # every check that needs no model comes before the model loads and before --out is created
    pf.check_target_judge(args.target_judge, args.judge, model)
    reward = pf.reward_name(args.reward, model)
    pf.check_reward_checkpoint(args.reward_checkpoint)
    pf.check_reward_choice(reward, model, args.reward_checkpoint)
    device = pf.check_device(args.device, allow_auto=True)
    out_dir = pf.check_out_dir(args.out)
    if args.quiet:
        pf.quiet_loading()
    from accelerate import PartialState

    state = PartialState(cpu=wants_cpu(device))
    device = resolve_device(device, state)
    config = {"method": args.method, "options": options, "population": args.population,
              "model": model if model in pf.MODELS else pf.user_path(model, out_dir), "reward": reward,
              "reward_checkpoint": pf.user_path(args.reward_checkpoint, out_dir), "steps": args.steps,
              "guidance_scale": args.guidance_scale, "eta": args.eta, "nfe_budget": args.nfe_budget,
              "total_nfe_budget": total, "judge": args.judge}

    together = args.distribute == "population" and state.num_processes > 1
    if together and total is not None:
        raise ParameterError("--distribute: population cannot be combined with --total-nfe-budget yet (its waves "
                             "split the prompts over the processes); use --distribute prompts")

    def make():
        return pf.build_search(model, pf.make_method(args.method, args.population, options), reward,
                               args.reward_checkpoint, device=device,
                               max_batch_size=args.max_batch_size, eta=args.eta, judge=args.judge,
                               early_stop=early_stop, target_judge=args.target_judge, distributed=together)

    search = LazySearch(make, args.nfe_budget, args.population, args.steps)
    common = dict(num_inference_steps=args.steps, guidance_scale=args.guidance_scale, config=config,
                  save_population=args.save_population, progress=not args.quiet, state=state,
                  retry_failed=args.retry_failed)
    # one run per --out, taken before the model loads: a second run is refused at once
    with locked(out_dir, state, state.process_index, state.num_processes):
        if total is None:
            summary = run_batch(search, items, out_dir, distribute="population" if together else "prompts",
                                **common)
        else:
            if args.population is not None:
                raise ParameterError("--population: with --total-nfe-budget the budget sizes every search; leave "
                                     "it unset")
            search.load()
            summary = run_total_budget(search, items, out_dir, total, trajectory_nfe=search.trajectory_nfe(),
                                       viable=search.viable, nfe_budget=args.nfe_budget, **common)
    if state.is_main_process:
        print_summary(args, items, out_dir, summary, state.num_processes, total, time.perf_counter() - t0)
    if state.num_processes > 1 and summary.complete:
        state.destroy_process_group()
    if not summary.complete:
        return 130
    done = load_results(out_dir)
    return 1 if any(status(done.get(it.id)) == "failed" for it in items) else 0


def results_files(out: Path, summary) -> str:
    """Where the results are: results.jsonl after a complete run; after an interrupt, the files that
    exist (the shards are merged into results.jsonl by the run that completes)."""
    if summary.results_path is not None:
        return str(out / RESULTS)
    from .results import shard_paths

    there = [p for p in (out / RESULTS,) if p.is_file()] + shard_paths(out)
    if not there:
        return f"none written in {out}"
    return ", ".join(str(out / p.name) for p in there) + " (merged into results.jsonl once a run completes)"


def print_summary(args, items, out_dir: Path, summary, num_processes: int, total, seconds: float) -> None:
    """The run in a few lines: ok / failed / skipped, mean best reward, NFE, the failed prompts."""
    done = load_results(out_dir)
    recs = [done.get(it.id) for it in items]
    ok = [r for r in recs if status(r) == "ok"]
    failed = [r for r in recs if status(r) == "failed"]
    rewards = [r["best_reward"] for r in ok if r.get("best_reward") is not None]
    mean = sum(rewards) / len(rewards) if rewards else float("nan")
    nfe = sum(spent_nfe(r) for r in recs)
    state = "complete" if summary.complete else "interrupted (finished prompts kept; re-run to resume)"
    procs = "" if num_processes == 1 else f" | {num_processes} processes"
    print(f"batch {args.method}: {len(ok)}/{len(items)} prompts done ({summary.skipped} skipped, {summary.ran} "
          f"searched here{procs}) | {len(failed)} failed | mean best reward {mean:.4f} | NFE {nfe}"
          f"{'' if total is None else f'/{total}'} | {seconds:.1f}s | {state}")
    for r in failed[:LISTED_FAILURES]:
        print(f"  failed     {r['id']} ({r['prompt'][:40]!r}): {r.get('error')}")
    if len(failed) > LISTED_FAILURES:
        print(f"  failed     ... and {len(failed) - LISTED_FAILURES} more (see results.jsonl)")
    if failed:
        print("  (--retry-failed re-runs the failed prompts; finished ones are kept)")
    print(f"  results    {results_files(Path(args.out), summary)}")
    if total is not None and (Path(out_dir) / "budget_plan.json").is_file():
        print(f"  plan       {Path(args.out) / 'budget_plan.json'}")
