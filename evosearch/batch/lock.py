"""One batch run per output folder: ``DIR/.evosearch-batch.lock`` names the process that holds it.

A second ``evosearch batch`` on the same ``--out`` is refused with an error naming the pid (and
host) of the run that holds the folder. A lock left by a process that is gone (killed, crashed)
is taken over, with a notice: on the same host a pid that no longer runs -- or that now belongs
to another program, told apart by its start time -- is stale. A lock from another host cannot be
checked, so it is refused with the command to remove it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ..core.validation import ParameterError

LOCK = ".evosearch-batch.lock"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _alive(pid: int, started: str | None) -> bool:
    """Whether ``pid`` runs on this host and is the process that wrote the lock."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # runs, under another user
        pass
    except OSError:
        return False
    now = _start_time(pid)
    return started is None or now is None or now == started


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(owner: dict) -> str:
    when = owner.get("started_at")
    when = "" if not when else f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(when))}"
    host = owner.get("host")
    where = "" if host in (None, socket.gethostname()) else f" on host {host}"
    return f"pid {owner.get('pid')}{where}{when}"


def acquire(out_dir, flag: str = "--out") -> Path | None:
    """Take ``out_dir``'s lock for this process. Returns the lock's path (the caller releases it),
    or None when this process holds it already. Raises a ParameterError naming ``flag`` and the
    other process when a live run holds it."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path = Path(out_dir) / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid()),
          "started_at": time.time(), "argv": sys.argv[:8]}
    for _ in range(5):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = _read(path)
            if owner is None:  # removed meanwhile: try again
                continue
            pid, host = owner.get("pid"), owner.get("host")
            if pid == me["pid"] and host == me["host"] and owner.get("started") == me["started"]:
                return None  # ours (a run_batch inside cmd_batch)
            if not isinstance(pid, int) or isinstance(pid, bool):
                stale = True  # unreadable: a crash while writing it
            elif host != me["host"]:
                raise ParameterError(f"{flag}: {str(out_dir)!r} is in use by another evosearch batch run "
                                     f"({_describe(owner)}); if that run is gone, delete {path}")
            else:
                stale = not _alive(pid, owner.get("started"))
            if not stale:
                raise ParameterError(f"{flag}: {str(out_dir)!r} is in use by another evosearch batch run "
                                     f"({_describe(owner)}); wait for it to finish (or stop it), or use another "
                                     f"{flag}")
            print(f"evosearch batch: taking over the lock of {out_dir} from {_describe(owner)}, which is no longer "
                  f"running", file=sys.stderr)
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        return path
    raise ParameterError(f"{flag}: could not take the lock {path} (other runs keep taking it)")


def release(path: Path | None) -> None:
    """Remove the lock ``acquire`` returned, if it still names this process."""
    if path is None:
        return
    owner = _read(path)
    if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


@contextmanager
def locked(out_dir, state=None, process_index: int = 0, num_processes: int = 1, flag: str = "--out"):
    """Hold ``out_dir``'s lock for the block. Under several processes the main one takes it and
    tells the others (``state``: an accelerate PartialState), so every rank refuses together."""
    error, path = None, None
    if process_index == 0:
        try:
            path = acquire(out_dir, flag)
        except ParameterError as err:
            error = str(err)
    if num_processes > 1 and state is not None:
        from accelerate.utils import broadcast_object_list

        error = broadcast_object_list([error], from_process=0)[0]
    if error is not None:
        raise ParameterError(error)
    try:
        yield
    finally:
        release(path)
