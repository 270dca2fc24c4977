"""What a search method does with populations: start, denoise, branch, predict, advance, score.

:class:`SearchRun` is the :class:`~evosearch.search.context.SearchContext` (budget, timers,
recording, stop) plus these operations, each of which asks the Stepper for the work and
keys every random number by the rows' lineages. Methods receive a SearchRun.

In a distributed search (``dist`` set) the same operations split the rows over the ranks (see
:mod:`evosearch.search.distributed`): each rank computes its span of every population, rewards
are all-gathered, and selections stay lazy until a rank fetches the rows it needs. Methods do
not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..core.lineage import Lineage, apply_events, denoise
from ..core.noise import NoiseSeeds
from ..core.records import Plan
from .context import SearchContext, as_stored
from .distributed import Lazy, Sharded
from .distributed import span as _span
from .population import Population


@dataclass(frozen=True)
class Prediction:
    """The denoiser's (x0_hat, eps_hat) for a population at its step; ``select`` keeps rows with it."""

    x0_hat: Any
    eps_hat: Any
    selector: Callable

    def select(self, index) -> "Prediction":
        return Prediction(self.selector(self.x0_hat, index), self.selector(self.eps_hat, index), self.selector)


class SearchRun(SearchContext):
    """The context of one request plus the population operations methods use."""

    plan: Plan | None = None

    @property
    def num_steps(self) -> int:
        return self.stepper.num_steps

    @property
    def request(self) -> dict:
        return self.stepper.request.to_dict()

    @property
    def max_batch_size(self) -> int:
        return self.stepper.max_batch_size

    # -- distributed rows ----------------------------------------------------------------
    @property
    def selector(self) -> Callable:
        """How populations and predictions select rows: the Stepper's ``select``, or (distributed) a
        lazy pick that fetches rows only when a rank needs them."""
        return self.stepper.select if self.dist is None else self._pick

    def _pick(self, states, index):
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        if isinstance(states, Sharded):
            return Lazy(states, idx)
        if isinstance(states, Lazy):
            return states.select(idx)
        return self.stepper.select(states, idx)  # rows every rank holds

    def _sharded(self, n: int, local) -> Sharded:
        return Sharded.one(n, local, self.dist.rank, self.dist.world)

    def _rows(self, states):
        """This rank's span of ``states`` (distributed), computed: fetched from the ranks holding
        them and with pending events applied where needed."""
        n = len(states)
        lo, hi = self.dist.span(n)
        if isinstance(states, Sharded):
            if len(states.blocks) == 1:
                return states.blocks[0][1]
            return self._fetch(states, np.arange(n))
        if isinstance(states, Lazy):
            if states.source is None:  # not started yet
                lins = states.lineages[lo:hi]
                return apply_events(self.stepper, None, lins) if lins else self.stepper.start([])
            parents = self._fetch(states.source, states.index)
            lins = None if states.lineages is None else states.lineages[lo:hi]
            return apply_events(self.stepper, parents, lins) if lins else parents
        return self.stepper.select(states, list(range(lo, hi)))

    def _fetch(self, source: Sharded, index: np.ndarray):
        """Rows ``index[lo:hi]`` (this rank's span of ``index``) of ``source``: each rank sends once
        the rows of its own that other ranks need (one all-gather; none when every rank holds what
        it needs)."""
        d, stepper = self.dist, self.stepper
        owner, pos = source.owners()
        n = len(index)
        need = [index[slice(*_span(n, r, d.world))] for r in range(d.world)]
        send = [sorted({int(j) for r in range(d.world) if r != s for j in need[r] if owner[j] == s})
                for s in range(d.world)]
        pool = stepper.concat([local for _, local in source.blocks]) if len(source.blocks) > 1 \
            else source.blocks[0][1]
        where = {}
        parts = [pool]
        if any(send):
            self.sync()  # every collective starts with a sync: a rank that failed is heard here
            with self.timed("comm"):
                got = d.gather_rows(stepper.select(pool, [int(pos[j]) for j in send[d.rank]]),
                                    [len(x) for x in send])
            offset = len(pool)
            for s, rows in enumerate(send):
                if s == d.rank or not rows:
                    continue
                parts.append(got[s])
                where.update({j: offset + k for k, j in enumerate(rows)})
                offset += len(rows)
        mine = [int(pos[j]) if owner[j] == d.rank else where[int(j)] for j in need[d.rank]]
        return stepper.select(stepper.concat(parts) if len(parts) > 1 else pool, mine)

    def _gather_images(self, local):
        """Distributed: every rank's decoded samples (float), in row order."""
        self.sync()
        with self.timed("comm"):
            parts = [p for p in self.dist.all_gather_objects(local) if p is not None]
        return torch.cat(parts)

    # -- making populations --------------------------------------------------------------
    def new_lineages(self, n: int) -> list[Lineage]:
        """n fresh lineages, each an ``init`` event with a new seed (no compute yet)."""
        model = self.stepper.fingerprint()
        return [Lineage.init(s, self.request, model) for s in self.new_seeds(n)]

    def start(self, lineages) -> Population:
        """The initial states (step 0) of ``lineages``."""
        if self.dist is not None:  # each rank starts its own rows when it first needs them
            lineages = tuple(lineages)
            return Population(Lazy(None, np.arange(len(lineages)), lineages), lineages, 0, self.selector)
        return Population(apply_events(self.stepper, None, lineages), lineages, 0, self.stepper.select)

    def initial(self, n: int) -> Population:
        """n fresh initial states (step 0), each from a new seed."""
        return self.start(self.new_lineages(n))

    def branch(self, pop: Population, parents: Sequence[int], kinds: str | Sequence[str], step: int | None = None,
               rate: float | None = None, from_step: int | None = None) -> Population:
        """Children of ``pop``'s rows ``parents``: each copies its parent's state and lineage and adds
        an event of ``kinds`` (one kind for all, or one per child) at ``step`` (default: the
        population's step) with a new seed, then the event is applied. ``rate`` goes to the events
        that take one; ``from_step`` marks a move back to the noisier ``step`` (re-noising)."""
        parents = [int(p) for p in parents]
        kinds = [kinds] * len(parents) if isinstance(kinds, str) else list(kinds)
        step = pop.step if step is None else step
        chosen = pop.select(parents)
        lineages = [lin.then(kind, step, self.new_seed(), rate if kind in ("vp", "resample", "neighbor") else None,
                             from_step)
                    for lin, kind in zip(chosen.lineages, kinds)]
        if self.dist is not None:  # the events wait for the rank that needs the rows
            states = chosen.states
            if any(k != "keep" for k in kinds):
                if not isinstance(states, Lazy) or states.source is None or states.lineages is not None:
                    states = Lazy(self._sharded(len(chosen), self._rows(states)), np.arange(len(chosen)))
                states = Lazy(states.source, states.index, tuple(lineages))
            return Population(states, lineages, step, self.selector)
        return Population(apply_events(self.stepper, chosen.states, lineages), lineages, step, pop.selector)

    # -- denoising -----------------------------------------------------------------------
    def rollout(self, pop: Population, end: int | None = None,
                archive_at: Sequence[int] = ()) -> tuple[Population, dict[int, Population]]:
        """Denoise ``pop`` from its step to ``end`` (default: the last step). Returns the population
        at ``end`` and, for each step in ``archive_at`` within (start, end], the population there
        (kept off the accelerator)."""
        end = self.num_steps if end is None else end
        start = pop.step
        self.check_budget(len(pop) * (end - start))
        if self.dist is not None:
            return self._rollout_rows(pop, start, end, archive_at)
        stops = sorted({s for s in archive_at if start <= s <= end} | {end})
        archive: dict[int, Population] = {}
        states = pop.states
        with self.timed("denoise"):
            for s in stops:
                states = denoise(self.stepper, states, pop.seeds, start, s, self.on_batch)
                start = s
                if s in archive_at:
                    archive[s] = pop.replace(states=self.stepper.offload(states), step=s)
        return pop.replace(states=states, step=end), archive

    def _rollout_rows(self, pop: Population, start: int, end: int, archive_at):
        """Distributed :meth:`rollout`: this rank's span, step by step, the ranks settling after each
        step (their micro-batch counts may differ by one)."""
        lo, hi = self.dist.span(len(pop))
        seeds = pop.seeds[lo:hi]
        archive: dict[int, Population] = {}
        with self.timed("denoise"):
            states = self._rows(pop.states)
            for i in range(start, end + 1):
                if i in archive_at:
                    archive[i] = pop.replace(states=self._sharded(len(pop), self.stepper.offload(states)), step=i)
                if i == end:
                    break
                if hi > lo:
                    noise = NoiseSeeds.for_step(seeds, i) if self.stepper.noise_scale(i) > 0 else None
                    states = self.stepper.step(states, i, noise, on_batch=self.on_batch)
                self.settle()
        return pop.replace(states=self._sharded(len(pop), states), step=end), archive

    def predict(self, pop: Population):
        """The denoiser's (x0_hat, eps_hat) for ``pop`` at its step: one NFE per row. With
        :meth:`advance` this is one step of :meth:`rollout`, split so that a method can score the
        x0 preview and select rows in between without paying another NFE for the preview."""
        self.check_budget(len(pop))
        self.check_stop()
        if self.dist is not None:
            with self.timed("denoise"):
                states = self._rows(pop.states)
                x0_hat = eps_hat = states
                if len(states):
                    x0_hat, eps_hat = self.stepper.predict(states, pop.step, on_batch=self.on_batch)
                self.settle()
            return Prediction(self._sharded(len(pop), x0_hat), self._sharded(len(pop), eps_hat), self.selector)
        with self.timed("denoise"):
            x0_hat, eps_hat = self.stepper.predict(pop.states, pop.step, on_batch=self.on_batch)
        return Prediction(x0_hat, eps_hat, self.stepper.select)

    def advance(self, pop: Population, prediction: Prediction) -> Population:
        """``pop`` one step on from its :meth:`predict` output (no NFE); row k's step noise is keyed
        by its lineage, as in :meth:`rollout`."""
        x0_hat, eps_hat = prediction.x0_hat, prediction.eps_hat
        i = pop.step
        seeds = pop.seeds
        if self.dist is not None:
            x0_hat, eps_hat = self._rows(x0_hat), self._rows(eps_hat)
            seeds = seeds[slice(*self.dist.span(len(pop)))]
            if not seeds:
                return pop.replace(states=self._sharded(len(pop), x0_hat), step=i + 1)
        noise = NoiseSeeds.for_step(seeds, i) if self.stepper.noise_scale(i) > 0 else None
        with self.timed("denoise"):
            states = self.stepper.advance(x0_hat, eps_hat, i, noise)
        if self.dist is not None:
            states = self._sharded(len(pop), states)
        return pop.replace(states=states, step=i + 1)

    # -- scoring -------------------------------------------------------------------------
    def score_preview(self, prediction: Prediction, plain_from: Population | None = None) -> np.ndarray:
        """Rewards (N,) of the decoded x0 previews of a :meth:`predict` output (decodes and reward
        calls, no NFE). Record them with :meth:`log_preview`. ``plain_from``: the population the
        prediction was made for, when its rows are plain samples that will not all be finished (a
        screening generation): the first previews then stand for plain sampling in the judge's
        report, marked as previews at that step."""
        if self.dist is not None:
            x0_hat = self._rows(prediction.x0_hat)
            with self.timed("decode"):
                images = self.stepper.finish(x0_hat) if len(x0_hat) else None
            rewards = self.gather_rewards(self.score_local(images))
            if plain_from is not None and not self.plain:  # the first samples' previews, from their ranks
                first = self.plain_samples
                lo, _ = self.dist.span(len(rewards))
                mine = None if images is None or lo >= first else images[: first - lo]
                shown = self._gather_images(mine)
                self.keep_plain(shown, rewards, plain_from.lineages, f"x0 previews at step {plain_from.step}")
            return rewards
        with self.timed("decode"):
            images = self.stepper.finish(prediction.x0_hat)
        rewards = self.score(images)
        if plain_from is not None and not self.plain:
            self.keep_plain(images, rewards, plain_from.lineages, f"x0 previews at step {plain_from.step}")
        return rewards

    def preview_images(self, pop: Population):
        """Decoded previews of ``pop`` at its step (next-scale models: the current scale's image)."""
        self.check_stop()
        if self.dist is not None:
            states = self._rows(pop.states)
            with self.timed("decode"):
                local = self.stepper.preview(states, pop.step) if len(states) else None
            return self._gather_images(local)
        with self.timed("decode"):
            return self.stepper.preview(pop.states, pop.step)

    def score_prefix(self, pop: Population, num_segments: int) -> np.ndarray:
        """Rewards (N,) of the first ``num_segments`` segments of each video (segment models)."""
        if self.dist is not None:
            states = self._rows(pop.states)
            with self.timed("decode"):
                partial = self.stepper.finish_prefix(states, num_segments) if len(states) else None
            return self.gather_rewards(self.score_local(partial))
        with self.timed("decode"):
            partial = self.stepper.finish_prefix(pop.states, num_segments)
        return self.score(partial)

    def evaluate(self, pop: Population, generation: int = 0, step: int | None = None,
                 extra: dict | Callable[[np.ndarray], dict] | None = None) -> np.ndarray:
        """Decode final states, score them, record them as candidates; returns rewards (N,)."""
        if self.dist is not None:  # this rank's span, then every rank's rewards and samples
            states = self._rows(pop.states)
            with self.timed("decode"):
                images = self.stepper.finish(states) if len(states) else None
            rewards = self.score_local(images)
            self.sync(defer_stop=True)  # a stop requested now keeps this batch, as in one process
            with self.timed("comm"):
                parts = self.dist.all_gather_objects((rewards, None if images is None else as_stored(images)))
            rewards = np.concatenate([r for r, _ in parts])
            stored = torch.cat([x for _, x in parts if x is not None])
            self.stats.reward_calls += len(rewards)
            return self.commit(stored, rewards, pop.lineages, generation, step, extra)
        with self.timed("decode"):
            images = self.stepper.finish(pop.states)
        return self.record(images, pop.lineages, generation, step, extra)

    def rollout_and_evaluate(self, pop: Population | Sequence[Lineage], generation: int = 0, step: int | None = None,
                             archive_at: Sequence[int] = (), wave: int | None = None,
                             extra: dict | None = None) -> tuple[np.ndarray, dict[int, Population]]:
        """Denoise ``pop`` (a population, or new lineages: started one wave at a time) to the end and
        score it in waves of ``wave`` rows (default: the Stepper's max_batch_size), so candidates are
        scored (and shown) as soon as each wave finishes and an interrupt keeps every finished wave.
        Returns the rewards (N,) and the archived populations, as :meth:`rollout` would."""
        wave = wave or self.max_batch_size
        rewards, archives = [], []
        fresh = not isinstance(pop, Population)
        start_step = 0 if fresh else pop.step
        for lo in range(0, len(pop), wave):
            rows = range(lo, min(len(pop), lo + wave))
            part = self.start([pop[k] for k in rows]) if fresh else pop.select(rows)
            final, archive = self.rollout(part, archive_at=archive_at)
            rewards.append(self.evaluate(final, generation, start_step if step is None else step, extra))
            archives.append(archive)
        concat = self.stepper.concat if self.dist is None else Sharded.concat
        merged = {s: Population(concat([a[s].states for a in archives]),
                                tuple(lin for a in archives for lin in a[s].lineages), s, self.selector)
                  for s in (archives[0] if archives else {})}
        return np.concatenate(rewards) if rewards else np.zeros(0), merged
