"""Run a function in N local processes that form a gloo process group (tests, benchmarks).

Each process gets the environment ``torchrun`` would give it (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR=127.0.0.1, MASTER_PORT: a free port), so ``SearchPipeline.from_pipe(...,
distributed=True)`` sets the group up through accelerate exactly as under a launcher.
"""

from __future__ import annotations

import os
import pickle
import socket
import traceback
from typing import Any, Callable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, threads: int, fn: Callable, args: tuple, folder: str) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": str(threads)})
    import torch

    torch.set_num_threads(threads)
    try:
        result = ("ok", fn(rank, world, *args))
    except BaseException as err:  # noqa: BLE001 -- reported to the parent, which decides
        result = ("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
    path = os.path.join(folder, f"rank{rank}.pkl")
    with open(path + ".tmp", "wb") as f:
        pickle.dump(result, f)
    os.replace(path + ".tmp", path)
    try:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001
        pass


def run_processes(fn: Callable, world: int, *args, timeout: float = 120.0, threads: int = 1) -> list[Any]:
    """``fn(rank, world, *args)`` in ``world`` fresh processes (spawned; ``fn`` must be importable);
    returns each rank's result in rank order. A rank that raised makes a RuntimeError with its
    traceback; processes still running after ``timeout`` seconds are killed and a TimeoutError
    names them (a hang fails, it never blocks)."""
    import multiprocessing as mp
    import tempfile
    import time

    ctx = mp.get_context("spawn")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="evosearch-ranks-") as folder:
        procs = [ctx.Process(target=_worker, args=(r, world, port, threads, fn, args, folder), daemon=True)
                 for r in range(world)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        try:
            for p in procs:
                p.join(timeout=max(0.0, deadline - time.monotonic()))
            late = [r for r, p in enumerate(procs) if p.is_alive()]
            if late:
                raise TimeoutError(f"ranks {late} of {world} did not finish within {timeout:.0f}s (a hang)")
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                    p.join()
        got = {}
        for r in range(world):
            path = os.path.join(folder, f"rank{r}.pkl")
            if not os.path.exists(path):
                raise RuntimeError(f"rank {r} died without a result (exit code {procs[r].exitcode})")
            with open(path, "rb") as f:
                got[r] = pickle.load(f)
    errors = {r: v for r, (s, v) in got.items() if s == "error"}
    if errors:
        raise RuntimeError("; ".join(f"rank {r}: {v}" for r, v in sorted(errors.items())))
    return [got[r][1] for r in range(world)]


def summarize(out) -> dict:
    """What must not depend on the world size: the winner's lineage and reward, NFE, reward and
    decode calls, the history (generation, step, population, rewards, NFE, preview, extra)."""
    return {"lineage": None if out.best is None else out.best.lineage.to_dict(),
            "reward": None if out.best is None else float(out.best.reward),
            "image": None if out.best is None else __import__("numpy").asarray(out.best.image).tolist(),
            "nfe": out.stats.nfe, "reward_calls": out.stats.reward_calls, "decode_calls": out.stats.decode_calls,
            "complete": out.complete, "stopped": out.stats.stopped, "world_size": out.stats.world_size,
            "comm_bytes": out.stats.comm_bytes, "seconds": dict(out.stats.seconds),
            "rewards": list(out.rewards),
            "history": [{k: v for k, v in h.to_dict().items() if k != "seconds"} for h in out.history]}


_LOADED: dict = {}


def bundled_search(rank: int, world: int, spec: dict) -> dict:
    """One search on a bundled world described by ``spec`` ({"model": "shapes" (default), "var-digits",
    "moving-digits", ...; "method": registry name, "options": {...}, "population", "prompt", "seed",
    "steps", "max_batch_size", "nfe_budget", "distributed"; "stop_rank"/"stop_after_nfe": that rank's
    stop() turns true once that many NFE are spent; "fail_rank": that rank's reward raises;
    "reward_device"}); returns :func:`summarize` of the output, or {"error": class, "message",
    "partial"} for a raised error. Models load once per process."""
    from .. import SearchPipeline
    from ..registry import MODELS, build_method, default_reward, load_model, load_reward
    from ..rewards.base import FunctionReward

    model = spec.get("model", "shapes")
    if model not in _LOADED:
        _LOADED[model] = (load_model(model, "cpu"), load_reward(default_reward(model), None, "cpu"))
    pipe, reward = _LOADED[model]
    if spec.get("fail_rank") == rank:
        def broken(images, prompts):
            raise ValueError(f"the verifier on rank {rank} is broken")

        reward = FunctionReward(broken, name="broken_verifier")
    method = build_method(spec.get("method", "evosearch"), spec.get("population"), **spec.get("options", {}))
    search = SearchPipeline.from_pipe(pipe, reward=reward, method=method, max_batch_size=spec.get("max_batch_size", 4),
                                      distributed=spec.get("distributed", "auto"), judge=False,
                                      reward_device=spec.get("reward_device"))
    spent = []

    def stop():
        return spec.get("stop_rank") == rank and bool(spent) and spent[-1] >= spec.get("stop_after_nfe", 0)

    def callback(event):
        spent.append(event.nfe)

    kwargs = {k: spec[k] for k in ("nfe_budget", "num_frames", "num_segments") if spec.get(k) is not None}
    try:
        out = search(spec.get("prompt", MODELS[model].default_prompt), seed=spec.get("seed", 0),
                     num_inference_steps=spec.get("steps", 4), progress=False, stop=stop, callback=callback, **kwargs)
    except Exception as err:  # noqa: BLE001 -- the test compares what every rank raised
        partial = getattr(err, "partial", None)
        return {"error": type(err).__name__, "message": str(err),
                "partial": None if partial is None else summarize(partial)}
    return summarize(out)


def bundled_searches(rank: int, world: int, specs: list) -> list:
    """:func:`bundled_search` of each spec in turn, in one process group."""
    return [bundled_search(rank, world, spec) for spec in specs]


__all__ = ["run_processes", "free_port", "bundled_search", "bundled_searches", "summarize"]
