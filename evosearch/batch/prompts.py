"""Prompt files of a batch: ``.txt`` (one prompt per line) or ``.jsonl`` (one object per line)."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..core.validation import ParameterError, check_int, describe

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
JSONL_KEYS = ("prompt", "seed", "id", "nfe_budget", "negative_prompt", "meta")


@dataclass(frozen=True)
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


def make_items(entries: Iterable[dict | str], base_seed: int = 0, source: str = "prompts") -> list[BatchItem]:
    """BatchItems from prompts (strings) or dicts with "prompt" and optional "seed", "id",
    "nfe_budget", "negative_prompt" and "meta" (an object carried into the result line); any
    other key is refused by name (a typo such as "nfe_bugdet" would silently run with the
    default); ``source`` names the input in errors."""
    check_int("--seed", base_seed, lo=0)
    items, seen = [], {}
    for i, e in enumerate(entries):
        where = f"{source}: prompt {i}"
        if isinstance(e, str):
            e = {"prompt": e}
        if not isinstance(e, dict):
            raise ParameterError(f"{where}: expected an object with a \"prompt\", got {type(e).__name__}")
        e = dict(e)
        where = e.pop("_where", where)
        unknown = [k for k in e if k not in JSONL_KEYS]
        if unknown:
            k = unknown[0]
            near = difflib.get_close_matches(str(k), JSONL_KEYS, n=1, cutoff=0.6)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ParameterError(f"{where}: unknown key {k!r}; {hint}the keys are {', '.join(JSONL_KEYS)} "
                                 f"(put anything else to carry along under \"meta\": {{...}})")
        meta = e.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise ParameterError(f"{where}: \"meta\" must be an object, got {describe(meta)}")
        prompt = e.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ParameterError(f"{where}: \"prompt\" must be a non-empty string, got {describe(prompt)}")
        seed = e.get("seed")
        seed = base_seed + i if seed is None else check_int(f"{where}: seed", seed, lo=0, hi=2 ** 64 - 1)
        budget = check_int(f"{where}: nfe_budget", e.get("nfe_budget"), lo=1, allow_none=True)
        neg = e.get("negative_prompt")
        if neg is not None and not isinstance(neg, str):
            raise ParameterError(f"{where}: \"negative_prompt\" must be a string, got {describe(neg)}")
        pid = e.get("id")
        if pid is None:
            pid = prompt_id(i, prompt)
        elif not isinstance(pid, str) or not ID_RE.match(pid) or pid.endswith(".population"):
            raise ParameterError(f"{where}: \"id\" must be 1-128 characters of letters, digits, '.', '_', '-' "
                                 f"(not starting with '.' or '-'), got {describe(pid)}")
        if pid in seen:
            raise ParameterError(f"{where}: id {pid!r} repeats the id of prompt {seen[pid]}; ids must be unique")
        seen[pid] = i
        items.append(BatchItem(i, pid, prompt, seed, budget, neg, dict(meta or {})))
    if not items:
        raise ParameterError(f"{source}: no prompts found")
    return items


def read_prompts(path: str | os.PathLike, base_seed: int = 0) -> list[BatchItem]:
    """The prompts of a ``.txt`` (one per line; blank and ``#`` lines skipped) or ``.jsonl`` file."""
    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"PROMPTS: {str(path)!r} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ParameterError(f"PROMPTS: {path.name} is not UTF-8 text ({err.reason} at byte {err.start})") from None
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
                raise ParameterError(f"PROMPTS: {path.name} line {n} is not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ParameterError(f"PROMPTS: {path.name} line {n}: expected a JSON object with a \"prompt\", "
                                     f"got {type(obj).__name__}")
            obj["_where"] = f"PROMPTS: {path.name} line {n}"
            entries.append(obj)
    else:
        raise ParameterError(f"PROMPTS: expected a .txt or .jsonl file, got {path.name!r}")
    return make_items(entries, base_seed=base_seed, source=f"PROMPTS: {path.name}")
