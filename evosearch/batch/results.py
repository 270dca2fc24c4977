"""The results files of a batch: append-only JSON lines per process, merged at the end.

A line's ``status`` is ``"ok"`` (a finished search, its image written first), ``"failed"``
(``error`` says why; the batch went on) or ``"interrupted"`` (Ctrl-C; redone on the next run).
Per id the newest line wins, except that a finished line is never replaced by an unfinished one.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

from ..io import _json_default, atomic_write_bytes
from .prompts import BatchItem

RESULTS = "results.jsonl"
SHARD_RE = re.compile(r"^results\.rank(\d+)\.jsonl$")
STATUSES = ("ok", "failed", "interrupted")


@contextmanager
def writing(out_dir, what: str):
    """An OSError while writing ``what`` (disk full, the folder removed) re-raised naming ``--out``."""
    try:
        yield
    except OSError as err:
        if str(err).startswith("--out:"):
            raise
        raise OSError(f"--out: cannot write {what} to {str(out_dir)!r} ({err.strerror or err}); the results "
                      f"written so far are kept, re-run to resume") from err


def status(rec: dict | None) -> str | None:
    """``"ok"``, ``"failed"``, ``"interrupted"`` (None: no line). ``complete`` decides between ok
    and interrupted (so lines written before statuses existed read the same)."""
    if rec is None:
        return None
    if rec.get("status") == "failed":
        return "failed"
    return "ok" if rec.get("complete") else "interrupted"


def is_done(rec: dict | None, out_dir: Path) -> bool:
    """A finished search whose image is on disk."""
    return status(rec) == "ok" and bool(rec.get("image")) and (Path(out_dir) / rec["image"]).is_file()


def spent_nfe(rec: dict | None) -> int:
    """NFE a prompt's line accounts for: its result's, plus that of earlier failed attempts."""
    if rec is None:
        return 0
    return int(rec.get("nfe") or 0) + int(rec.get("nfe_failed_attempts") or 0)


def read_jsonl(path: Path) -> list[dict]:
    """The JSON object lines of ``path``; a torn or corrupt line (a crash mid-append) is skipped."""
    try:
        data = Path(path).read_bytes()
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
    shards = [p for p in Path(out_dir).glob("results.rank*.jsonl") if SHARD_RE.match(p.name)]
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


def fsync_dir(path: Path) -> None:
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
        fsync_dir(path.parent)


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
    fsync_dir(out_dir)
    if remove_shards:
        for s in shards:
            s.unlink(missing_ok=True)
    return path
