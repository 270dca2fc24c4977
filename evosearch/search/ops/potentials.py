"""Feynman-Kac reward potentials for particle methods (FK steering, TTS-VAR). Pure numpy."""

from __future__ import annotations

import numpy as np

from ...core.validation import check_choice, check_number

POTENTIALS = ("diff", "max", "rt", "add")


class Potentials:
    """Per-particle Feynman-Kac potentials on intermediate rewards r_t (Singhal et al. 2025).

    At each potential step (:meth:`step`) with the particles' preview rewards r_t::

        diff  G_t = exp(lambda (r_t - r_prev))        r_prev: the particle's previous reward (0 at first)
        max   G_t = exp(lambda max(r_t, m))           m: the particle's running max (-inf at first), then updated
        rt    G_t = exp(lambda r_t)
        add   G_t = exp(lambda (r_t + S))             S: sum of the particle's earlier rewards, then S += r_t

    and at the end (:meth:`final`), on the reward of the sample itself,
    ``G_T = exp(lambda r(x0)) / prod_t G_t`` over the particle's ancestry, so that the
    product of all potentials of a path is exp(lambda r(x0)): the target is
    p(x0) exp(lambda r(x0)) for every choice (for "diff" this is its own telescoping form).
    Everything is kept as logs. :meth:`select` re-indexes the state after resampling.
    """

    def __init__(self, kind: str, lambda_: float, n: int):
        self.kind = check_choice("potential", kind, POTENTIALS)
        self.lambda_ = check_number("lambda_", lambda_, lo=0)
        self.prev = np.zeros(n)
        self.prev_lambda = self.lambda_
        self.running_max = np.full(n, -np.inf)
        self.running_sum = np.zeros(n)
        self.log_prod = np.zeros(n)  # sum of the log potentials along each particle's ancestry

    def step(self, rewards, lambda_: float | None = None) -> np.ndarray:
        """log G_t for preview rewards r_t (one per particle); updates the running state.
        ``lambda_`` overrides lambda for this step (tempering); for "diff" the potential is then
        exp(lambda_t r_t - lambda_{t-1} r_{t-1}), so the intermediate target is tilted by lambda_t r_t."""
        r = np.asarray(rewards, dtype=np.float64)
        lam = self.lambda_ if lambda_ is None else float(lambda_)
        if self.kind == "diff":
            log_g = lam * r - self.prev_lambda * self.prev
            self.prev_lambda = lam
        elif self.kind == "max":
            self.running_max = np.maximum(r, self.running_max)
            log_g = lam * self.running_max
        elif self.kind == "rt":
            log_g = lam * r
        else:  # add
            self.running_sum = self.running_sum + r
            log_g = lam * self.running_sum
        self.prev = r
        self.log_prod = self.log_prod + log_g
        return log_g

    def final(self, rewards) -> np.ndarray:
        """log G_T = lambda r(x0) - sum of the earlier log potentials of each particle's path."""
        r = np.asarray(rewards, dtype=np.float64)
        log_g = self.lambda_ * r - self.log_prod
        self.log_prod = self.log_prod + log_g
        return log_g

    def select(self, index) -> None:
        """Particle k now descends from particle ``index[k]``."""
        idx = np.asarray(index, dtype=np.int64)
        self.prev, self.running_max = self.prev[idx], self.running_max[idx]
        self.running_sum, self.log_prod = self.running_sum[idx], self.log_prod[idx]
