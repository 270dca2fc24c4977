"""Zero-order search (Ma et al. 2025): candidates on a cosine-``lambda_`` sphere around a
pivot noise; the pivot moves to the best candidate."""

from __future__ import annotations

import math

from .context import SearchContext, apply_events
from .lineage import Lineage

RESTARTS = ("resample", "stay")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class ZeroOrderSearch:
    """Zero-order search over the initial noise x_T.

    The pivot (a random noise) is denoised and scored. Each iteration draws
    ``n_neighbors`` candidates ``x' = lambda x + sqrt(1 - lambda^2) |x| u_perp / |u_perp|``
    (u_perp: the part of fresh Gaussian noise orthogonal to the pivot x, so that
    cos(x', x) = ``lambda_`` and |x'| = |x|), denoises them fully and scores them. If the
    best beats the pivot it becomes the pivot; otherwise ``restart="resample"`` draws a new
    random pivot and ``restart="stay"`` keeps the pivot (the next iteration draws new
    neighbours). A restarted pivot is not denoised (its reward counts as -inf, so the next
    iteration's best neighbour always replaces it): that keeps the NFE exact. The result
    is the best sample ever scored.

    Args:
        n_neighbors: candidates per iteration (the paper's N).
        lambda_: cosine similarity of a candidate to the pivot, in [0, 1) (0.95 in the paper).
        iterations: None = as many as ``nfe_budget`` allows; then any leftover whole
            trajectories make one last, smaller iteration.
        restart: "resample" or "stay" (what to do when no neighbour beats the pivot).

    NFE = T * (1 + sum of the iterations' sizes) = T * (1 + iterations * n_neighbors) with
    ``iterations`` given; from a budget: T * floor(nfe_budget / T).
    """

    name = "zero-order"

    def __init__(self, n_neighbors: int = 4, lambda_: float = 0.95, iterations: int | None = None,
                 restart: str = "resample"):
        if not _is_int(n_neighbors) or n_neighbors < 1:
            raise ValueError(f"n_neighbors: must be a positive integer, got {n_neighbors!r}")
        if not isinstance(lambda_, (int, float)) or isinstance(lambda_, bool) or not 0.0 <= float(lambda_) < 1.0:
            raise ValueError(f"lambda_: the cosine similarity to the pivot must be a number in [0, 1), got {lambda_!r}")
        if iterations is not None and (not _is_int(iterations) or iterations < 1):
            raise ValueError(f"iterations: must be a positive integer or None (use the whole nfe_budget), "
                             f"got {iterations!r}")
        if restart not in RESTARTS:
            raise ValueError(f"restart: must be one of {', '.join(RESTARTS)}, got {restart!r}")
        self.n_neighbors = n_neighbors
        self.lambda_ = float(lambda_)
        self.iterations = iterations
        self.restart = restart

    def plan(self, nfe_budget: int | None, num_steps: int) -> list[int]:
        """The number of neighbours of each iteration."""
        T = num_steps
        if self.iterations is None:
            if nfe_budget is None:
                raise ValueError("nfe_budget: ZeroOrderSearch() without iterations needs an nfe_budget to size itself")
            if nfe_budget < 2 * T:
                raise ValueError(f"nfe_budget: zero-order search needs at least the pivot and one neighbour = "
                                 f"2 * num_inference_steps = {2 * T} NFE, got {nfe_budget}")
            trajectories = nfe_budget // T - 1
            full, rest = divmod(trajectories, self.n_neighbors)
            return [self.n_neighbors] * full + ([rest] if rest else [])
        sizes = [self.n_neighbors] * self.iterations
        cost = T * (1 + sum(sizes))
        if nfe_budget is not None and cost > nfe_budget:
            raise ValueError(f"nfe_budget: ZeroOrderSearch(n_neighbors={self.n_neighbors}, iterations="
                             f"{self.iterations}) at {T} steps needs {cost} NFE, more than nfe_budget={nfe_budget}")
        return sizes

    def cost(self, nfe_budget: int | None, num_steps: int) -> int:
        return num_steps * (1 + sum(self.plan(nfe_budget, num_steps)))

    def config(self) -> dict:
        return {"method": self.name, "n_neighbors": self.n_neighbors, "lambda_": self.lambda_,
                "iterations": self.iterations, "restart": self.restart}

    def run(self, ctx: SearchContext) -> None:
        T = ctx.num_steps
        sizes = self.plan(ctx.nfe_budget, T)
        ctx.set_planned_nfe(T * (1 + sum(sizes)))
        ctx.plan = {"iterations": len(sizes), "neighbors": sizes}
        stepper = ctx.stepper

        pivot = Lineage.init(ctx.new_seed(), ctx.request)
        pivot_state = apply_events(stepper, None, [pivot.events[0]])
        final, _ = ctx.rollout(pivot_state, [pivot], start=0)
        pivot_reward = float(ctx.evaluate(final, [pivot], generation=0, step=0)[0])
        ctx.history[-1].update(pivot_reward=pivot_reward, action="start")

        for g, n in enumerate(sizes, start=1):
            children = [pivot.then("neighbor", 0, ctx.new_seed(), self.lambda_) for _ in range(n)]
            states = apply_events(stepper, stepper.select(pivot_state, [0] * n), [c.events[-1] for c in children])
            finals, _ = ctx.rollout(states, children, start=0)
            rewards = ctx.evaluate(finals, children, generation=g, step=0)
            b = int(rewards.argmax())
            if rewards[b] > pivot_reward:
                pivot, pivot_state, pivot_reward = children[b], stepper.select(states, [b]), float(rewards[b])
                action = "move"
            elif self.restart == "resample":
                pivot = Lineage.init(ctx.new_seed(), ctx.request)
                pivot_state = apply_events(stepper, None, [pivot.events[0]])
                pivot_reward, action = -math.inf, "restart"
            else:
                action = "stay"
            ctx.history[-1].update(pivot_reward=pivot_reward if math.isfinite(pivot_reward) else None, action=action)

    def __repr__(self) -> str:
        return (f"ZeroOrderSearch(n_neighbors={self.n_neighbors}, lambda_={self.lambda_}, "
                f"iterations={self.iterations}, restart={self.restart!r})")
