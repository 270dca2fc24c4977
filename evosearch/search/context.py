"""The search context: what a method uses to roll out, score and record candidates.

It owns the budget (NFE), the phase timers, the random number generator of the
request, the record of every scored candidate (best ever, last generation, history)
and the stop signal, so that an interrupted method still leaves a best-so-far.
"""

from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..pipelines.base import Stepper, derive_seed
from .lineage import Event, Lineage
from .mutation import forward_renoise, sigma_mutation, sphere_neighbor, vp_mutation

#: key under which an event's mutation noise is derived from its seed (step noise uses the step index)
MUTATION_KEY = 2**31 - 1


class SearchInterrupted(Exception):
    """Raised inside a method when a stop was requested; the best so far is kept."""


class BudgetExceeded(RuntimeError):
    """A method asked for more NFE than its budget: a bug in the method, never silent."""


@dataclass
class Candidate:
    """A scored sample: image (3, H, W) — or video (F, 3, H, W) — uint8 on the CPU, reward, lineage."""

    image: torch.Tensor
    reward: float
    lineage: Lineage
    generation: int = 0


@dataclass
class SearchStats:
    """Compute a search spent. ``nfe``: denoiser evaluations per sample per step (with CFG
    one NFE is one batched cond+uncond pass, the papers' unit); ``reward_calls``: samples
    scored; ``decode_calls``: samples decoded; ``seconds``: wall time per phase."""

    nfe: int = 0
    nfe_budget: int | None = None
    reward_calls: int = 0
    decode_calls: int = 0
    seconds: dict = field(default_factory=lambda: {"denoise": 0.0, "decode": 0.0, "reward": 0.0, "total": 0.0})
    peak_memory_bytes: int = 0
    tokens: int | None = None  # token positions predicted, for Steppers that count them (next-scale models)

    def to_dict(self) -> dict:
        d = {"nfe": self.nfe, "nfe_budget": self.nfe_budget, "reward_calls": self.reward_calls,
             "decode_calls": self.decode_calls, "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
             "peak_memory_bytes": self.peak_memory_bytes}
        if self.tokens is not None:
            d["tokens"] = self.tokens
        return d


def apply_event(stepper: Stepper, x: torch.Tensor | None, event: Event) -> torch.Tensor:
    """The state (1, ...) after ``event`` (see lineage.py); ``x`` is None for ``init``."""
    if event.kind == "init":
        return stepper.start([event.seed])
    if x is None:
        raise ValueError(f"event {event.kind!r} needs a parent state")
    if event.kind == "keep":
        return x
    noise = stepper.sample_noise([derive_seed(event.seed, MUTATION_KEY)])
    if event.kind in getattr(stepper, "custom_event_kinds", ()):  # a Stepper's own kinds (SegmentStepper: segment)
        return stepper.apply_custom_event(x, event, noise)
    if event.kind == "vp":
        return vp_mutation(x, noise, event.rate)
    if event.kind == "sigma":
        return sigma_mutation(x, noise, stepper.noise_scale(event.step - 1) if event.step > 0 else 1.0)
    if event.kind == "neighbor":
        return sphere_neighbor(x, noise, event.rate)
    if event.kind == "renoise":
        schedule = getattr(stepper, "schedule", None)
        if schedule is None or event.from_step is None:
            raise ValueError(f"event 'renoise' needs a from_step and a Stepper with a NoiseSchedule "
                             f"({type(stepper).__name__} has none)")
        j, k = event.from_step, event.step
        return forward_renoise(x, noise, float(schedule.a[j]), float(schedule.s[j]), float(schedule.a[k]),
                               float(schedule.s[k]))
    raise ValueError(f"event kind {event.kind!r} is unknown (allowed: init, vp, sigma, keep, neighbor, renoise)")


def apply_events(stepper: Stepper, states: torch.Tensor | None, events: Sequence[Event]) -> torch.Tensor:
    """Row-wise :func:`apply_event`: row k of the result is ``events[k]`` applied to row k."""
    rows = [apply_event(stepper, None if states is None else states[k:k + 1], ev) for k, ev in enumerate(events)]
    return stepper.concat(rows)


def denoise(stepper: Stepper, states: torch.Tensor, segment_seeds: Sequence[int], start: int, end: int,
            before_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Steps [start, end) of ``states``; row k's noise at step i is drawn with
    ``derive_seed(segment_seeds[k], i)``. ``before_step(i, states)`` runs before each step."""
    for i in range(start, end):
        if before_step is not None:
            before_step(i, states)
        noise = None
        if stepper.noise_scale(i) > 0:
            noise = stepper.sample_noise([derive_seed(s, i) for s in segment_seeds])
        states = stepper.step(states, i, noise)
    return states


def replay_lineage(stepper: Stepper, lineage: Lineage) -> torch.Tensor:
    """The final state (1, ...) of ``lineage`` on a prepared stepper, re-generated alone."""
    events = list(lineage.events)
    x = None
    for k, ev in enumerate(events):
        x = apply_event(stepper, x, ev)
        nxt = events[k + 1] if k + 1 < len(events) else None
        end = stepper.num_steps if nxt is None else (nxt.step if nxt.from_step is None else nxt.from_step)
        x = denoise(stepper, x, [ev.seed], ev.step, end)
    return x


class SearchContext:
    """Everything a method needs for one request. Methods call :meth:`rollout` and
    :meth:`evaluate`, draw their random numbers from :attr:`rng` / :meth:`new_seed`, and
    ask :meth:`check_budget` before spending."""

    def __init__(self, stepper: Stepper, reward, prompt, seed: int, nfe_budget: int | None = None,
                 callback: Callable[[dict], None] | None = None, stop: Callable[[], bool] | None = None,
                 progress: bool = True, keep_images: bool = True):
        self.stepper = stepper
        self.reward = reward
        self.prompt = prompt
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.nfe_budget = nfe_budget
        self.callback = callback
        self.stop = stop
        self.keep_images = keep_images
        self.stats = SearchStats(nfe_budget=nfe_budget)
        self.history: list[dict] = []
        self.best: Candidate | None = None
        self.last_generation: list[Candidate] = []
        self._nfe0 = stepper.nfe
        self._decode0 = stepper.decode_calls
        self._tokens0 = getattr(stepper, "tokens", None)
        self._t0 = time.perf_counter()
        self._bar = tqdm(total=nfe_budget, unit="nfe", desc="search", disable=not progress, leave=False)

    # -- basics ------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return self.stepper.num_steps

    @property
    def request(self) -> dict:
        return self.stepper.request.to_dict()

    @property
    def nfe(self) -> int:
        return self.stepper.nfe - self._nfe0

    def new_seed(self) -> int:
        return int(self.rng.integers(0, 2**63 - 1))

    def new_seeds(self, n: int) -> list[int]:
        return [self.new_seed() for _ in range(n)]

    def set_planned_nfe(self, total: int) -> None:
        """Tell the progress bar what the method will spend."""
        self._bar.total = total
        self._bar.refresh()

    def check_budget(self, cost: int) -> None:
        if self.nfe_budget is not None and self.nfe + cost > self.nfe_budget:
            raise BudgetExceeded(f"spending {cost} NFE more would exceed nfe_budget={self.nfe_budget} "
                                 f"({self.nfe} already spent)")

    def check_stop(self) -> None:
        if self.stop is not None and self.stop():
            raise SearchInterrupted()

    def emit(self, event: dict) -> None:
        if self.callback is not None:
            self.callback(event)

    @contextmanager
    def timed(self, phase: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.stats.seconds[phase] = self.stats.seconds.get(phase, 0.0) + time.perf_counter() - t

    # -- the two things a method does -------------------------------------------
    def rollout(self, states: torch.Tensor, lineages: Sequence[Lineage], start: int, end: int | None = None,
                archive_at: Sequence[int] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Denoise ``states`` (the state at step ``start`` of each lineage) through steps
        [start, end). Row k's step noise is keyed by the seed of the last event of
        ``lineages[k]``. Returns the states at ``end`` and the states at each step in
        ``archive_at`` (kept on the CPU)."""
        end = self.num_steps if end is None else end
        n = len(states)  # states may be a tensor or a Stepper's own state object (e.g. a VARState)
        self.check_budget(n * (end - start))
        archive: dict[int, torch.Tensor] = {}

        def before_step(i, x):
            self.check_stop()
            if i in archive_at:
                archive[i] = x.detach().cpu()
            if i > start:
                self._bar.update(n)
                self.emit({"type": "step", "step": i, "nfe": self.nfe})

        with self.timed("denoise"):
            states = denoise(self.stepper, states, [lin.events[-1].seed for lin in lineages], start, end, before_step)
        self._bar.update(n)
        self.emit({"type": "step", "step": end - 1, "nfe": self.nfe})
        if end in archive_at:
            archive[end] = states.detach().cpu()
        return states, archive

    def predict(self, states: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The denoiser's (x0_hat, eps_hat) for ``states`` at ``step``: one NFE per row. With
        :meth:`advance` this is exactly one step of :meth:`rollout`, split so that a method
        can score the x0_hat preview (:meth:`score_preview`) and select rows in between
        without paying another NFE for the preview."""
        n = states.shape[0]
        self.check_budget(n)
        self.check_stop()
        with self.timed("denoise"):
            out = self.stepper.predict(states, step)
        self._bar.update(n)
        self.emit({"type": "step", "step": step, "nfe": self.nfe})
        return out

    def advance(self, x0_hat: torch.Tensor, eps_hat: torch.Tensor, lineages: Sequence[Lineage],
                step: int) -> torch.Tensor:
        """The states after ``step`` from the predictions of :meth:`predict` (no NFE); row k's
        step noise is keyed by the seed of the last event of ``lineages[k]``, as in :meth:`rollout`."""
        noise = None
        with self.timed("denoise"):
            if self.stepper.noise_scale(step) > 0:
                noise = self.stepper.sample_noise([derive_seed(lin.events[-1].seed, step) for lin in lineages])
            return self.stepper.schedule.step(x0_hat, eps_hat, step, noise)

    def score_preview(self, x0_hat: torch.Tensor, step: int, generation: int = 0, **info) -> np.ndarray:
        """Decode and score x0_hat previews (counted as decode and reward calls, timed as
        decode and reward). Previews are not samples: they never become the best candidate.
        Appends a history entry with ``"preview": True`` plus ``info``; returns rewards (N,)."""
        with self.timed("decode"):
            images = self.stepper.finish(x0_hat)
        return self.score_partial(images, step, generation, **info)

    def score_partial(self, images: torch.Tensor, step: int, generation: int = 0, **info) -> np.ndarray:
        """Score already decoded samples that are not final (x0_hat previews, partial videos of
        Tree-of-Frames): counted as reward calls, recorded in the history with ``"preview": True``,
        never the best candidate. Returns rewards (N,)."""
        with self.timed("reward"):
            rewards = self.reward(images, self.prompt)
        self.stats.reward_calls += len(rewards)
        entry = {"generation": generation, "step": step, "population": len(rewards), "preview": True,
                 "rewards": [float(r) for r in rewards], "best_reward": None if self.best is None else self.best.reward,
                 "nfe": self.nfe, "seconds": round(time.perf_counter() - self._t0, 3), **info}
        self.history.append(entry)
        self.emit({"type": "preview", **entry})
        return np.asarray(rewards, dtype=np.float64)

    def evaluate(self, states: torch.Tensor, lineages: Sequence[Lineage], generation: int = 0,
                 step: int | None = None) -> np.ndarray:
        """Decode final states, score them, record them; returns rewards (N,)."""
        with self.timed("decode"):
            images = self.stepper.finish(states)
        return self.record(images, lineages, generation, step)

    def record(self, images: torch.Tensor, lineages: Sequence[Lineage], generation: int = 0,
               step: int | None = None) -> np.ndarray:
        """Score already decoded final samples (images (N, 3, H, W) or videos (N, F, 3, H, W)) and
        record them as candidates; returns rewards (N,)."""
        with self.timed("reward"):
            rewards = self.reward(images, self.prompt)
        self.stats.reward_calls += len(rewards)
        stored = (images * 255).round().clamp(0, 255).to(torch.uint8)
        cands = [Candidate(stored[k], float(rewards[k]), lineages[k], generation) for k in range(len(rewards))]
        if self.last_generation and self.last_generation[0].generation == generation:
            self.last_generation = self.last_generation + cands  # another wave of the same generation
        else:
            self.last_generation = cands
        top = max(cands, key=lambda c: c.reward)
        if self.best is None or top.reward > self.best.reward:
            self.best = top
        entry = {"generation": generation, "step": step, "population": len(cands),
                 "rewards": [c.reward for c in cands], "best_reward": self.best.reward, "nfe": self.nfe,
                 "seconds": round(time.perf_counter() - self._t0, 3)}
        self.history.append(entry)
        self._bar.set_postfix(best=f"{self.best.reward:.4g}", gen=generation)
        self.emit({"type": "generation", **entry, "images": images})
        return rewards.numpy().astype(np.float64)

    # -- results -----------------------------------------------------------------
    def finalize(self) -> None:
        self._bar.close()
        self.stats.nfe = self.nfe
        self.stats.decode_calls = self.stepper.decode_calls - self._decode0
        if self._tokens0 is not None:
            self.stats.tokens = self.stepper.tokens - self._tokens0
        self.stats.seconds["total"] = time.perf_counter() - self._t0
        dev = self.stepper.device
        if dev.type == "cuda":
            self.stats.peak_memory_bytes = int(torch.cuda.max_memory_allocated(dev))
        else:
            self.stats.peak_memory_bytes = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def ranked(self) -> list[Candidate]:
        """The last generation, best first, with the best-ever candidate on top if it is not in it."""
        cands = sorted(self.last_generation, key=lambda c: -c.reward)
        if self.best is not None and all(c is not self.best for c in cands):
            cands.insert(0, self.best)
        return cands
