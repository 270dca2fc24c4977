"""Search over paths (Ma et al. 2025): re-noise intermediate states, widen, denoise, keep
the best, repeat until the end."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.records import Plan
from ..core.validation import ParameterError, check_int, check_steps
from .method import SearchMethod, need_budget, over_budget
from .ops.schedules import steps_at_fractions
from .ops.selection import elites

#: default scoring points, as fractions of the denoising steps
AUTO_FRACTIONS = (0.25, 0.5, 0.75)


def paths_cost(n_start: int, n_keep: int, width: int, search_steps, renoise_steps: int, num_steps: int) -> int:
    """NFE of a path search: n_start * s_1 + n_keep * width * sum_m (s_{m+1} - (s_m - renoise_steps)),
    with s_{n+1} = num_steps; n_start * num_steps without search steps."""
    s = list(search_steps)
    if not s:
        return n_start * num_steps
    ends = s[1:] + [num_steps]
    return n_start * s[0] + n_keep * width * sum(e - (j - renoise_steps) for j, e in zip(s, ends))


@dataclass(frozen=True)
class PathSearch(SearchMethod):
    """Search over denoising paths.

    ``n_start`` noises are denoised to the first search step s_1. At each search step s_m
    the paths are scored on the x0 preview of the step that produced them (the denoiser's
    x0_hat at step s_m - 1, which that step computed anyway: no extra NFE), the best
    ``n_keep`` are kept, and each is copied ``width`` times, re-noised with the forward
    process from step s_m back to step k_m = s_m - ``renoise_steps``
    (x_k = (a_k/a_j) x_j + sqrt(s_k^2 - (a_k s_j/a_j)^2) z, fresh z per copy) and denoised
    to the next search step. After the last search step the n_keep * width paths are
    denoised to the end, decoded and scored on the sample itself; the best sample wins.
    With ``n_start = n_keep`` this is the algorithm of the paper (N paths widened by M,
    the top N kept, until the end). The step is the Stepper's own (deterministic with
    eta = 0, as the paper's ODE solver; stochastic with eta > 0).

    Args:
        n_keep: paths kept at each search step (the paper's N).
        width: copies per kept path (the paper's M); None = as wide as ``nfe_budget`` allows.
        n_start: initial noises; None = n_keep plus whatever whole first segments the
            budget has left (leftover budget widens the first round).
        search_steps: increasing step indices in [1, num_inference_steps - 1] where paths
            are scored; None = 25%, 50%, 75% of the steps; [] = best-of-n_start.
        renoise_steps: how many steps back a kept path is re-noised (1 <= r <= s_1);
            None = max(1, round(10% of the steps)), at most s_1.

    NFE = n_start * s_1 + n_keep * width * sum_m (s_{m+1} - s_m + renoise_steps), with
    s_{n+1} = num_inference_steps (previews are free); never above ``nfe_budget``.
    """

    n_keep: int = 2
    width: int | None = None
    n_start: int | None = None
    search_steps: tuple | None = None
    renoise_steps: int | None = None

    name = "paths"
    summary = "re-noise the best intermediate states, widen, denoise again"
    population_parameter = "n_keep"
    requires = frozenset({"gaussian", "predict"})

    @staticmethod
    def plan_population(details: dict) -> int:
        return max(details["n_start"], details["n_keep"] * details["width"])

    def __post_init__(self):
        check_int("n_keep", self.n_keep, lo=1)
        check_int("width", self.width, lo=1, allow_none=True, hint=" (None: from the nfe_budget)")
        check_int("n_start", self.n_start, lo=self.n_keep, allow_none=True, hint=" (at least n_keep)")
        check_int("renoise_steps", self.renoise_steps, lo=1, allow_none=True)
        if self.search_steps is not None:
            steps = check_steps("search_steps", self.search_steps, lo=1)
            object.__setattr__(self, "search_steps", steps)
            if self.renoise_steps is not None and steps and self.renoise_steps > steps[0]:
                raise ParameterError(f"renoise_steps: must be at most the first search step ({steps[0]}) so that "
                                     f"paths re-noise to a step >= 0, got {self.renoise_steps}")

    def plan(self, nfe_budget, num_steps, num_segments=None) -> Plan:
        T = num_steps
        if self.search_steps is None:
            steps = steps_at_fractions(AUTO_FRACTIONS, T, lo=1)
        else:
            steps = list(check_steps("search_steps", self.search_steps, T, lo=1))
        r = self.renoise_steps
        if steps:
            r = min(steps[0], max(1, int(round(0.1 * T)))) if r is None else r
            if r > steps[0]:
                raise ParameterError(f"renoise_steps: must be at most the first search step ({steps[0]}), got {r}")
        else:
            r = r or 1
        K, M = self.n_keep, self.width
        if not steps:  # nothing to search over: best-of-n_start
            n = self.n_start
            if n is None:
                need_budget("PathSearch()", "n_start", nfe_budget)
                n = nfe_budget // T
            if n < K:
                raise ParameterError(f"nfe_budget: PathSearch needs at least n_keep = {K} trajectories = {K * T} NFE, "
                                     f"got {nfe_budget}")
            M = M or 1
        else:
            per_width = paths_cost(0, K, 1, steps, r, T)  # NFE of one unit of width
            if M is None:
                need_budget("PathSearch()", "width", nfe_budget)
                M = (nfe_budget - (self.n_start or K) * steps[0]) // per_width
                if M < 1:
                    raise ParameterError(f"nfe_budget: PathSearch(n_keep={K}) at {T} steps needs at least "
                                         f"{(self.n_start or K) * steps[0] + per_width} NFE (width 1), got {nfe_budget}")
            n = self.n_start
            if n is None:
                n = K + (max(0, nfe_budget - paths_cost(K, K, M, steps, r, T)) // steps[0] if nfe_budget else 0)
        details = {"n_start": n, "n_keep": K, "width": M, "search_steps": steps, "renoise_steps": r}
        cost = paths_cost(n, K, M, steps, r, T)
        over_budget(f"PathSearch with {details}", cost, nfe_budget, T)
        return Plan(self.name, cost, K * M if steps else n, details)

    def run(self, run) -> None:
        p = run.plan
        steps, back, K, M = p["search_steps"], p["renoise_steps"], p["n_keep"], p["width"]
        pop = run.initial(p["n_start"])
        for m, s in enumerate(steps):
            if s - 1 > pop.step:
                pop, _ = run.rollout(pop, end=s - 1)
            prediction = run.predict(pop)
            rewards = run.score_preview(prediction)
            pop = run.advance(pop, prediction)
            kept = elites(rewards, K)
            run.log_preview(rewards, step=s, generation=m, kept=[int(k) for k in kept], renoise_to=s - back)
            pop = run.branch(pop, [int(k) for k in kept for _ in range(M)], "renoise", step=s - back, from_step=s)
        start = pop.step
        final, _ = run.rollout(pop)
        run.evaluate(final, generation=len(steps), step=start)
