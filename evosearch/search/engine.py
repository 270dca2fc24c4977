"""What a search method does with populations: start, denoise, branch, predict, advance, score.

:class:`SearchRun` is the :class:`~evosearch.search.context.SearchContext` (budget, timers,
recording, stop) plus these operations, each of which asks the Stepper for the work and
keys every random number by the rows' lineages. Methods receive a SearchRun.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..core.lineage import Lineage, apply_events, denoise
from ..core.noise import NoiseSeeds
from ..core.records import Plan
from .context import SearchContext
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

    # -- making populations --------------------------------------------------------------
    def new_lineages(self, n: int) -> list[Lineage]:
        """n fresh lineages, each an ``init`` event with a new seed (no compute yet)."""
        model = self.stepper.fingerprint()
        return [Lineage.init(s, self.request, model) for s in self.new_seeds(n)]

    def start(self, lineages) -> Population:
        """The initial states (step 0) of ``lineages``."""
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

    def predict(self, pop: Population):
        """The denoiser's (x0_hat, eps_hat) for ``pop`` at its step: one NFE per row. With
        :meth:`advance` this is one step of :meth:`rollout`, split so that a method can score the
        x0 preview and select rows in between without paying another NFE for the preview."""
        self.check_budget(len(pop))
        self.check_stop()
        with self.timed("denoise"):
            x0_hat, eps_hat = self.stepper.predict(pop.states, pop.step, on_batch=self.on_batch)
        return Prediction(x0_hat, eps_hat, self.stepper.select)

    def advance(self, pop: Population, prediction: Prediction) -> Population:
        """``pop`` one step on from its :meth:`predict` output (no NFE); row k's step noise is keyed
        by its lineage, as in :meth:`rollout`."""
        x0_hat, eps_hat = prediction.x0_hat, prediction.eps_hat
        i = pop.step
        noise = NoiseSeeds.for_step(pop.seeds, i) if self.stepper.noise_scale(i) > 0 else None
        with self.timed("denoise"):
            states = self.stepper.advance(x0_hat, eps_hat, i, noise)
        return pop.replace(states=states, step=i + 1)

    # -- scoring -------------------------------------------------------------------------
    def score_preview(self, prediction: Prediction, plain_from: Population | None = None) -> np.ndarray:
        """Rewards (N,) of the decoded x0 previews of a :meth:`predict` output (decodes and reward
        calls, no NFE). Record them with :meth:`log_preview`. ``plain_from``: the population the
        prediction was made for, when its rows are plain samples that will not all be finished (a
        screening generation): the first previews then stand for plain sampling in the judge's
        report, marked as previews at that step."""
        with self.timed("decode"):
            images = self.stepper.finish(prediction.x0_hat)
        rewards = self.score(images)
        if plain_from is not None and not self.plain:
            self.keep_plain(images, rewards, plain_from.lineages, f"x0 previews at step {plain_from.step}")
        return rewards

    def preview_images(self, pop: Population):
        """Decoded previews of ``pop`` at its step (next-scale models: the current scale's image)."""
        self.check_stop()
        with self.timed("decode"):
            return self.stepper.preview(pop.states, pop.step)

    def score_prefix(self, pop: Population, num_segments: int) -> np.ndarray:
        """Rewards (N,) of the first ``num_segments`` segments of each video (segment models)."""
        with self.timed("decode"):
            partial = self.stepper.finish_prefix(pop.states, num_segments)
        return self.score(partial)

    def evaluate(self, pop: Population, generation: int = 0, step: int | None = None,
                 extra: dict | Callable[[np.ndarray], dict] | None = None) -> np.ndarray:
        """Decode final states, score them, record them as candidates; returns rewards (N,)."""
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
        merged = {s: Population(self.stepper.concat([a[s].states for a in archives]),
                                tuple(lin for a in archives for lin in a[s].lineages), s, self.stepper.select)
                  for s in (archives[0] if archives else {})}
        return np.concatenate(rewards) if rewards else np.zeros(0), merged
