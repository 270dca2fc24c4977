"""``evosearch batch``: search many prompts, resumable, across processes and machines.

    evosearch batch prompts.txt --out runs/a --method evosearch --nfe-budget 2000
    accelerate launch --multi_gpu --num_processes 8 -m evosearch.cli batch prompts.jsonl --out runs/a

Input (PROMPTS): a ``.txt`` file, one prompt per line (blank lines and lines starting with
``#`` skipped), or a ``.jsonl`` file of objects ``{"prompt": ..., "seed"?, "id"?,
"nfe_budget"?, "negative_prompt"?}`` (other keys are carried along under ``meta``). The
i-th prompt (0-based, counting prompts only) gets the id ``{i:05d}-{sha1(prompt)[:10]}``
unless given, and the seed ``--seed + i`` unless given.

Output (DIR):
- ``images/<id>.png``: the best sample of each prompt (native resolution);
  ``images/<id>.population.png`` too with ``--save-population``;
- ``results.rank{k}.jsonl``: process k's results while a run is under way, one JSON line
  per prompt;
- ``results.jsonl``: at the end, every result merged and ordered by prompt index, one line
  per id (the shards are then removed).

Crash safety: a result's image is written first (atomically, temporary file + rename),
then its line is appended with a single ``write`` + ``flush`` + ``fsync``. A kill therefore
leaves at worst one torn last line, which is ignored and cut off on the next run. A re-run
skips every id that has a complete line (in results.jsonl or any shard) whose image exists,
so nothing finished is lost or recomputed. Process k of n takes the prompts with
``index % n == k``; the partition depends only on the prompt file, never on what is
already done, so processes need not agree on anything before they start.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from .io import _json_default, atomic_write_bytes, image_grid, save_image

RESULTS = "results.jsonl"
SHARD_RE = re.compile(r"^results\.rank(\d+)\.jsonl$")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
JSONL_KEYS = ("prompt", "seed", "id", "nfe_budget", "negative_prompt")
# config keys whose change makes old results incomparable with new ones (warned about on resume)
CONFIG_KEYS = ("method", "population", "model", "reward", "reward_checkpoint", "steps", "guidance_scale", "eta",
               "nfe_budget")


@dataclass
class BatchItem:
    """One prompt of a batch: ``index`` (position among the prompts), a stable ``id``, its
    ``seed`` and optional per-prompt ``nfe_budget`` / ``negative_prompt``."""

    index: int
    id: str
    prompt: str
    seed: int
    nfe_budget: int | None = None
    negative_prompt: str | None = None
    meta: dict = field(default_factory=dict)


def prompt_id(index: int, prompt: str) -> str:
    return f"{index:05d}-{hashlib.sha1(prompt.encode('utf-8')).hexdigest()[:10]}"


def _check_int(value, name: str, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where}: {name!r} must be an integer >= {minimum}, got {value!r}")
    return value


def make_items(entries: Iterable[dict | str], base_seed: int = 0, source: str = "prompts") -> list[BatchItem]:
    """BatchItems from prompts (strings) or dicts with "prompt" and optional "seed", "id",
    "nfe_budget", "negative_prompt"; ``source`` names the input in errors."""
    _check_int(base_seed, "seed", "--seed", 0)
    items, seen = [], {}
    for i, e in enumerate(entries):
        where = f"{source}: prompt {i}"
        if isinstance(e, str):
            e = {"prompt": e}
        if not isinstance(e, dict):
            raise ValueError(f"{where}: expected an object with a \"prompt\", got {type(e).__name__}")
        where = e.pop("_where", where)
        prompt = e.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: \"prompt\" must be a non-empty string, got {prompt!r}")
        seed = e.get("seed")
        seed = base_seed + i if seed is None else _check_int(seed, "seed", where, 0)
        budget = e.get("nfe_budget")
        if budget is not None:
            _check_int(budget, "nfe_budget", where, 1)
        neg = e.get("negative_prompt")
        if neg is not None and not isinstance(neg, str):
            raise ValueError(f"{where}: \"negative_prompt\" must be a string, got {neg!r}")
        pid = e.get("id")
        if pid is None:
            pid = prompt_id(i, prompt)
        elif not isinstance(pid, str) or not ID_RE.match(pid) or pid.endswith(".population"):
            raise ValueError(f"{where}: \"id\" must be 1-128 characters of letters, digits, '.', '_', '-' "
                             f"(not starting with '.' or '-'), got {pid!r}")
        if pid in seen:
            raise ValueError(f"{where}: id {pid!r} repeats the id of prompt {seen[pid]}; ids must be unique")
        seen[pid] = i
        meta = {k: v for k, v in e.items() if k not in JSONL_KEYS}
        items.append(BatchItem(i, pid, prompt, seed, budget, neg, meta))
    if not items:
        raise ValueError(f"{source}: no prompts found")
    return items


def read_prompts(path: str | os.PathLike, base_seed: int = 0) -> list[BatchItem]:
    """The prompts of a ``.txt`` (one per line; blank and ``#`` lines skipped) or ``.jsonl`` file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"PROMPTS: {str(path)!r} is not a file")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        entries = [ln.strip() for ln in text.splitlines()]
        entries = [ln for ln in entries if ln and not ln.startswith("#")]
    elif suffix == ".jsonl":
        entries = []
        for n, ln in enumerate(text.splitlines(), start=1):
            if not ln.strip() or ln.lstrip().startswith("#"):
                continue
            try:
                obj = json.loads(ln)
            except json.JSONDecodeError as e:
                raise ValueError(f"PROMPTS: {path.name} line {n} is not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"PROMPTS: {path.name} line {n}: expected a JSON object with a \"prompt\", "
                                 f"got {type(obj).__name__}")
            obj["_where"] = f"PROMPTS: {path.name} line {n}"
            entries.append(obj)
    else:
        raise ValueError(f"PROMPTS: expected a .txt or .jsonl file, got {path.name!r}")
    return make_items(entries, base_seed=base_seed, source=f"PROMPTS: {path.name}")


# -- the results files -------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict]:
    """The JSON object lines of ``path``; a torn or corrupt line (a crash mid-append) is skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for ln in data.split(b"\n"):
        if not ln.strip():
            continue
        try:
            obj = json.loads(ln)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(obj, dict) and isinstance(obj.get("id"), str):
            out.append(obj)
    return out


def shard_paths(out_dir: Path) -> list[Path]:
    shards = [p for p in out_dir.glob("results.rank*.jsonl") if SHARD_RE.match(p.name)]
    return sorted(shards, key=lambda p: int(SHARD_RE.match(p.name).group(1)))


def _better(new: dict, old: dict | None) -> bool:
    """A complete line beats an incomplete one; otherwise the later line wins."""
    return old is None or bool(new.get("complete")) or not old.get("complete")


def load_results(out_dir: str | os.PathLike) -> dict[str, dict]:
    """id -> its best line, from results.jsonl and every shard."""
    out_dir = Path(out_dir)
    best: dict[str, dict] = {}
    for path in [out_dir / RESULTS, *shard_paths(out_dir)]:
        for rec in read_jsonl(path):
            if _better(rec, best.get(rec["id"])):
                best[rec["id"]] = rec
    return best


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def repair_jsonl(path: Path) -> int:
    """Cut a torn last line (no trailing newline) off ``path``; returns the bytes removed."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return 0
        # find the last newline; everything after it is the torn line
        pos, chunk = size, 1 << 16
        keep = 0
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            buf = f.read(pos - start)
            k = buf.rfind(b"\n")
            if k >= 0:
                keep = start + k + 1
                break
            pos = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return size - keep


def append_line(path: Path, record: dict) -> None:
    """Append one JSON line with a single write, then flush and fsync."""
    data = (json.dumps(record, default=_json_default) + "\n").encode("utf-8")
    new = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        n = os.write(fd, data)
        while n < len(data):  # a short write (rare: disk full, signals) -- finish the line
            n += os.write(fd, data[n:])
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        _fsync_dir(path.parent)


def merge_results(out_dir: str | os.PathLike, items: Sequence[BatchItem] | None = None,
                  remove_shards: bool = True) -> Path:
    """Merge results.jsonl and every shard into one results.jsonl (atomically), one line per
    id, ordered by prompt index (``items``' order; ids not in ``items`` follow by their
    recorded index); then remove the shards."""
    out_dir = Path(out_dir)
    shards = shard_paths(out_dir)
    best = load_results(out_dir)
    order = {it.id: it.index for it in items} if items is not None else {}

    def key(rec):
        if rec["id"] in order:
            return (0, order[rec["id"]], rec["id"])
        idx = rec.get("index")
        return (1, idx if isinstance(idx, int) else 1 << 62, rec["id"])

    lines = [json.dumps(r, default=_json_default) + "\n" for r in sorted(best.values(), key=key)]
    path = atomic_write_bytes(out_dir / RESULTS, "".join(lines).encode("utf-8"))
    _fsync_dir(out_dir)
    if remove_shards:
        for s in shards:
            s.unlink(missing_ok=True)
    return path


# -- running -----------------------------------------------------------------------------
@dataclass
class BatchSummary:
    total: int  # prompts in the batch
    assigned: int  # prompts this process is responsible for
    skipped: int  # of those, already done before this run
    ran: int  # searched now
    complete: bool  # False after an interrupt
    results_path: Path | None  # the merged file (main process, after a complete run)
    records: list = field(default_factory=list)  # the lines this process wrote


def _is_done(rec: dict | None, out_dir: Path) -> bool:
    return bool(rec and rec.get("complete") and rec.get("image") and (out_dir / rec["image"]).is_file())


def run_batch(search, items: Sequence[BatchItem], out_dir: str | os.PathLike, *, nfe_budget: int | None = None,
              num_inference_steps: int | None = None, guidance_scale: float | None = None,
              config: dict | None = None, save_population: bool = False, progress: bool = True,
              state=None, process_index: int | None = None, num_processes: int | None = None,
              merge: bool = True) -> BatchSummary:
    """Search every item this process owns and record it in ``out_dir``.

    ``search``: a SearchPipeline (or a callable with its signature). ``nfe_budget``: the default budget (an item's own
    wins). ``config``: the settings to record with each line (compared on resume).
    ``state``: an ``accelerate.PartialState`` (default: one is created; a plain run is one
    process); ``process_index``/``num_processes`` override it (tests). After its share,
    each process waits for the others and the main process merges the shards.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "images").mkdir(exist_ok=True)
    if process_index is None or num_processes is None:
        if state is None:
            from accelerate import PartialState

            state = PartialState(cpu=True)
        process_index, num_processes = state.process_index, state.num_processes
    is_main = process_index == 0
    config = dict(config or {})

    shard = out_dir / f"results.rank{process_index}.jsonl"
    if repair_jsonl(shard):
        print(f"evosearch batch: cut a torn last line off {shard.name} (an interrupted write)", file=sys.stderr)
    existing = load_results(out_dir)
    mine = [it for it in items if it.index % num_processes == process_index]
    todo = [it for it in mine if not _is_done(existing.get(it.id), out_dir)]
    skipped = len(mine) - len(todo)
    if skipped and config:
        cmp = {k: config.get(k) for k in CONFIG_KEYS}
        for it in mine:
            rec = existing.get(it.id)
            old = (rec or {}).get("config") if _is_done(rec, out_dir) else None
            if old is not None and {k: old.get(k) for k in CONFIG_KEYS} != cmp:
                diff = [k for k in CONFIG_KEYS if old.get(k) != cmp.get(k)]
                print(f"evosearch batch: warning: {out_dir} holds results made with other settings "
                      f"({', '.join(diff)}); they are kept, not redone. Use a new --out to redo them.",
                      file=sys.stderr)
                break

    records, complete = [], True
    if todo:
        from tqdm.auto import tqdm

        desc = "batch" if num_processes == 1 else f"batch (process {process_index}/{num_processes})"
        bar = tqdm(total=len(mine), initial=skipped, desc=desc, unit="prompt", disable=not (progress and is_main),
                   dynamic_ncols=True)
        try:
            for it in todo:
                rec = _search_one(search, it, out_dir, nfe_budget, num_inference_steps, guidance_scale, config,
                                  save_population)
                append_line(shard, rec)
                records.append(rec)
                bar.set_postfix(best=f"{rec['best_reward']:.4g}" if rec["best_reward"] is not None else "-",
                                nfe=rec["nfe"])
                bar.update(1)
                if not rec["complete"]:  # interrupted (Ctrl-C): keep the best so far, stop the batch
                    complete = False
                    break
        finally:
            bar.close()

    results_path = None
    if complete and merge:
        if num_processes > 1 and state is not None:
            state.wait_for_everyone()
        if is_main:
            results_path = merge_results(out_dir, items)
    return BatchSummary(total=len(items), assigned=len(mine), skipped=skipped, ran=len(records), complete=complete,
                        results_path=results_path, records=records)


def _search_one(search, it: BatchItem, out_dir: Path, nfe_budget, steps, guidance_scale, config,
                save_population) -> dict:
    budget = it.nfe_budget if it.nfe_budget is not None else nfe_budget
    out = search(it.prompt, seed=it.seed, num_inference_steps=steps, guidance_scale=guidance_scale,
                 nfe_budget=budget, negative_prompt=it.negative_prompt, progress=False)
    budget = out.settings.get("nfe_budget", budget)
    rec = {"id": it.id, "index": it.index, "prompt": it.prompt, "seed": it.seed, "nfe_budget": budget,
           "negative_prompt": it.negative_prompt, "best_reward": None, "nfe": out.stats.nfe, "image": None,
           "complete": bool(out.complete and out.best is not None)}
    if out.best is not None:
        # the image first (atomic), the line after it: a line never points at a missing image
        rel = f"images/{it.id}.png"
        save_image(out.best.image, out_dir / rel)
        rec["image"], rec["best_reward"] = rel, float(out.best.reward)
        if save_population and out.images:
            rel_pop = f"images/{it.id}.population.png"
            save_image(image_grid(out.images), out_dir / rel_pop)
            rec["population_image"] = rel_pop
        _fsync_dir(out_dir / "images")
    record = out.to_record()
    rec.update(stats=record["stats"], settings=record["settings"], lineage=record["lineage"],
               rewards=record["rewards"], config=config)
    if it.meta:
        rec["meta"] = it.meta
    return rec


# -- the command -------------------------------------------------------------------------
def add_batch_parser(sub) -> None:
    """Register ``evosearch batch`` on the CLI's subparsers."""
    from .cli import add_search_args

    b = sub.add_parser("batch", help="search every prompt of a .txt/.jsonl file; resumable, multi-process",
                       description="Search every prompt of PROMPTS and write DIR/results.jsonl and DIR/images/. "
                                   "Re-running skips finished prompts. Under `accelerate launch` (or torchrun) "
                                   "process k takes the prompts with index % num_processes == k.")
    b.add_argument("prompts", metavar="PROMPTS",
                   help=".txt (one prompt per line; blank and # lines skipped) or .jsonl (objects with \"prompt\" "
                        "and optional \"seed\", \"id\", \"nfe_budget\", \"negative_prompt\")")
    b.add_argument("--out", required=True, metavar="DIR", help="output folder (results.jsonl, images/)")
    add_search_args(b, device="auto")  # auto: this process's device under a launcher, else GPU if any, else CPU
    b.add_argument("--save-population", action="store_true",
                   help="also save a grid of each prompt's final population (images/<id>.population.png)")
    b.set_defaults(func=cmd_batch)


def _resolve_device(device: str, state) -> str:
    """``auto``: the launcher's device for this process; a bare ``cuda`` under a multi-process
    launch: this process's GPU."""
    if device == "auto" or (":" not in device and device == state.device.type and state.num_processes > 1):
        return "cpu" if state.device.type == "cpu" else str(state.device)
    return device


def _wants_cpu(device: str) -> bool:
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
    from accelerate import PartialState

    from . import SearchPipeline
    from .cli import build_method, default_nfe_budget, default_reward_name, load_model, load_reward

    t0 = time.perf_counter()
    items = read_prompts(args.prompts, base_seed=args.seed)
    if args.quiet:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
    state = PartialState(cpu=_wants_cpu(args.device))
    device = _resolve_device(args.device, state)
    reward_name = args.reward or default_reward_name(args.model)
    build_method(args.method, args.population)  # validate the method before any loading
    config = {"method": args.method, "population": args.population, "model": args.model, "reward": reward_name,
              "reward_checkpoint": args.reward_checkpoint, "steps": args.steps, "guidance_scale": args.guidance_scale,
              "eta": args.eta, "nfe_budget": args.nfe_budget}
    budget_box = {}

    def make_search():
        pipe = load_model(args.model, device)
        reward = load_reward(reward_name, args.reward_checkpoint, device)
        search = SearchPipeline.from_pipe(pipe, reward=reward, method=build_method(args.method, args.population),
                                          max_batch_size=args.max_batch_size, eta=args.eta)
        budget_box["budget"] = default_nfe_budget(args, search)
        return search

    # the default budget needs the model (its default step count): resolve it lazily
    class _Lazy:
        search = None

        def __call__(self, prompt, **kw):
            if self.search is None:
                self.search = make_search()
            if kw.get("nfe_budget") is None:
                kw["nfe_budget"] = budget_box["budget"]
            return self.search(prompt, **kw)

    summary = run_batch(_Lazy(), items, args.out, num_inference_steps=args.steps,
                        guidance_scale=args.guidance_scale, config=config, save_population=args.save_population,
                        progress=not args.quiet, state=state)
    if state.is_main_process:
        done = load_results(args.out)
        recs = [done[it.id] for it in items if it.id in done]
        n_ok = sum(bool(r.get("complete")) for r in recs)
        rewards = [r["best_reward"] for r in recs if r.get("complete") and r.get("best_reward") is not None]
        mean = sum(rewards) / len(rewards) if rewards else float("nan")
        status = "complete" if summary.complete else "interrupted (finished prompts kept; re-run to resume)"
        procs = "" if state.num_processes == 1 else f" | {state.num_processes} processes"
        print(f"batch {args.method}: {n_ok}/{len(items)} prompts done ({summary.skipped} skipped, {summary.ran} "
              f"searched here{procs}) | mean best reward {mean:.4f} | {time.perf_counter() - t0:.1f}s | {status}")
        print(f"  results    {Path(args.out) / RESULTS if summary.results_path is None else summary.results_path}")
    if state.num_processes > 1 and summary.complete:
        state.destroy_process_group()
    return 0 if summary.complete else 130
