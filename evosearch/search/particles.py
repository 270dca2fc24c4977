"""Particle resampling / Feynman-Kac steering (Singhal et al. 2025): sequential Monte Carlo
with reward potentials on x0 previews."""

from __future__ import annotations

import math

import numpy as np

from .context import SearchContext, apply_events
from .lineage import Lineage
from .resampling import POTENTIALS, SCHEMES, Potentials, ess_from_log, normalize_log_weights, resample


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class ParticleSearch:
    """FK steering: N particles denoised together and resampled on reward potentials.

    At each potential step i (every ``resample_every`` steps from ``resample_start`` to
    ``resample_end``) the denoiser's prediction at step i gives x0_hat; its decoded preview
    is scored, r_i = reward(decode(x0_hat)), and each particle's weight is multiplied by
    its potential G_i (``potential``: "diff" exp(lambda (r_i - r_prev)), "max"
    exp(lambda max(r_i, running max)), "rt" exp(lambda r_i), "add" exp(lambda (r_i + sum of
    earlier r)); see :class:`~evosearch.search.resampling.Potentials`). When the effective
    sample size falls below ``ess_threshold * N`` (or always, with ``adaptive=False``) the
    particles are resampled by ``resampling`` ("multinomial", "systematic", "stratified")
    and the weights reset. Step i is then taken from the same prediction (each copy of a
    resampled particle with its own fresh noise), so previews cost no NFE. At the end the
    samples are decoded and scored, and the last potential exp(lambda r(x0)) / prod G
    (over the particle's ancestry) makes the target p(x0) exp(lambda r(x0)); the final
    normalised weights are in the last history entry. The result is the best sample scored.

    History: one entry per potential step ("preview": True) with the preview rewards,
    "ess" (before resampling), "resampled" and, if so, "ancestors"; the final entry
    holds "ess" and "weights" of the final importance weights.

    Resampled copies are identical states, so the step must be stochastic (eta > 0).

    NFE = n_particles * num_inference_steps (decodes and reward calls: n_particles per
    potential step plus n_particles at the end). n_particles=None: nfe_budget // T.
    """

    name = "particles"

    def __init__(self, n_particles: int | None = None, potential: str = "max", lambda_: float = 10.0,
                 resampling: str = "multinomial", ess_threshold: float = 0.5, adaptive: bool = True,
                 resample_every: int = 5, resample_start: int = 0, resample_end: int | None = None):
        if n_particles is not None and (not _is_int(n_particles) or n_particles < 1):
            raise ValueError(f"n_particles: must be a positive integer or None (from the nfe_budget), "
                             f"got {n_particles!r}")
        if potential not in POTENTIALS:
            raise ValueError(f"potential: must be one of {', '.join(POTENTIALS)}, got {potential!r}")
        if (not isinstance(lambda_, (int, float)) or isinstance(lambda_, bool) or not math.isfinite(lambda_)
                or lambda_ < 0):
            raise ValueError(f"lambda_: must be a finite number >= 0, got {lambda_!r}")
        if resampling not in SCHEMES:
            raise ValueError(f"resampling: must be one of {', '.join(SCHEMES)}, got {resampling!r}")
        if not isinstance(ess_threshold, (int, float)) or not 0.0 < float(ess_threshold) <= 1.0:
            raise ValueError(f"ess_threshold: must be in (0, 1] (a fraction of n_particles), got {ess_threshold!r}")
        if not isinstance(adaptive, bool):
            raise ValueError(f"adaptive: must be True or False, got {adaptive!r}")
        if not _is_int(resample_every) or resample_every < 1:
            raise ValueError(f"resample_every: must be a positive integer, got {resample_every!r}")
        if not _is_int(resample_start) or resample_start < 0:
            raise ValueError(f"resample_start: must be a non-negative integer step index, got {resample_start!r}")
        if resample_end is not None and (not _is_int(resample_end) or resample_end < resample_start):
            raise ValueError(f"resample_end: must be an integer step index >= resample_start = {resample_start} "
                             f"or None (the last step), got {resample_end!r}")
        self.n_particles = n_particles
        self.potential = potential
        self.lambda_ = float(lambda_)
        self.resampling = resampling
        self.ess_threshold = float(ess_threshold)
        self.adaptive = adaptive
        self.resample_every = resample_every
        self.resample_start = resample_start
        self.resample_end = resample_end

    def potential_steps(self, num_steps: int) -> list[int]:
        """The steps whose x0 previews are scored (inclusive window, every ``resample_every``)."""
        end = num_steps - 1 if self.resample_end is None else min(self.resample_end, num_steps - 1)
        return list(range(self.resample_start, end + 1, self.resample_every))

    def plan(self, nfe_budget: int | None, num_steps: int) -> dict:
        """{"n_particles", "potential_steps"} for this request."""
        if self.resample_start >= num_steps:
            raise ValueError(f"resample_start: must be a step index in [0, num_inference_steps - 1] = "
                             f"[0, {num_steps - 1}], got {self.resample_start}")
        n = self.n_particles
        if n is None:
            if nfe_budget is None:
                raise ValueError("nfe_budget: ParticleSearch() without n_particles needs an nfe_budget to size itself")
            if nfe_budget < num_steps:
                raise ValueError(f"nfe_budget: must be at least one particle = num_inference_steps = {num_steps} NFE, "
                                 f"got {nfe_budget}")
            n = nfe_budget // num_steps
        elif nfe_budget is not None and n * num_steps > nfe_budget:
            raise ValueError(f"nfe_budget: ParticleSearch(n_particles={n}) at {num_steps} steps needs "
                             f"{n * num_steps} NFE, more than nfe_budget={nfe_budget}")
        return {"n_particles": n, "potential_steps": self.potential_steps(num_steps)}

    def cost(self, nfe_budget: int | None, num_steps: int) -> int:
        return self.plan(nfe_budget, num_steps)["n_particles"] * num_steps

    def config(self) -> dict:
        return {"method": self.name, "n_particles": self.n_particles, "potential": self.potential,
                "lambda_": self.lambda_, "resampling": self.resampling, "ess_threshold": self.ess_threshold,
                "adaptive": self.adaptive, "resample_every": self.resample_every,
                "resample_start": self.resample_start, "resample_end": self.resample_end}

    def run(self, ctx: SearchContext) -> None:
        T = ctx.num_steps
        p = self.plan(ctx.nfe_budget, T)
        if ctx.stepper.eta == 0:
            raise ValueError("eta: particle resampling needs a stochastic sampler (eta > 0): with eta = 0 the "
                             "copies of a resampled particle stay identical")
        n, potential_steps = p["n_particles"], p["potential_steps"]
        ctx.set_planned_nfe(n * T)
        ctx.plan = dict(p)
        stepper = ctx.stepper

        lineages = [Lineage.init(s, ctx.request) for s in ctx.new_seeds(n)]
        states = apply_events(stepper, None, [lin.events[0] for lin in lineages])
        potentials = Potentials(self.potential, self.lambda_, n)
        log_w = np.zeros(n)
        start = 0
        for g, i in enumerate(potential_steps):
            if i > start:
                states, _ = ctx.rollout(states, lineages, start=start, end=i)
            x0_hat, eps_hat = ctx.predict(states, i)
            rewards = ctx.score_preview(x0_hat, step=i, generation=g)
            log_w = log_w + potentials.step(rewards)
            e = ess_from_log(log_w)
            info = {"ess": e, "resampled": False}
            if not self.adaptive or e < self.ess_threshold * n:
                idx = resample(normalize_log_weights(log_w), self.resampling, ctx.rng, n)
                states, x0_hat, eps_hat = (stepper.select(t, idx) for t in (states, x0_hat, eps_hat))
                potentials.select(idx)
                lineages = [lineages[k].then("keep", i, ctx.new_seed()) for k in idx]
                log_w = np.zeros(n)
                info.update(resampled=True, ancestors=[int(k) for k in idx])
            ctx.history[-1].update(info)
            states = ctx.advance(x0_hat, eps_hat, lineages, i)
            start = i + 1
        if start < T:
            states, _ = ctx.rollout(states, lineages, start=start)
        rewards = ctx.evaluate(states, lineages, generation=len(potential_steps), step=T)
        log_w = log_w + potentials.final(rewards)
        w = normalize_log_weights(log_w)
        ctx.history[-1].update(ess=ess_from_log(log_w), weights=[float(v) for v in w])

    def __repr__(self) -> str:
        return (f"ParticleSearch(n_particles={self.n_particles}, potential={self.potential!r}, lambda_={self.lambda_}, "
                f"resampling={self.resampling!r}, ess_threshold={self.ess_threshold})")
