"""Searching the prompts of a batch, one line per prompt, each prompt isolated from the others."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Sequence

import numpy as np

from ..core.validation import check_choice
from ..io import image_grid, portable, save_image
from .lock import locked
from .prompts import BatchItem
from .results import (append_line, fsync_dir, is_done, load_results, merge_results, repair_jsonl, spent_nfe, status,
                      writing)

# config keys whose change makes old results incomparable with new ones (warned about on resume)
CONFIG_KEYS = ("method", "options", "population", "model", "reward", "reward_checkpoint", "steps", "guidance_scale",
               "eta", "nfe_budget", "total_nfe_budget")
#: how a batch uses several processes: split the prompts, or spread each prompt's population
DISTRIBUTE = ("prompts", "population")
#: characters of an exception's message kept in a failed line
ERROR_CHARS = 500


@dataclass(frozen=True)
class Job:
    """One search of a batch: the prompt, its budget and seed, the wave it belongs to and where
    its best image goes (relative to the output folder)."""

    item: BatchItem
    nfe_budget: int | None
    seed: int
    wave: int = 1
    image: str = ""

    def image_path(self) -> str:
        return self.image or f"images/{self.item.id}.png"


@dataclass
class BatchSummary:
    total: int  # prompts in the batch
    assigned: int  # prompts this process is responsible for
    skipped: int  # of those, not searched now: already done (or failed, without retry_failed)
    ran: int  # searched now
    complete: bool  # False after an interrupt
    results_path: Path | None  # the merged file (main process, after a complete run)
    records: list = field(default_factory=list)  # the lines this process wrote
    failed: int = 0  # of the lines written now, how many failed


def error_text(err: BaseException) -> str:
    """An exception in one line of at most :data:`ERROR_CHARS` characters."""
    text = f"{type(err).__name__}: {' '.join(str(err).split())}"
    return text if len(text) <= ERROR_CHARS else text[:ERROR_CHARS] + "..."


def spread(rec: dict) -> float:
    """The standard deviation of a result's plain-sample rewards (else its final population's)."""
    values = rec.get("plain_rewards") or []
    values = values if len(values) >= 2 else rec.get("rewards") or []
    return float(np.std(values)) if len(values) >= 2 else 0.0


def search_one(search, job: Job, out_dir: Path, steps, guidance_scale, config: dict, save_population: bool,
               write: bool = True) -> dict:
    """Search one prompt and return its line (its image written first; ``write=False``: no file,
    for the other processes of a search spread over several). An exception in the search -- the
    reward raised or returned NaN, the model refused the prompt -- becomes a ``"failed"`` line
    with the error and the NFE it spent; the batch goes on."""
    it = job.item
    base = {"id": it.id, "index": it.index, "prompt": it.prompt, "seed": it.seed, "nfe_budget": job.nfe_budget,
            "negative_prompt": it.negative_prompt, "wave": job.wave}
    try:
        out = search(it.prompt, seed=job.seed, num_inference_steps=steps, guidance_scale=guidance_scale,
                     nfe_budget=job.nfe_budget, negative_prompt=it.negative_prompt, progress=False)
    except Exception as err:  # this prompt's failure; the others go on
        partial = getattr(err, "partial", None)
        nfe = int(partial.stats.nfe) if partial is not None else 0
        wave = {"wave": job.wave, "seed": job.seed, "nfe_budget": job.nfe_budget, "nfe": nfe, "best_reward": None,
                "error": error_text(err)}
        return portable({**base, "status": "failed", "complete": False, "error": wave["error"], "best_reward": None,
                         "nfe": nfe, "image": None, "waves": [wave], "config": config, **_meta(it)}, out_dir)
    budget = out.settings.get("nfe_budget", job.nfe_budget)
    complete = bool(out.complete and out.best is not None)
    rec = {**base, "nfe_budget": budget, "status": "ok" if complete else "interrupted", "complete": complete,
           "best_wave": job.wave,
           "best_reward": None, "nfe": out.stats.nfe, "image": None}
    if out.best is not None:
        # the image first (atomic), the line after it: a line never points at a missing image
        rel = job.image_path()
        rec["image"], rec["best_reward"] = rel, float(out.best.reward)
        rel_pop = rel.removesuffix(".png") + ".population.png" if save_population and out.images else None
        if rel_pop:
            rec["population_image"] = rel_pop
        if write:  # a search spread over processes: the main process writes
            with writing(out_dir, f"the image of {it.id}"):
                save_image(out.best.image, out_dir / rel)
                if rel_pop:
                    save_image(image_grid(out.images), out_dir / rel_pop)
            fsync_dir((out_dir / rel).parent)
    record = out.to_record()
    rec.update(stats=record["stats"], settings=record["settings"], lineage=record["lineage"],
               rewards=record["rewards"], plain_rewards=record["plain_rewards"], judge=record["judge"],
               warnings=record["warnings"], config=config)
    rec["waves"] = [{"wave": job.wave, "seed": job.seed, "nfe_budget": budget, "nfe": rec["nfe"],
                     "best_reward": rec["best_reward"], "spread": spread(rec)}]
    return portable({**rec, **_meta(it)}, out_dir)


def _meta(it: BatchItem) -> dict:
    return {"meta": it.meta} if it.meta else {}


def carry_failed_attempts(rec: dict, previous: dict | None) -> dict:
    """A new line for a prompt that failed before keeps the NFE those attempts spent."""
    if status(previous) == "failed":
        rec["nfe_failed_attempts"] = spent_nfe(previous)
    return rec


def owner(state=None, process_index: int | None = None, num_processes: int | None = None):
    """(process_index, num_processes, state): given, or from ``state`` (an accelerate PartialState;
    one is created when neither is given, so a plain run is process 0 of 1)."""
    if process_index is None or num_processes is None:
        if state is None:
            from accelerate import PartialState

            state = PartialState(cpu=True)
        process_index, num_processes = state.process_index, state.num_processes
    return process_index, num_processes, state


def wait_for_everyone(state, num_processes: int) -> None:
    if num_processes > 1 and state is not None:
        state.wait_for_everyone()


def warn_other_settings(out_dir: Path, items, existing: dict, config: dict) -> None:
    """Warn (once) when a kept result was made with other settings than this run's: a
    :data:`CONFIG_KEYS` setting, or the prompt's seed (``--seed``, or the .jsonl ``seed``)."""
    cmp = {k: config.get(k) for k in CONFIG_KEYS}
    for it in items:
        rec = existing.get(it.id) or {}
        old = rec.get("config")
        diff = [] if old is None or not config else [k for k in CONFIG_KEYS if old.get(k) != cmp.get(k)]
        if "seed" in rec and rec["seed"] != it.seed:
            diff.append(f"seed: {rec['seed']} there, {it.seed} now")
        if diff:
            print(f"evosearch batch: warning: {out_dir} holds results made with other settings "
                  f"({', '.join(diff)}); they are kept, not redone. Use a new --out to redo them.", file=sys.stderr)
            return


def run_jobs(search, jobs: Sequence[Job], out_dir: Path, shard: Path, *, steps, guidance_scale, config: dict,
             save_population: bool, previous: dict, finish=None, keep_interrupted: bool = True,
             bar=None, write: bool = True) -> tuple[list[dict], bool]:
    """Run ``jobs`` in order, appending each line to ``shard``; ``finish(job, rec)`` turns a line
    into the one to write. Stops at an interrupt (Ctrl-C), whose line is written only with
    ``keep_interrupted``. ``write=False``: search, write nothing (a helper process of a search
    spread over several). Returns (the lines, complete)."""
    records = []
    for job in jobs:
        rec = search_one(search, job, out_dir, steps, guidance_scale, config, save_population, write)
        if status(rec) == "interrupted" and not keep_interrupted:
            return records, False  # e.g. a later wave cut short: the earlier result stands, the re-run redoes it
        rec = carry_failed_attempts(rec, previous.get(job.item.id))
        rec = finish(job, rec) if finish is not None else rec
        if write:
            with writing(out_dir, f"the result line of {job.item.id}"):
                append_line(shard, rec)
        records.append(rec)
        if bar is not None:
            bar.set_postfix(best="-" if rec.get("best_reward") is None else f"{rec['best_reward']:.4g}",
                            nfe=rec["nfe"], failed=sum(status(r) == "failed" for r in records))
            bar.update(1)
        if status(rec) == "interrupted":  # Ctrl-C: keep the best so far, stop the batch
            return records, False
    return records, True


def progress_bar(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="prompt", disable=not enabled, dynamic_ncols=True)


def run_batch(search, items: Sequence[BatchItem], out_dir, *, nfe_budget: int | None = None,
              num_inference_steps: int | None = None, guidance_scale: float | None = None,
              config: dict | None = None, save_population: bool = False, progress: bool = True,
              state=None, process_index: int | None = None, num_processes: int | None = None,
              merge: bool = True, retry_failed: bool | Collection[str] = False,
              distribute: str = "prompts") -> BatchSummary:
    """Search every item this process owns and record it in ``out_dir``.

    ``search``: a SearchPipeline (or a callable with its signature), or an object whose
    ``load()`` returns one, called only when there is a prompt to search. ``nfe_budget``: the
    default budget (an item's own wins). ``config``: the settings recorded with each line
    (compared on resume). A prompt whose search raises gets a ``"failed"`` line and the batch
    goes on; a re-run skips it unless ``retry_failed`` (True, or the ids to retry).
    ``state``: an ``accelerate.PartialState`` (default: one is created; a plain run is one
    process); ``process_index``/``num_processes`` override it (tests). After its share,
    each process waits for the others and the main process merges the shards. ``out_dir`` is
    locked meanwhile (:mod:`evosearch.batch.lock`): a second run on it is refused.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    process_index, num_processes, state = owner(state, process_index, num_processes)
    with locked(out_dir, state, process_index, num_processes):
        return _run_batch(search, items, out_dir, nfe_budget, num_inference_steps, guidance_scale, config,
                          save_population, progress, state, process_index, num_processes, merge, retry_failed,
                          distribute)


def _run_batch(search, items, out_dir: Path, nfe_budget, num_inference_steps, guidance_scale, config,
               save_population, progress, state, process_index, num_processes, merge, retry_failed,
               distribute) -> BatchSummary:
    config = dict(config or {})

    check_choice("distribute", distribute, DISTRIBUTE)
    together = distribute == "population"
    writer = process_index == 0 or not together
    shard = out_dir / f"results.rank{process_index}.jsonl"
    if writer and repair_jsonl(shard):
        print(f"evosearch batch: cut a torn last line off {shard.name} (an interrupted write)", file=sys.stderr)
    existing = load_results(out_dir)
    mine = list(items) if together else [it for it in items if it.index % num_processes == process_index]

    def wanted(it: BatchItem) -> bool:
        rec = existing.get(it.id)
        if status(rec) == "failed":
            return retry_failed is True or (not isinstance(retry_failed, bool) and it.id in retry_failed)
        return not is_done(rec, out_dir)

    todo = [it for it in mine if wanted(it)]
    warn_other_settings(out_dir, [it for it in mine if it not in todo], existing, config)
    records, complete = [], True
    if todo:
        search = search.load() if callable(getattr(search, "load", None)) else search
        jobs = [Job(it, it.nfe_budget if it.nfe_budget is not None else nfe_budget, it.seed) for it in todo]
        desc = "batch" if num_processes == 1 or together else f"batch (process {process_index}/{num_processes})"
        bar = progress_bar(len(mine), len(mine) - len(todo), desc, progress and process_index == 0)
        try:
            records, complete = run_jobs(search, jobs, out_dir, shard, steps=num_inference_steps,
                                         guidance_scale=guidance_scale, config=config,
                                         save_population=save_population, previous=existing, bar=bar,
                                         write=writer)
        finally:
            bar.close()

    results_path = None
    if complete and merge:
        wait_for_everyone(state, num_processes)
        if process_index == 0:
            with writing(out_dir, "results.jsonl"):
                results_path = merge_results(out_dir, items)
    return BatchSummary(total=len(items), assigned=len(mine), skipped=len(mine) - len(todo), ran=len(records),
                        complete=complete, results_path=results_path, records=records,
                        failed=sum(status(r) == "failed" for r in records))
