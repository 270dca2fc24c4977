"""One search spread over the ranks of a torch.distributed process group (population parallelism).

Every rank runs the same method with the same seeded generator, so every decision (selection,
tournament, resampling, schedules) is made identically everywhere and nothing waits for a
decision from another rank. What is split is the work on rows: each rank denoises, decodes and
scores a contiguous shard of every population (:func:`span`), rewards are all-gathered, and the
states that children need are fetched from the ranks that hold them. Because every row's
randomness is keyed by its lineage's seeds, the result does not depend on the world size.

States of a distributed population are one of:

* :class:`Sharded` -- computed rows, each rank holding its span of every block (a rollout's
  output is one block; the waves of a generation are several);
* :class:`Lazy` -- rows picked from a Sharded batch (``index``), with the last events of
  ``lineages`` still to apply (or, with no source, rows still to start from their lineages): a
  selection or a branch costs nothing until a rank needs its own rows, and then it fetches only
  those (:meth:`Collective.gather_rows`) and applies the events to them.

:class:`Collective` is the transport: torch.distributed collectives on the group accelerate's
``PartialState`` sets up (gloo on CPU, NCCL on GPU), with the bytes and seconds they took.
"""

from __future__ import annotations

import os
import pickle
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..core.validation import ParameterError, describe
from .context import DistributedSearchError  # noqa: F401  (raised on every rank; re-exported)

#: methods a distributed search refuses, and why
REFUSED_METHODS: dict[str, str] = {
    "tts-var": "its k-means selection on the gathered previews of a next-scale model has not been shown to give "
               "the same samples at every world size",
}
DISTRIBUTED_CHOICES = (True, False, "auto")


def span(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [lo, hi) of an n-row batch that ``rank`` of ``world`` holds: contiguous, the first
    n % world ranks one row more (as ``accelerate``'s ``split_between_processes``)."""
    q, r = divmod(int(n), int(world))
    lo = rank * q + min(rank, r)
    return lo, lo + q + (1 if rank < r else 0)


@dataclass(frozen=True)
class Sharded:
    """Computed rows spread over the ranks: ``blocks`` is a list of (rows, this rank's local part),
    block b's rows split by :func:`span`. ``len`` is the number of rows of all blocks."""

    blocks: tuple
    rank: int
    world: int

    @classmethod
    def one(cls, n: int, local, rank: int, world: int) -> "Sharded":
        return cls(((int(n), local),), rank, world)

    def __len__(self) -> int:
        return sum(n for n, _ in self.blocks)

    @staticmethod
    def concat(parts: Sequence["Sharded"]) -> "Sharded":
        return Sharded(tuple(b for p in parts for b in p.blocks), parts[0].rank, parts[0].world)

    def owners(self) -> tuple[np.ndarray, np.ndarray]:
        """For every row: the rank holding it, and its position in that rank's :meth:`pool`."""
        owner = np.empty(len(self), dtype=np.int64)
        pos = np.empty(len(self), dtype=np.int64)
        filled = np.zeros(self.world, dtype=np.int64)
        row = 0
        for n, _ in self.blocks:
            for r in range(self.world):
                lo, hi = span(n, r, self.world)
                owner[row + lo:row + hi] = r
                pos[row + lo:row + hi] = filled[r] + np.arange(hi - lo)
                filled[r] += hi - lo
            row += n
        return owner, pos


@dataclass(frozen=True)
class Lazy:
    """Rows ``index`` of ``source`` (None: rows not started yet) with the last events of
    ``lineages`` (one per row) still to apply; None = the rows as they are."""

    source: Sharded | None
    index: np.ndarray
    lineages: tuple | None = None

    def __len__(self) -> int:
        return len(self.index)

    def select(self, idx) -> "Lazy":
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        lins = None if self.lineages is None else tuple(self.lineages[k] for k in idx)
        return Lazy(self.source, self.index[idx], lins)


class Collective:
    """The process group one search runs on: rank, world size and the collectives it uses, with
    the bytes each rank received through them (``bytes``) and the time spent in them
    (``seconds``: waiting for the slowest rank included)."""

    def __init__(self, group=None):
        import torch.distributed as dist

        self._dist = dist
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        backend = dist.get_backend(group)
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        self.bytes = 0
        self.seconds = 0.0
        #: seconds in the syncs (a few numbers; they absorb the wait for the slowest rank) and in the
        #: collectives that move data (rewards, samples, states)
        self.seconds_by_kind = {"sync": 0.0, "data": 0.0}
        self.broken = False  # a collective itself failed: no more collectives (they could hang)

    def __repr__(self) -> str:
        return f"Collective(rank={self.rank}, world={self.world}, device={self.device})"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def span(self, n: int) -> tuple[int, int]:
        return span(n, self.rank, self.world)

    def _run(self, fn, *args, kind: str = "data"):
        t = time.perf_counter()
        try:
            return fn(*args)
        except Exception as err:
            self.broken = True
            raise DistributedSearchError(f"distributed: a collective failed on rank {self.rank} of {self.world} "
                                         f"(another rank died or the group broke): {type(err).__name__}: {err}") from err
        finally:
            dt = time.perf_counter() - t
            self.seconds += dt
            self.seconds_by_kind[kind] += dt

    def all_reduce(self, values: Sequence[float]) -> torch.Tensor:
        """The sum over ranks of a few numbers (float64, exact for counts below 2**53)."""
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        self._run(self._dist.all_reduce, t, self._dist.ReduceOp.SUM, self.group, kind="sync")
        self.bytes += t.numel() * t.element_size() * (self.world - 1)
        return t.cpu()

    def all_gather_objects(self, obj) -> list:
        """Every rank's ``obj`` (pickled), in rank order."""
        out = [None] * self.world
        self._run(self._dist.all_gather_object, out, obj, self.group)
        self.bytes += sum(len(pickle.dumps(o, protocol=pickle.HIGHEST_PROTOCOL)) for r, o in enumerate(out)
                          if r != self.rank)
        return out

    def gather_rows(self, payload, counts: Sequence[int]) -> list:
        """Every rank's ``payload`` (rank r's has ``counts[r]`` rows), in rank order. Tensors go
        through one all_gather padded to the largest count; other state objects are pickled."""
        m = max(counts)
        if not isinstance(payload, torch.Tensor):
            return self.all_gather_objects(payload)
        home = payload.device
        x = payload.to(self.device)
        if x.shape[0] < m:
            x = torch.cat([x, x.new_zeros((m - x.shape[0], *x.shape[1:]))])
        out = [torch.empty_like(x) for _ in range(self.world)]
        self._run(self._dist.all_gather, out, x.contiguous(), self.group)
        self.bytes += (self.world - 1) * x.numel() * x.element_size()
        return [o[:c].to(home) for o, c in zip(out, counts)]


def process_group_size() -> int:
    """The size of the process group this process is in, or will be once ``PartialState`` sets it
    up from a launcher's environment (``accelerate launch``, ``torchrun``): 1 without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def resolve_collective(distributed, device: torch.device) -> Collective | None:
    """The Collective for ``distributed`` (True, False or "auto"): "auto" spreads the population
    whenever a process group of more than one process exists (or a launcher's environment says
    there will be one); True requires one. The group is set up by accelerate's ``PartialState``
    (gloo for a CPU model, NCCL for a GPU model) when the launcher has not set it up yet."""
    if not any(distributed is c for c in DISTRIBUTED_CHOICES):
        raise ParameterError(f"distributed: must be True, False or 'auto', got {describe(distributed)}")
    if distributed is False:
        return None
    size = process_group_size()
    if size <= 1:
        if distributed is True:
            raise ParameterError("distributed: True needs a process group of more than one process; start the "
                                 "script with `accelerate launch --num_processes N` or `torchrun --nproc_per_node N` "
                                 "(WORLD_SIZE is not set), or pass distributed='auto' to run in one process when "
                                 "there is none")
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        from accelerate import PartialState

        PartialState(cpu=torch.device(device).type == "cpu")
    return Collective()


__all__ = ["Collective", "DistributedSearchError", "Lazy", "Sharded", "span", "resolve_collective",
           "process_group_size", "REFUSED_METHODS"]
