"""Best-of-N (random search, Ma et al. 2025): N initial noises, full denoising, keep the best."""

from __future__ import annotations

from .context import SearchContext, apply_events
from .lineage import Lineage


class BestOfN:
    """Sample ``n`` candidates from independent seeds and keep the highest reward.

    Args:
        n: number of candidates; None = as many as ``nfe_budget`` allows.
        wave_size: candidates denoised and scored together (None = the Stepper's
            ``max_batch_size``, which is how a diffusers pipeline would batch them);
            an interrupt keeps every finished wave.
    NFE = n * num_inference_steps.
    """

    name = "best-of-n"

    def __init__(self, n: int | None = None, wave_size: int | None = None):
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise ValueError(f"n: must be a positive integer or None (use the whole nfe_budget), got {n!r}")
        if wave_size is not None and (not isinstance(wave_size, int) or wave_size < 1):
            raise ValueError(f"wave_size: must be a positive integer or None, got {wave_size!r}")
        self.n = n
        self.wave_size = wave_size

    def plan(self, nfe_budget: int | None, num_steps: int) -> int:
        """The number of candidates this run will sample."""
        if self.n is None:
            if nfe_budget is None:
                raise ValueError("n: BestOfN() without n needs an nfe_budget to size itself")
            if nfe_budget < num_steps:
                raise ValueError(f"nfe_budget: must be at least one trajectory = num_inference_steps = {num_steps} "
                                 f"NFE, got {nfe_budget}")
            return nfe_budget // num_steps
        if nfe_budget is not None and self.n * num_steps > nfe_budget:
            raise ValueError(f"nfe_budget: BestOfN(n={self.n}) at {num_steps} steps needs {self.n * num_steps} NFE, "
                             f"more than nfe_budget={nfe_budget}")
        return self.n

    def cost(self, nfe_budget: int | None, num_steps: int) -> int:
        return self.plan(nfe_budget, num_steps) * num_steps

    def config(self) -> dict:
        return {"method": self.name, "n": self.n}

    def run(self, ctx: SearchContext) -> None:
        n = self.plan(ctx.nfe_budget, ctx.num_steps)
        ctx.set_planned_nfe(n * ctx.num_steps)
        wave = self.wave_size or ctx.stepper.max_batch_size
        seeds = ctx.new_seeds(n)
        for lo in range(0, n, wave):
            lineages = [Lineage.init(s, ctx.request) for s in seeds[lo:lo + wave]]
            states = apply_events(ctx.stepper, None, [lin.events[0] for lin in lineages])
            finals, _ = ctx.rollout(states, lineages, start=0)
            ctx.evaluate(finals, lineages, generation=0, step=0)

    def __repr__(self) -> str:
        return f"BestOfN(n={self.n})"
