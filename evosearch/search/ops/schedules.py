"""Evolution and population schedules: validation, cost, and the population scheduler."""

from __future__ import annotations

import math
from typing import Sequence

from ...core.validation import ParameterError, check_int, check_int_list, check_steps

#: the authors' SD2.1 shape (evolution at 0, 40%, 60%, 80% of the steps; relative population sizes)
AUTO_FRACTIONS = (0.0, 0.4, 0.6, 0.8)
AUTO_WEIGHTS = (42, 26, 26, 26, 30)


def validate_schedules(evolution_schedule: Sequence[int], population_schedule: Sequence[int], elite_size: int,
                       num_steps: int | None = None) -> None:
    """Raise a ParameterError naming the parameter for any inconsistent schedule."""
    evo = check_steps("evolution_schedule", evolution_schedule, num_steps)
    pop = check_int_list("population_schedule", population_schedule)
    if len(pop) != len(evo) + 1:
        raise ParameterError(f"population_schedule: needs len(evolution_schedule) + 1 = {len(evo) + 1} entries "
                             f"(the initial population, then one per evolution step), got {len(pop)}")
    check_int("elite_size", elite_size, lo=0)
    if evo and elite_size >= min(pop):
        raise ParameterError(f"elite_size: must be smaller than every population size (min {min(pop)}), "
                             f"got {elite_size}")


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
    check_int("nfe_budget", nfe_budget, lo=num_steps, hint=" (one trajectory = num_inference_steps NFE)")
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


def staged_screening_cost(sizes: Sequence[int], elite: int, screen_steps: Sequence[int], num_steps: int) -> int:
    """NFE of a screening generation ranked at several steps: ``sizes[0]`` rows denoised to
    ``screen_steps[0]`` plus the prediction there (its x0 preview is scored); the ``sizes[i]`` best go
    on from that prediction to the next screening step and its prediction; at the last one ``elite``
    of the ``sizes[-1]`` finished rows go on from the prediction and ``sizes[-1] - elite`` mutated
    children are denoised from the step to the end."""
    steps, T = list(screen_steps), num_steps
    cost = sizes[0] * (steps[0] + 1)
    for rows, a, b in zip(sizes[1:-1], steps, steps[1:]):
        cost += rows * (b - a)
    last = steps[-1]
    return cost + elite * (T - last - 1) + (sizes[-1] - elite) * (T - last)


def screening_cost(screened: int, finished: int, elite: int, screen_step: int, num_steps: int) -> int:
    """NFE of a screening generation ranked at one step (:func:`staged_screening_cost`)."""
    return staged_screening_cost((screened, finished), elite, (screen_step,), num_steps)


def staged_screening_schedule(nfe_budget: int, num_steps: int, screen_steps: Sequence[int],
                              keep_fractions: Sequence[float], elite_fraction: float = 1.0) -> tuple[list[int], int]:
    """(sizes, elite): the widest screening generation within ``nfe_budget`` ranked at each of
    ``screen_steps`` (increasing), keeping ``round(keep_fractions[i] * rows)`` (at least 1) at step i;
    the last stage's rows are finished, ``round(elite_fraction * finished)`` of them the best
    previews as they are, the rest mutated children; leftover budget finishes more elites.
    ``sizes`` = [screened, kept at each step...] (the last: finished). A ParameterError when not
    even one row fits."""
    check_int("nfe_budget", nfe_budget, lo=num_steps, hint=" (one trajectory = num_inference_steps NFE)")

    def sizes(n: int) -> tuple[list[int], int]:
        rows = [n]
        for keep in keep_fractions:
            rows.append(min(rows[-1], max(1, int(round(keep * rows[-1])))))
        return rows, min(rows[-1], max(1, int(round(elite_fraction * rows[-1]))))

    n = 1
    while staged_screening_cost(*sizes(n + 1), screen_steps, num_steps) <= nfe_budget:
        n += 1
    rows, elite = sizes(n)
    while rows[-1] < rows[-2] and staged_screening_cost(rows[:-1] + [rows[-1] + 1], elite + 1, screen_steps,
                                                        num_steps) <= nfe_budget:
        rows[-1], elite = rows[-1] + 1, elite + 1
    return rows, elite


def screening_schedule(nfe_budget: int, num_steps: int, screen_step: int, keep_fraction: float,
                       elite_fraction: float = 1.0) -> tuple[int, int, int]:
    """(screened, finished, elite) of a screening ranked at one step (:func:`staged_screening_schedule`)."""
    (screened, finished), elite = staged_screening_schedule(nfe_budget, num_steps, (screen_step,), (keep_fraction,),
                                                            elite_fraction)
    return screened, finished, elite
