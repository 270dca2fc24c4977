"""A search method in one file: hill climbing on the initial noise (the docs' toy method).

Round 0 denoises ``n`` initial noises; each later round denoises ``n`` children of the best
initial noise so far, each a variance-preserving mutation ``sqrt(1 - rate**2) x + rate eps``,
and the best child replaces it when its reward is higher. NFE = n * (1 + rounds) * steps.
"""

from dataclasses import dataclass

from evosearch.core import Plan, check_int, check_number
from evosearch.search import SearchMethod
from evosearch.search.method import need_budget, over_budget


@dataclass(frozen=True)
class HillClimb(SearchMethod):
    """Hill climbing on x_T: ``n`` candidates per round, ``rounds`` rounds after the first (None: as
    many as ``nfe_budget`` allows), mutation strength ``rate`` in (0, 1]."""

    n: int = 4
    rounds: int | None = None
    rate: float = 0.3

    name = "toy"  # the registry name: evosearch generate --method toy
    summary = "hill climbing on the initial noise (the docs' toy method)"
    population_parameter = "n"  # what --population sets
    requires = frozenset({"gaussian"})  # Stepper capabilities: Gaussian states to mutate

    def __post_init__(self):
        check_int("n", self.n, lo=1)
        check_int("rounds", self.rounds, lo=0, allow_none=True, hint=" (None: use the whole nfe_budget)")
        check_number("rate", self.rate, 0.0, 1.0, lo_open=True)

    def plan(self, nfe_budget, num_steps, num_segments=None) -> Plan:
        rounds = self.rounds
        if rounds is None:
            need_budget("HillClimb()", "rounds", nfe_budget)
            rounds = max(nfe_budget // (self.n * num_steps) - 1, 0)
        cost = self.n * (1 + rounds) * num_steps
        over_budget(f"HillClimb(n={self.n}, rounds={rounds})", cost, nfe_budget, num_steps)
        return Plan(self.name, cost, self.n * (1 + rounds), {"n": self.n, "rounds": rounds})

    @staticmethod
    def plan_population(details: dict) -> int:
        return details["n"]

    def run(self, run) -> None:
        start = run.initial(self.n)
        final, _ = run.rollout(start)
        rewards = run.evaluate(final, generation=0, step=0)
        best, best_reward = start.select([int(rewards.argmax())]), float(rewards.max())
        for g in range(1, run.plan["rounds"] + 1):
            children = run.branch(best, [0] * self.n, "vp", rate=self.rate)
            final, _ = run.rollout(children)
            rewards = run.evaluate(final, generation=g, step=0)
            if rewards.max() > best_reward:
                best, best_reward = children.select([int(rewards.argmax())]), float(rewards.max())
