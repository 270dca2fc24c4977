"""The search context: the budget, the timers, the record of what was scored, and stop.

A method's run sees a :class:`~evosearch.search.engine.SearchRun` (this context plus the
population operations). The context keeps the best candidate ever scored, so an
interrupted or failed search still leaves a best-so-far.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.records import Candidate, HistoryEntry, Preview, SearchEvent, SearchStats
from ..core.validation import ParameterError, check_bool, check_int, check_number
from ..rewards.base import RewardError


class SearchInterrupted(Exception):
    """Raised inside a method when a stop was requested; the best so far is kept."""


class SearchStopped(Exception):
    """Raised inside a method when the early-stop rule is met; ``reason`` says which."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class CallbackError(RuntimeError):
    """The user's callback raised; the search's best so far is on the exception's ``.partial``."""


class JudgeError(RuntimeError):
    """The judge raised while checking ``target_judge`` (early stop); the search's best so far is on
    the exception's ``.partial``."""


class BudgetExceeded(RuntimeError):
    """A method asked for more NFE than its budget: a bug in the method, never silent."""


@dataclass(frozen=True)
class EarlyStop:
    """When a search may stop before its plan is spent (checked after every scored generation).

    ``patience``: stop when the best reward has not risen by more than ``tol`` for this many
    generations in a row; ``target_reward``: stop once the best reward reaches it;
    ``target_judge``: stop once the judge calls the best sample correct (needs a judge)."""

    patience: int | None = None
    tol: float = 0.0
    target_reward: float | None = None
    target_judge: bool = False

    def __post_init__(self):
        check_int("patience", self.patience, lo=1, allow_none=True)
        check_number("tol", self.tol, lo=0.0)
        check_number("target_reward", self.target_reward, allow_none=True)
        check_bool("target_judge", self.target_judge)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of the accelerator, or of this process on the CPU (0 where neither is known)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource  # not on Windows
    except ImportError:
        return 0
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


def as_stored(images: torch.Tensor) -> torch.Tensor:
    """Samples as candidates keep them: float [0, 1] -> uint8."""
    return (images * 255).round().clamp(0, 255).to(torch.uint8)


class SearchContext:
    """Budget, timers, recording and stop for one request."""

    #: plain samples of generation 0 kept for the judge's "plain" verdict
    plain_samples = 8
    #: x0 previews decoded and scored at most when a stop comes before any sample was scored
    preview_rows = 8

    def __init__(self, stepper, reward, prompt, seed: int, nfe_budget: int | None = None,
                 callback: Callable[[SearchEvent], None] | None = None, stop: Callable[[], bool] | None = None,
                 progress: bool = True, planned_nfe: int | None = None, early_stop: EarlyStop | None = None,
                 judge: Callable | None = None, dist=None, first_seed: int | None = None):
        self.stepper = stepper
        #: the :class:`~evosearch.search.distributed.Collective` of a distributed search (None: one process)
        self.dist = dist
        self.reward = reward
        self.prompt = prompt
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.first_seed = first_seed  # the first new seed (the first candidate's initial noise), if given
        self._first_seed = first_seed
        self.nfe_budget = nfe_budget
        self.callback = callback
        self.stop = stop
        self.early_stop = early_stop
        self.judge = judge
        self.stats = SearchStats(nfe_budget=nfe_budget, planned_nfe=planned_nfe)
        self.history: list[HistoryEntry] = []
        self.best: Candidate | None = None
        self.last_generation: list[Candidate] = []
        self.plain: list[Candidate] = []
        self.plain_source = "final samples of the first generation"
        self.preview: Preview | None = None
        self.preview_error: str | None = None  # why a stopped search kept no preview
        self._x0_before = getattr(stepper, "last_x0", None)
        self._since_improved = 0
        self._nfe0 = stepper.nfe
        self._decode0 = stepper.decode_calls
        self._tokens0 = getattr(stepper, "tokens", None)
        self._t0 = time.perf_counter()
        self._global = (0, 0)  # distributed: (NFE, decodes) of every rank at the last sync
        self._stop_pending = False  # distributed: a stop seen at a sync that lets a scored batch finish
        if dist is not None:
            self._comm0 = (dist.bytes, dict(dist.seconds_by_kind))
            self.stats.world_size = dist.world
            progress = progress and dist.is_main
        self._bar = tqdm(total=planned_nfe or nfe_budget, unit="nfe", desc="search", disable=not progress, leave=False)

    # -- budget ------------------------------------------------------------------
    @property
    def nfe(self) -> int:
        """NFE this search spent (distributed: on every rank, as of the last sync)."""
        return self.stepper.nfe - self._nfe0 if self.dist is None else self._global[0]

    def check_budget(self, cost: int) -> None:
        if self.nfe_budget is not None and self.nfe + cost > self.nfe_budget:
            raise BudgetExceeded(f"spending {cost} NFE more would exceed nfe_budget={self.nfe_budget} "
                                 f"({self.nfe} already spent)")

    def new_seed(self) -> int:
        if self._first_seed is not None:
            seed, self._first_seed = int(self._first_seed), None
            return seed
        return int(self.rng.integers(0, 2**63 - 1))

    def new_seeds(self, n: int) -> list[int]:
        return [self.new_seed() for _ in range(n)]

    # -- timers ------------------------------------------------------------------
    @contextmanager
    def timed(self, phase: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.stats.seconds[phase] = self.stats.seconds.get(phase, 0.0) + time.perf_counter() - t

    @property
    def elapsed(self) -> float:
        return round(time.perf_counter() - self._t0, 3)

    # -- stop and progress -------------------------------------------------------
    def check_stop(self) -> None:
        if self.dist is not None:
            self.sync()
        elif self.stop is not None and self.stop():
            raise SearchInterrupted()

    def on_batch(self, rows: int) -> None:
        """After each micro-batch of denoising: progress, then the stop check (also made after each
        scored batch, :meth:`record` and :meth:`log_preview`). Distributed: the stop check is a sync
        of every rank, so a stop on any rank stops all of them after this micro-batch."""
        if self.dist is not None:
            self.sync(done=False)
            self._bar.update(self.nfe - self._bar.n)
            self.emit(SearchEvent("progress", self.nfe, self.stats.planned_nfe))
            return
        self._bar.update(rows)
        self.emit(SearchEvent("progress", self.nfe, self.stats.planned_nfe))
        self.check_stop()

    # -- distributed: the sync every collective starts with -------------------------------
    def sync(self, done: bool = True, stop: bool | None = None, error: BaseException | None = None,
             defer_stop: bool = False, leaving: bool = False) -> int:
        """One all-reduce of (stop, error, NFE, decodes, done, leaving) over the ranks; every collective
        of a distributed search starts with one, so a rank that stops or fails is heard by every other
        rank at its next sync (a micro-batch away) and no rank waits in a collective the others never
        reach. Raises :class:`SearchInterrupted` on every rank when any rank's ``stop()`` is true
        (``defer_stop``: at the next sync instead, so that a scored batch is recorded first), and the
        failing rank's error (one message naming the rank) on every rank when one failed.
        Returns how many ranks said ``done`` (the end of a phase of uneven micro-batches)."""
        d = self.dist
        if stop is None:
            stop = bool(self.stop is not None and self.stop())
        stop = stop or self._stop_pending
        with self.timed("comm"):
            t = d.all_reduce([float(stop), float(error is not None), self.stepper.nfe - self._nfe0,
                              self.stepper.decode_calls - self._decode0, float(done), float(leaving)])
        if t[1] > 0:
            with self.timed("comm"):
                errors = d.all_gather_objects(_picklable_error(error))
            failed = [(r, e) for r, e in enumerate(errors) if e is not None]
            text = "; ".join(f"rank {r} of {d.world} failed: {name}: {msg}" for r, (name, msg) in failed)
            classes = {error_class(name) for _, (name, _) in failed}
            combined = (classes.pop() if len(classes) == 1 else error_class(""))(text)
            combined.synced = True
            raise combined from error
        self._global = (int(t[2]), int(t[3]))
        if t[0] > 0:
            if defer_stop and t[5] == 0:  # every rank is still here: finish the batch, stop at the next sync
                self._stop_pending = True
            else:
                interrupted = SearchInterrupted()
                interrupted.synced = True
                raise interrupted
        return int(t[4])

    def settle(self) -> None:
        """The end of a phase whose ranks ran different numbers of micro-batches (each ran
        :meth:`on_batch` per micro-batch): syncs until every rank is done."""
        while self.sync(done=True) < self.dist.world:
            pass

    def announce(self, err: BaseException) -> BaseException:
        """On the rank where ``err`` happened outside a sync (a reward raised, Ctrl-C): tell every
        rank at its next sync -- a stop for an interrupt, else the error -- and return what to raise
        here (the same as every other rank raises)."""
        if self.dist is None or getattr(err, "synced", False) or self.dist.broken:
            return err
        interrupt = isinstance(err, (SearchInterrupted, KeyboardInterrupt))
        try:
            self.sync(stop=interrupt, error=None if interrupt else err, leaving=True)
        except Exception as combined:
            return err if interrupt else combined
        return err

    def emit(self, event: SearchEvent) -> None:
        if self.callback is not None:
            try:
                self.callback(event)
            except SearchInterrupted:
                raise
            except Exception as err:  # the user's callback failed: say so, keep the cause
                raise CallbackError(f"callback: raised {type(err).__name__}: {err} (on a {event.type!r} event)") \
                    from err

    # -- recording ---------------------------------------------------------------
    def score(self, images) -> np.ndarray:
        """Rewards (N,) of decoded samples (counted as reward calls, timed as reward). Distributed:
        each rank scores its span of ``images`` and the rewards are all-gathered."""
        if self.dist is not None:
            lo, hi = self.dist.span(len(images))
            return self.gather_rewards(self.score_local(images[lo:hi]))
        rewards = self.score_local(images)
        self.stats.reward_calls += len(rewards)
        return rewards

    def gather_rewards(self, local: np.ndarray) -> np.ndarray:
        """Distributed: every rank's rewards, in row order (counted as reward calls)."""
        self.sync()
        with self.timed("comm"):
            parts = self.dist.all_gather_objects(np.asarray(local, dtype=np.float64))
        rewards = np.concatenate(parts)
        self.stats.reward_calls += len(rewards)
        return rewards

    def score_local(self, images) -> np.ndarray:
        """Rewards (N,) of ``images`` on this process (none for no images), not yet counted."""
        if images is None or len(images) == 0:
            return np.zeros(0)
        with self.timed("reward"):
            try:
                rewards = self.reward(images, self.prompt)
            except RewardError:
                raise
            except Exception as err:  # the user's reward failed: say which, keep the cause
                name = getattr(self.reward, "name", type(self.reward).__name__)
                raise RewardError(f"reward: {name} raised {type(err).__name__}: {err}") from err
        return np.asarray(rewards, dtype=np.float64)

    def log_preview(self, rewards: Sequence[float], step: int, generation: int = 0, population: int | None = None,
                    **extra) -> HistoryEntry:
        """Record scored previews (x0 previews, partial videos): history only, never candidates.
        ``population``: how many samples the step held (default: how many were scored)."""
        entry = HistoryEntry(generation, step, len(rewards) if population is None else population, tuple(rewards),
                             None if self.best is None else self.best.reward, self.nfe, self.elapsed, True, extra)
        self.history.append(entry)
        self.emit(SearchEvent("preview", self.nfe, self.stats.planned_nfe, entry))
        self.check_stop()
        return entry

    def keep_plain(self, images, rewards: Sequence[float], lineages: Sequence, source: str) -> None:
        """Keep the first ``plain_samples`` of unselected samples as the plain reference."""
        stored = as_stored(images[: self.plain_samples])
        self.plain = [Candidate(stored[k], float(rewards[k]), lineages[k], 0) for k in range(len(stored))]
        self.plain_source = source

    def record(self, images, lineages: Sequence, generation: int = 0, step: int | None = None,
               extra: dict | Callable[[np.ndarray], dict] | None = None) -> np.ndarray:
        """Score decoded final samples (images (N, 3, H, W) or videos (N, F, 3, H, W)) and record them
        as candidates; ``extra`` (a dict, or a function of the rewards) goes into the history entry.
        Then the early-stop rule is checked. Returns rewards (N,)."""
        rewards = self.score(images)
        return self.commit(as_stored(images), rewards, lineages, generation, step, extra, images)

    def commit(self, stored, rewards: np.ndarray, lineages: Sequence, generation: int = 0, step: int | None = None,
               extra: dict | Callable[[np.ndarray], dict] | None = None, images=None) -> np.ndarray:
        """Record scored samples (``stored``: uint8, as :func:`as_stored` makes them) as candidates, as
        :meth:`record` does after scoring; ``images``: what the generation event shows (default: the
        stored samples as floats)."""
        images = stored.float() / 255.0 if images is None else images
        cands = [Candidate(stored[k], float(rewards[k]), lineages[k], generation) for k in range(len(rewards))]
        if self.last_generation and self.last_generation[0].generation == generation:
            self.last_generation = self.last_generation + cands  # another wave of the same generation
        else:
            self.last_generation = cands
        if generation == 0 and len(self.plain) < self.plain_samples:
            self.plain += cands[: self.plain_samples - len(self.plain)]
        top = max(cands, key=lambda c: c.reward)
        improved = self.best is None or top.reward > self.best.reward + (self.early_stop.tol if self.early_stop else 0)
        if self.best is None or top.reward > self.best.reward:
            self.best = top
        info = extra(rewards) if callable(extra) else (extra or {})
        entry = HistoryEntry(generation, step, len(cands), tuple(c.reward for c in cands), self.best.reward, self.nfe,
                             self.elapsed, False, info)
        self.history.append(entry)
        self._bar.set_postfix(best=f"{self.best.reward:.4g}", gen=generation)
        self.emit(SearchEvent("generation", self.nfe, self.stats.planned_nfe, entry, images))
        self._check_early_stop(improved, generation)
        self.check_stop()  # a stop requested while this batch was decoded and scored: no more denoising
        return rewards

    def _check_early_stop(self, improved: bool, generation: int) -> None:
        rule = self.early_stop
        if rule is None:
            return
        new_generation = len(self.history) < 2 or self.history[-2].generation != generation or self.history[-2].preview
        if new_generation:
            self._since_improved = 0 if improved else self._since_improved + 1
        if rule.target_reward is not None and self.best.reward >= rule.target_reward:
            raise SearchStopped(f"early stop: best reward {self.best.reward:.4g} reached target_reward "
                                f"{rule.target_reward:.4g}")
        if rule.target_judge and self.judge is not None:
            try:
                verdict = self.judge(self.best.image[None].float() / 255.0, self.prompt)[0]
            except Exception as err:  # the judge failed: say so (target_judge), keep the cause
                name = getattr(self.judge, "name", None) or getattr(self.judge, "__name__", type(self.judge).__name__)
                raise JudgeError(f"early_stop: target_judge: the judge {name} raised {type(err).__name__}: {err}") \
                    from err
            if verdict.get("correct"):
                raise SearchStopped("early stop: the judge calls the best sample correct")
        if rule.patience is not None and self._since_improved >= rule.patience:
            raise SearchStopped(f"early stop: no gain above tol={rule.tol:g} for {rule.patience} generation(s)")

    def keep_preview(self) -> None:
        """After a stop before any sample was scored: decode and score the x0 estimates of the Stepper's
        latest micro-batch (no NFE; at most :attr:`preview_rows` of them, so that a stop stays quick) and
        keep the best as :attr:`preview`. One process only."""
        held = getattr(self.stepper, "last_x0", None)
        if self.best is not None or self.dist is not None or held is None or held is self._x0_before:
            return
        step, x0 = held[0], held[1][: self.preview_rows]
        with self.timed("decode"):
            images = self.stepper.finish(x0)
        rewards = self.score(images)
        k = int(np.argmax(rewards))
        self.preview = Preview(as_stored(images[k:k + 1])[0], float(rewards[k]), int(step), len(rewards),
                               x0[k:k + 1].detach().cpu())

    # -- results -----------------------------------------------------------------
    def finalize(self) -> None:
        self._bar.close()
        self.stats.nfe = self.nfe
        self.stats.decode_calls = self.stepper.decode_calls - self._decode0 if self.dist is None else self._global[1]
        if self.dist is not None:
            self.stats.comm_bytes = self.dist.bytes - self._comm0[0]
            for kind, t in self.dist.seconds_by_kind.items():  # comm = sync (incl. waiting) + data
                self.stats.seconds[f"comm_{kind}"] = t - self._comm0[1][kind]
        if self._tokens0 is not None:
            self.stats.tokens = self.stepper.tokens - self._tokens0
        self.stats.seconds["total"] = time.perf_counter() - self._t0
        self.stats.peak_memory_bytes = peak_memory_bytes(self.stepper.device)

    def ranked(self) -> list[Candidate]:
        """The last generation, best first, with the best-ever candidate on top if it is not in it."""
        cands = sorted(self.last_generation, key=lambda c: -c.reward)
        if self.best is not None and all(c is not self.best for c in cands):
            cands.insert(0, self.best)
        return cands


class DistributedSearchError(RuntimeError):
    """A rank of a distributed search failed; every rank raises this (or the failing rank's own
    error class, for the library's errors) with the same message."""


def _picklable_error(err: BaseException | None):
    if err is None:
        return None
    return type(err).__name__, " ".join(str(err).split()) or type(err).__name__


def error_class(name: str):
    """The library's error classes are raised as themselves on every rank; anything else as
    :class:`DistributedSearchError`."""
    known = {c.__name__: c for c in (RewardError, CallbackError, BudgetExceeded, ParameterError)}
    return known.get(name, DistributedSearchError)
