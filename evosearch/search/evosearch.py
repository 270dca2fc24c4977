"""EvoSearch (He et al. 2025): evolutionary search over x_T and intermediate states x_t."""

from __future__ import annotations

import numpy as np
import torch

from .context import SearchContext, apply_events
from .lineage import Lineage
from .schedules import auto_schedule, default_elite, schedule_cost, validate_schedules
from .selection import elites, tournament

PRESETS = {
    # name: (evolution_schedule, population_schedule, elite_size, num_inference_steps the schedule is for)
    "sd2.1": ([0, 20, 30, 40], [42, 26, 26, 26, 30], 5, 50),
    "flux": ([5, 20, 30, 40], [14, 7, 7, 7, 10], 3, 50),
    "wan": ([5, 20, 30, 45], [10, 5, 5, 5, 5], 2, 50),
}


class EvoSearch:
    """Evolutionary search over the denoising trajectory.

    Generation 0 denoises ``population_schedule[0]`` noises fully and scores them. At
    each evolution step e_g the next generation of ``population_schedule[g]`` is bred
    from the previous one's states at e_g: the ``elite_size`` best are copied unmutated,
    the rest are tournament winners (argmax of a random ``tournament_fraction`` of the
    population) mutated — at e = 0 (pure noise) by the variance-preserving
    ``sqrt(1 - r^2) x + r eps`` with r = ``mutation_rate``, later by ``x + sigma eps`` with
    sigma the sampler's own std of the step that produced x_e — then denoised from e_g to
    the end and scored. The result is the best sample ever scored.

    NFE = P_0 * T + sum_g P_g * (T - e_g). With no schedules the population scheduler
    (:func:`~evosearch.search.schedules.auto_schedule`) sizes everything from ``nfe_budget``.
    """

    name = "evosearch"

    def __init__(self, evolution_schedule=None, population_schedule=None, elite_size: int | None = None,
                 mutation_rate: float = 0.2, tournament_fraction: float = 0.9):
        if (evolution_schedule is None) != (population_schedule is None):
            raise ValueError("evolution_schedule, population_schedule: give both or neither "
                             "(neither: the population scheduler decides from nfe_budget)")
        if not 0.0 < float(mutation_rate) <= 1.0:
            raise ValueError(f"mutation_rate: must be in (0, 1], got {mutation_rate}")
        if not 0.0 < float(tournament_fraction) <= 1.0:
            raise ValueError(f"tournament_fraction: must be in (0, 1], got {tournament_fraction}")
        self.evolution_schedule = None if evolution_schedule is None else list(evolution_schedule)
        self.population_schedule = None if population_schedule is None else list(population_schedule)
        if self.evolution_schedule is not None:
            validate_schedules(self.evolution_schedule, self.population_schedule,
                               default_elite(self.population_schedule) if elite_size is None else elite_size)
        self.elite_size = elite_size
        self.mutation_rate = float(mutation_rate)
        self.tournament_fraction = float(tournament_fraction)

    @classmethod
    def preset(cls, name: str, **overrides) -> "EvoSearch":
        """The authors' schedules: "sd2.1", "flux" or "wan" (all for 50 denoising steps)."""
        if name not in PRESETS:
            raise ValueError(f"name: unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
        evo, pop, elite, _ = PRESETS[name]
        kwargs = dict(evolution_schedule=evo, population_schedule=pop, elite_size=elite)
        kwargs.update(overrides)
        return cls(**kwargs)

    def plan(self, nfe_budget: int | None, num_steps: int) -> tuple[list[int], list[int], int]:
        """(evolution_schedule, population_schedule, elite_size) for this request."""
        if self.evolution_schedule is None:
            if nfe_budget is None:
                raise ValueError("nfe_budget: EvoSearch() without schedules needs an nfe_budget "
                                 "(or pass evolution_schedule and population_schedule)")
            evo, pop, elite = auto_schedule(nfe_budget, num_steps)
            if self.elite_size is not None:
                elite = self.elite_size
        else:
            evo, pop = self.evolution_schedule, self.population_schedule
            elite = default_elite(pop) if self.elite_size is None else self.elite_size
        validate_schedules(evo, pop, elite, num_steps)
        cost = schedule_cost(evo, pop, num_steps)
        if nfe_budget is not None and cost > nfe_budget:
            raise ValueError(f"nfe_budget: the schedules need {cost} NFE at {num_steps} steps, more than "
                             f"nfe_budget={nfe_budget}")
        return evo, pop, elite

    def cost(self, nfe_budget: int | None, num_steps: int) -> int:
        return schedule_cost(*self.plan(nfe_budget, num_steps)[:2], num_steps)

    def config(self) -> dict:
        return {"method": self.name, "evolution_schedule": self.evolution_schedule,
                "population_schedule": self.population_schedule, "elite_size": self.elite_size,
                "mutation_rate": self.mutation_rate, "tournament_fraction": self.tournament_fraction}

    def run(self, ctx: SearchContext) -> None:
        T = ctx.num_steps
        evo, pop, elite = self.plan(ctx.nfe_budget, T)
        if ctx.stepper.eta == 0 and any(e > 0 for e in evo):
            raise ValueError("eta: EvoSearch mutates intermediate states with the sampler's own noise, "
                             "so it needs a stochastic sampler (eta > 0)")
        ctx.set_planned_nfe(schedule_cost(evo, pop, T))
        ctx.plan = {"evolution_schedule": evo, "population_schedule": pop, "elite_size": elite}

        lineages = [Lineage.init(s, ctx.request) for s in ctx.new_seeds(pop[0])]
        states = apply_events(ctx.stepper, None, [lin.events[0] for lin in lineages])
        finals, archive = ctx.rollout(states, lineages, start=0, archive_at=evo)
        rewards = ctx.evaluate(finals, lineages, generation=0, step=0)

        for g, e in enumerate(evo, start=1):
            size = pop[g]
            n_elite = min(elite, len(rewards))
            parents = np.concatenate([elites(rewards, n_elite),
                                      tournament(rewards, size - n_elite, ctx.rng, self.tournament_fraction)])
            events, children = [], []
            for k, p in enumerate(parents):
                kind = "keep" if k < n_elite else ("vp" if e == 0 else "sigma")
                child = lineages[p].then(kind, e, ctx.new_seed(), self.mutation_rate if kind == "vp" else None)
                children.append(child)
                events.append(child.events[-1])
            parent_states = archive[e].index_select(0, torch.as_tensor(parents, dtype=torch.long))
            states = apply_events(ctx.stepper, parent_states.to(ctx.stepper.device), events)
            finals, archive = ctx.rollout(states, children, start=e, archive_at=[x for x in evo if x > e])
            rewards = ctx.evaluate(finals, children, generation=g, step=e)
            lineages = children

    def __repr__(self) -> str:
        return (f"EvoSearch(evolution_schedule={self.evolution_schedule}, population_schedule="
                f"{self.population_schedule}, elite_size={self.elite_size}, mutation_rate={self.mutation_rate})")
