"""Search over paths (Ma et al. 2025): re-noise intermediate states, widen, denoise, keep
the best, repeat until the end."""

from __future__ import annotations

from .context import SearchContext, apply_events
from .lineage import Lineage
from .schedules import steps_at_fractions, validate_steps
from .selection import elites

#: default scoring points, as fractions of the denoising steps
AUTO_FRACTIONS = (0.25, 0.5, 0.75)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def paths_cost(n_start: int, n_keep: int, width: int, search_steps, renoise_steps: int, num_steps: int) -> int:
    """NFE of a path search: n_start * s_1 + n_keep * width * sum_m (s_{m+1} - (s_m - renoise_steps)),
    with s_{n+1} = num_steps; n_start * num_steps without search steps."""
    s = list(search_steps)
    if not s:
        return n_start * num_steps
    ends = s[1:] + [num_steps]
    return n_start * s[0] + n_keep * width * sum(e - (j - renoise_steps) for j, e in zip(s, ends))


class PathSearch:
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

    name = "paths"

    def __init__(self, n_keep: int = 2, width: int | None = None, n_start: int | None = None,
                 search_steps=None, renoise_steps: int | None = None):
        if not _is_int(n_keep) or n_keep < 1:
            raise ValueError(f"n_keep: must be a positive integer, got {n_keep!r}")
        if width is not None and (not _is_int(width) or width < 1):
            raise ValueError(f"width: must be a positive integer or None (from the nfe_budget), got {width!r}")
        if n_start is not None and (not _is_int(n_start) or n_start < n_keep):
            raise ValueError(f"n_start: must be an integer >= n_keep = {n_keep} or None, got {n_start!r}")
        if renoise_steps is not None and (not _is_int(renoise_steps) or renoise_steps < 1):
            raise ValueError(f"renoise_steps: must be a positive integer or None, got {renoise_steps!r}")
        if search_steps is not None:
            search_steps = validate_steps("search_steps", search_steps, lo=1)
            if renoise_steps is not None and search_steps and renoise_steps > search_steps[0]:
                raise ValueError(f"renoise_steps: must be at most the first search step ({search_steps[0]}) so that "
                                 f"paths re-noise to a step >= 0, got {renoise_steps}")
        self.n_keep = n_keep
        self.width = width
        self.n_start = n_start
        self.search_steps = search_steps
        self.renoise_steps = renoise_steps

    def plan(self, nfe_budget: int | None, num_steps: int) -> dict:
        """{"n_start", "n_keep", "width", "search_steps", "renoise_steps"} for this request."""
        T = num_steps
        if self.search_steps is None:
            steps = steps_at_fractions(AUTO_FRACTIONS, T, lo=1)
        else:
            steps = validate_steps("search_steps", self.search_steps, T, lo=1)
        r = self.renoise_steps
        if steps:
            r = min(steps[0], max(1, int(round(0.1 * T)))) if r is None else r
            if r > steps[0]:
                raise ValueError(f"renoise_steps: must be at most the first search step ({steps[0]}), got {r}")
        else:
            r = r or 1
        K, M = self.n_keep, self.width
        if not steps:  # nothing to search over: best-of-n_start
            n = self.n_start
            if n is None:
                if nfe_budget is None:
                    raise ValueError("nfe_budget: PathSearch() without n_start needs an nfe_budget to size itself")
                n = nfe_budget // T
            if n < K:
                raise ValueError(f"nfe_budget: PathSearch needs at least n_keep = {K} trajectories = {K * T} NFE, "
                                 f"got {nfe_budget}")
            plan = {"n_start": n, "n_keep": K, "width": M or 1, "search_steps": [], "renoise_steps": r}
        else:
            per_width = paths_cost(0, K, 1, steps, r, T)  # NFE of one unit of width
            first = steps[0]
            if M is None:
                if nfe_budget is None:
                    raise ValueError("nfe_budget: PathSearch() without width needs an nfe_budget to size itself")
                M = (nfe_budget - (self.n_start or K) * first) // per_width
                if M < 1:
                    raise ValueError(f"nfe_budget: PathSearch(n_keep={K}) at {T} steps needs at least "
                                     f"{(self.n_start or K) * first + per_width} NFE (width 1), got {nfe_budget}")
            n = self.n_start
            if n is None:
                n = K
                if nfe_budget is not None:
                    n += max(0, nfe_budget - paths_cost(K, K, M, steps, r, T)) // first
            plan = {"n_start": n, "n_keep": K, "width": M, "search_steps": steps, "renoise_steps": r}
        cost = paths_cost(plan["n_start"], K, plan["width"], steps, r, T)
        if nfe_budget is not None and cost > nfe_budget:
            raise ValueError(f"nfe_budget: PathSearch with {plan} at {T} steps needs {cost} NFE, more than "
                             f"nfe_budget={nfe_budget}")
        return plan

    def cost(self, nfe_budget: int | None, num_steps: int) -> int:
        p = self.plan(nfe_budget, num_steps)
        return paths_cost(p["n_start"], p["n_keep"], p["width"], p["search_steps"], p["renoise_steps"], num_steps)

    def config(self) -> dict:
        return {"method": self.name, "n_keep": self.n_keep, "width": self.width, "n_start": self.n_start,
                "search_steps": self.search_steps, "renoise_steps": self.renoise_steps}

    def run(self, ctx: SearchContext) -> None:
        T = ctx.num_steps
        p = self.plan(ctx.nfe_budget, T)
        steps, back, K, M = p["search_steps"], p["renoise_steps"], p["n_keep"], p["width"]
        ctx.set_planned_nfe(paths_cost(p["n_start"], K, M, steps, back, T))
        ctx.plan = dict(p)
        stepper = ctx.stepper

        lineages = [Lineage.init(s, ctx.request) for s in ctx.new_seeds(p["n_start"])]
        states = apply_events(stepper, None, [lin.events[0] for lin in lineages])
        start = 0
        for m, s in enumerate(steps):
            if s - 1 > start:
                states, _ = ctx.rollout(states, lineages, start=start, end=s - 1)
            x0_hat, eps_hat = ctx.predict(states, s - 1)
            rewards = ctx.score_preview(x0_hat, step=s, generation=m)
            states = ctx.advance(x0_hat, eps_hat, lineages, s - 1)
            kept = elites(rewards, K)
            parents = [int(k) for k in kept for _ in range(M)]
            start = s - back
            lineages = [lineages[k].then("renoise", start, ctx.new_seed(), from_step=s) for k in parents]
            states = apply_events(stepper, stepper.select(states, parents), [lin.events[-1] for lin in lineages])
            ctx.history[-1].update(kept=[int(k) for k in kept], renoise_to=start)
        finals, _ = ctx.rollout(states, lineages, start=start)
        ctx.evaluate(finals, lineages, generation=len(steps), step=start)

    def __repr__(self) -> str:
        return (f"PathSearch(n_keep={self.n_keep}, width={self.width}, n_start={self.n_start}, "
                f"search_steps={self.search_steps}, renoise_steps={self.renoise_steps})")
