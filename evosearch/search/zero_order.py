"""Zero-order search (Ma et al. 2025): candidates on a cosine-``lambda_`` sphere around a
pivot noise; the pivot moves to the best candidate."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.records import Plan
from ..core.validation import ParameterError, check_choice, check_int, check_number
from .method import SearchMethod, need_budget, over_budget

RESTARTS = ("resample", "stay")


@dataclass(frozen=True)
class ZeroOrderSearch(SearchMethod):
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

    n_neighbors: int = 4
    lambda_: float = 0.95
    iterations: int | None = None
    restart: str = "resample"

    name = "zero-order"
    summary = "neighbours of a pivot noise on a cosine sphere; move to the best"
    population_parameter = "n_neighbors"
    requires = frozenset({"gaussian"})

    @staticmethod
    def plan_population(details: dict) -> int:
        return max(details["neighbors"], default=0) + 1

    def __post_init__(self):
        check_int("n_neighbors", self.n_neighbors, lo=1)
        check_number("lambda_", self.lambda_, 0.0, 1.0, hi_open=True, hint=" (the cosine similarity to the pivot)")
        object.__setattr__(self, "lambda_", float(self.lambda_))
        check_int("iterations", self.iterations, lo=1, allow_none=True, hint=" (None: use the whole nfe_budget)")
        check_choice("restart", self.restart, RESTARTS)

    def plan(self, nfe_budget, num_steps, num_segments=None) -> Plan:
        T = num_steps
        if self.iterations is None:
            need_budget("ZeroOrderSearch()", "iterations", nfe_budget)
            if nfe_budget < 2 * T:
                raise ParameterError(f"nfe_budget: zero-order search needs at least the pivot and one neighbour = "
                                     f"2 * num_inference_steps = {2 * T} NFE, got {nfe_budget}")
            full, rest = divmod(nfe_budget // T - 1, self.n_neighbors)
            sizes = [self.n_neighbors] * full + ([rest] if rest else [])
        else:
            sizes = [self.n_neighbors] * self.iterations
        cost = T * (1 + sum(sizes))
        over_budget(f"ZeroOrderSearch(n_neighbors={self.n_neighbors}, iterations={self.iterations})", cost,
                    nfe_budget, T)
        return Plan(self.name, cost, 1 + sum(sizes), {"iterations": len(sizes), "neighbors": sizes})

    def _decide(self, rewards, pivot_reward: float) -> tuple[int, str, float]:
        """(best child, action, the pivot's reward after it): move to a better child, else restart or stay."""
        b = int(rewards.argmax())
        if rewards[b] > pivot_reward:
            return b, "move", float(rewards[b])
        return (b, "restart", -math.inf) if self.restart == "resample" else (b, "stay", pivot_reward)

    def run(self, run) -> None:
        pivot = run.initial(1)
        final, _ = run.rollout(pivot)
        pivot_reward = float(run.evaluate(final, 0, 0, lambda r: {"pivot_reward": float(r[0]), "action": "start"})[0])
        for g, n in enumerate(run.plan["neighbors"], start=1):
            children = run.branch(pivot, [0] * n, "neighbor", rate=self.lambda_)
            finals, _ = run.rollout(children)

            def info(rewards, before=pivot_reward):
                _, action, after = self._decide(rewards, before)
                return {"pivot_reward": after if math.isfinite(after) else None, "action": action}

            b, action, pivot_reward = self._decide(run.evaluate(finals, g, 0, info), pivot_reward)
            if action == "move":
                pivot = children.select([b])
            elif action == "restart":
                pivot = run.initial(1)
