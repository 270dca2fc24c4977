"""Evolution and population schedules: validation, cost, and the population scheduler."""

from __future__ import annotations

import math
from typing import Sequence

#: the authors' SD2.1 shape (evolution at 0, 40%, 60%, 80% of the steps; relative population sizes)
AUTO_FRACTIONS = (0.0, 0.4, 0.6, 0.8)
AUTO_WEIGHTS = (42, 26, 26, 26, 30)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_schedules(evolution_schedule: Sequence[int], population_schedule: Sequence[int], elite_size: int,
                       num_steps: int | None = None) -> None:
    """Raise ValueError naming the parameter for any inconsistent schedule."""
    evo, pop = list(evolution_schedule), list(population_schedule)
    if not all(_is_int(e) for e in evo):
        raise ValueError(f"evolution_schedule: must be a list of integer step indices, got {evo}")
    if not all(_is_int(p) and p >= 1 for p in pop) or not pop:
        raise ValueError(f"population_schedule: must be a non-empty list of positive integers, got {pop}")
    if len(pop) != len(evo) + 1:
        raise ValueError(f"population_schedule: needs len(evolution_schedule) + 1 = {len(evo) + 1} entries "
                         f"(the initial population, then one per evolution step), got {len(pop)}")
    if any(b <= a for a, b in zip(evo, evo[1:])):
        raise ValueError(f"evolution_schedule: steps must be strictly increasing, got {evo}")
    if evo and evo[0] < 0:
        raise ValueError(f"evolution_schedule: steps must be >= 0, got {evo}")
    if num_steps is not None and evo and evo[-1] >= num_steps:
        raise ValueError(f"evolution_schedule: steps must be in [0, num_inference_steps - 1] = [0, {num_steps - 1}], "
                         f"got {evo}")
    if not _is_int(elite_size) or elite_size < 0:
        raise ValueError(f"elite_size: must be a non-negative integer, got {elite_size!r}")
    if evo and elite_size >= min(pop):
        raise ValueError(f"elite_size: must be smaller than every population size (min {min(pop)}), got {elite_size}")


def schedule_cost(evolution_schedule: Sequence[int], population_schedule: Sequence[int], num_steps: int) -> int:
    """NFE of an EvoSearch run: P0 * T + sum_g P_g * (T - e_g)."""
    return population_schedule[0] * num_steps + sum(
        p * (num_steps - e) for e, p in zip(evolution_schedule, population_schedule[1:]))


def auto_schedule(nfe_budget: int, num_steps: int) -> tuple[list[int], list[int], int]:
    """The population scheduler: evolution steps, population sizes and elite size from a budget.

    Rule: evolution steps at 0, 40%, 60% and 80% of the denoising steps (the authors'
    SD2.1 schedule, rescaled) with population sizes proportional to 42:26:26:26:30,
    scaled down (floor) to fit ``nfe_budget``; generations whose population would fall
    below 3 are dropped from the end (fewer than 4 trajectories of budget: plain
    best-of-K); leftover budget widens the first generation. Elite = 20% of the
    smallest later population (at least 1). The cost never exceeds ``nfe_budget``.
    """
    if not _is_int(nfe_budget) or nfe_budget < num_steps:
        raise ValueError(f"nfe_budget: must be at least one trajectory = num_inference_steps = {num_steps} NFE, "
                         f"got {nfe_budget}")
    evo_all: list[int] = []
    for f in AUTO_FRACTIONS:
        e = min(num_steps - 1, int(round(f * num_steps)))
        if not evo_all or e > evo_all[-1]:
            evo_all.append(e)
    for g in range(len(evo_all), -1, -1):
        evo = evo_all[:g]
        weights = AUTO_WEIGHTS[: g + 1]
        unit = schedule_cost(evo, weights, num_steps)
        pop = [int(math.floor(w * nfe_budget / unit)) for w in weights]
        if g == 0 or min(pop) >= 3:
            break
    if not evo:
        return [], [nfe_budget // num_steps], 0
    pop[0] += (nfe_budget - schedule_cost(evo, pop, num_steps)) // num_steps
    return evo, pop, default_elite(pop)


def default_elite(population_schedule: Sequence[int]) -> int:
    """20% of the smallest bred population, at least 1 and below every population size."""
    pop = list(population_schedule)
    if len(pop) < 2:
        return 0
    return max(0, min(max(1, int(round(0.2 * min(pop[1:])))), min(pop) - 1))


def steps_at_fractions(fractions: Sequence[float], num_steps: int, lo: int = 0) -> list[int]:
    """Distinct, increasing step indices round(f * num_steps) clipped to [lo, num_steps - 1]."""
    steps: list[int] = []
    for f in fractions:
        e = min(num_steps - 1, max(lo, int(round(f * num_steps))))
        if e >= lo and (not steps or e > steps[-1]):
            steps.append(e)
    return steps


def validate_steps(name: str, steps: Sequence[int], num_steps: int | None = None, lo: int = 0) -> list[int]:
    """A strictly increasing list of integer step indices in [lo, num_steps - 1], or a
    ValueError naming ``name``."""
    steps = list(steps)
    if not all(_is_int(e) for e in steps):
        raise ValueError(f"{name}: must be a list of integer step indices, got {steps}")
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"{name}: steps must be strictly increasing, got {steps}")
    if steps and steps[0] < lo:
        raise ValueError(f"{name}: steps must be >= {lo}, got {steps}")
    if num_steps is not None and steps and steps[-1] >= num_steps:
        raise ValueError(f"{name}: steps must be in [{lo}, num_inference_steps - 1] = [{lo}, {num_steps - 1}], "
                         f"got {steps}")
    return steps
