"""Best-of-N (random search, Ma et al. 2025): N initial noises, full denoising, keep the best."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.records import Plan
from ..core.validation import ParameterError, check_int
from .method import SearchMethod, need_budget, over_budget


@dataclass(frozen=True)
class BestOfN(SearchMethod):
    """Sample ``n`` candidates from independent seeds and keep the highest reward.

    Args:
        n: number of candidates; None = as many as ``nfe_budget`` allows.
        wave_size: candidates denoised and scored together (None = the Stepper's
            ``max_batch_size``, which is how a diffusers pipeline would batch them);
            an interrupt keeps every finished wave.
    NFE = n * num_inference_steps.
    """

    n: int | None = None
    wave_size: int | None = None

    name = "best-of-n"
    summary = "N independent samples, keep the best (random search)"
    population_parameter = "n"

    @staticmethod
    def plan_population(details: dict) -> int:
        return details["n"]

    def __post_init__(self):
        check_int("n", self.n, lo=1, allow_none=True, hint=" (None: use the whole nfe_budget)")
        check_int("wave_size", self.wave_size, lo=1, allow_none=True)

    def plan(self, nfe_budget, num_steps, num_segments=None) -> Plan:
        n = self.n
        if n is None:
            need_budget("BestOfN()", "n", nfe_budget)
            if nfe_budget < num_steps:
                raise ParameterError(f"nfe_budget: must be at least one trajectory = num_inference_steps = "
                                     f"{num_steps} NFE, got {nfe_budget}")
            n = nfe_budget // num_steps
        over_budget(f"BestOfN(n={n})", n * num_steps, nfe_budget, num_steps)
        return Plan(self.name, n * num_steps, n, {"n": n})

    def run(self, run) -> None:
        n = run.plan["n"]
        run.rollout_and_evaluate(run.new_lineages(n), generation=0, step=0, wave=self.wave_size)
