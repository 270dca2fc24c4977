"""TTS-VAR (Chen et al. 2025): test-time scaling for next-scale (VAR) models.

The population shrinks over the scales of a next-scale model (the *batch-size schedule*);
at every scale where it shrinks, survivors are chosen:

- at coarse scales by *clustering-based diversity search*: the previews (the decoded
  accumulated features) are embedded by a feature extractor, k-means (scikit-learn,
  ``random_state`` drawn from the request's rng) groups them into as many clusters as
  survivors, and the member nearest each centre survives — structure stays diverse while
  rewards on blurry coarse previews are not yet trusted;
- at fine scales by *resampling-based potential selection*: previews are scored by the
  reward, and survivors are drawn (with replacement, multinomial by default) in
  proportion to a Feynman-Kac potential G (``potential``: "value" exp(lambda r_k), "diff"
  exp(lambda (r_k - r_prev)), "max" exp(lambda max(r_k, running max)), "sum"
  exp(lambda (r_k + earlier r)); :class:`~evosearch.search.resampling.Potentials`);
  copies of one sample continue with fresh noise (a "keep" event with a new seed).

After the last scale every remaining sample is decoded and scored; the best is the result.

**Schedule.** The authors' batch sizes per scale for Infinity's 13 scales are
``{8, 8, 6, 6, 6, 4, 2, 2, 2, 1, 1, 1, 1} x N``, clustering at scales 2 and 5 and
resampling at scales 6 and 9. In their loop the batch size b_k of scale k is the number
of samples *kept after* scale k (scale k itself runs with b_{k-1}); we do the same. The
mapping onto a model with K scales: scale k takes the entry at position
``p(k) = floor(k (S - 1) / (K - 1) + 1/2)`` of the S-entry shape (first and last scales
align; K == S is the identity), times N. Every scale k < K - 1 where the batch size drops
is a selection scale: clustering when it is coarse, ``k / (K - 1) < coarse_fraction``
(default 1/2, which reproduces the authors' 2, 5 | 6, 9 split on 13 scales), resampling
otherwise. A drop at the last scale is realised by keeping the best final sample. Explicit
``cluster_scales`` / ``resample_scales`` (model scale indices) override the rule (resampling
may also be asked for at scales where the size does not drop). Examples: K=6 (the bundled
model, patch_nums 1,2,3,4,6,8): batch sizes 8,6,4,2,1,1 x N, clustering after scales 1 and
2, resampling after 3 and 4; K=10 (VAR): 8,8,6,6,4,2,2,1,1,1 x N; K=4: 8,6,2,1 x N.

**Cost.** One NFE is one sample through one scale, so TTS-VAR costs
``sum_k f_k`` NFE with f_0 = b_0 and f_k = b_{k-1} (the population that runs scale k);
that is linear in N, and ``n=None`` takes the largest N within ``nfe_budget``. The
default on 13 scales costs 55 N NFE (4.2 N best-of-N trajectories); on the bundled
6-scale model 29 N (4.8 N trajectories). Previews cost decodes (every clustering and
resampling scale) and reward calls (resampling scales), never NFE. Token counts are
reported in ``stats.tokens`` (fine scales hold most tokens, where TTS-VAR runs fewest samples).

Features for clustering (``features``): "image" (default) the flattened preview image;
"reward" the reward's own feature hook ``reward.features(images, prompts) -> (N, D)``
(e.g. a CLIP/DINO embedding, as the authors use DINOv2 + PCA); or any callable
``(images (N, 3, H, W) in [0, 1], prompts) -> (N, D)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..core.records import Plan
from ..core.validation import ParameterError, check_choice, check_int, check_int_list, check_number
from .method import SearchMethod, need_budget, over_budget
from .ops.potentials import Potentials
from .ops.resampling import SCHEMES, normalize_log_weights, resample
from .ops.selection import kmeans_select

#: the authors' batch-size shape for Infinity's 13 scales (times N)
DEFAULT_BATCH_SHAPE = (8, 8, 6, 6, 6, 4, 2, 2, 2, 1, 1, 1, 1)
#: our potential names -> Potentials kinds (TTS-VAR calls them VALUE, DIFF, MAX, SUM)
POTENTIAL_KINDS = {"value": "rt", "diff": "diff", "max": "max", "sum": "add", "rt": "rt", "add": "add"}
FEATURES = ("image", "reward")


def map_batch_shape(shape: Sequence[int], num_scales: int) -> list[int]:
    """The S-entry ``shape`` mapped onto ``num_scales`` scales: scale k takes entry
    floor(k (S - 1) / (K - 1) + 1/2) (identity when K == S)."""
    S, K = len(shape), num_scales
    if K == S:
        return [int(v) for v in shape]
    if K == 1:
        return [int(shape[-1])]
    return [int(shape[int(math.floor(k * (S - 1) / (K - 1) + 0.5))]) for k in range(K)]


@dataclass(frozen=True)
class TTSVAR(SearchMethod):
    """TTS-VAR on a next-scale (``var``) Stepper (see module docstring).

    Args:
        n: N, the schedule's multiplier; None = the largest N within ``nfe_budget``.
        batch_shape: batch sizes per scale before multiplying by N (non-increasing);
            mapped onto the model's scales when its length differs (default: the authors'
            13-entry shape).
        cluster_scales, resample_scales: scales after which survivors are chosen by
            clustering / by resampling (None: from the schedule's drops and ``coarse_fraction``).
        coarse_fraction: scales k with k / (K - 1) below it are coarse (clustering).
        potential: "value", "diff", "max" or "sum"; lambda_: the potentials' lambda (10).
        resampling: "multinomial" (the authors'), "systematic" or "stratified".
        features: "image", "reward" or a callable (see module docstring).
    """

    n: int | None = None
    batch_shape: tuple = DEFAULT_BATCH_SHAPE
    cluster_scales: tuple | None = None
    resample_scales: tuple | None = None
    coarse_fraction: float = 0.5
    potential: str = "value"
    lambda_: float = 10.0
    resampling: str = "multinomial"
    features: str | Callable = "image"

    name = "tts-var"
    summary = "next-scale models: shrinking batch, clustering then resampling (TTS-VAR)"
    population_parameter = "n"
    requires = frozenset({"scales"})

    @staticmethod
    def plan_population(details: dict) -> int:
        return max(details["batch_sizes"])

    def __post_init__(self):
        check_int("n", self.n, lo=1, allow_none=True, hint=" (None: from the nfe_budget)")
        shape = check_int_list("batch_shape", self.batch_shape)
        if any(b > a for a, b in zip(shape, shape[1:])):
            raise ParameterError(f"batch_shape: must be non-increasing (a descending schedule), got {list(shape)}")
        object.__setattr__(self, "batch_shape", shape)
        for name in ("cluster_scales", "resample_scales"):
            scales = getattr(self, name)
            if scales is not None:
                object.__setattr__(self, name, tuple(sorted(check_int_list(name, scales, lo=0)) if scales else ()))
        if self.cluster_scales and self.resample_scales and set(self.cluster_scales) & set(self.resample_scales):
            raise ParameterError(f"cluster_scales/resample_scales: a scale cannot be both, got "
                                 f"{sorted(set(self.cluster_scales) & set(self.resample_scales))}")
        check_number("coarse_fraction", self.coarse_fraction, 0.0, 1.0)
        check_choice("potential", self.potential, ("value", "diff", "max", "sum"))
        object.__setattr__(self, "lambda_", check_number("lambda_", self.lambda_, lo=0.0))
        check_choice("resampling", self.resampling, SCHEMES)
        if not (callable(self.features) or self.features in FEATURES):
            raise ParameterError(f"features: must be one of {', '.join(FEATURES)} or a callable "
                                 f"(images, prompts) -> (N, D) features, got {self.features!r}")

    # -- planning ------------------------------------------------------------------
    def schedule(self, num_steps: int, n: int = 1) -> dict:
        """Batch sizes, forward sizes, selection scales and NFE for N = ``n`` on ``num_steps`` scales."""
        K = int(num_steps)
        base = map_batch_shape(self.batch_shape, K)
        b = [v * n for v in base]
        forward = [b[0]] + b[:-1]
        drops = [k for k in range(1, K - 1) if b[k] < b[k - 1]]
        if self.cluster_scales is None and self.resample_scales is None:
            coarse = lambda k: K > 1 and k / (K - 1) < self.coarse_fraction  # noqa: E731
            cluster = [k for k in drops if coarse(k)]
            resamp = [k for k in drops if not coarse(k)]
        else:
            cluster = list(self.cluster_scales or [])
            resamp = list(self.resample_scales or [])
            if self.cluster_scales is None:
                cluster = [k for k in drops if k not in resamp]
            if self.resample_scales is None:
                resamp = [k for k in drops if k not in cluster]
            for name, scales in (("cluster_scales", cluster), ("resample_scales", resamp)):
                bad = [k for k in scales if k >= K - 1]
                if bad:
                    raise ParameterError(f"{name}: selection scales must be in [0, {K - 2}] for a model with {K} scales "
                                     f"(after the last scale the best sample is kept), got {bad}")
            missing = [k for k in drops if k not in cluster and k not in resamp]
            if missing:
                raise ParameterError(f"cluster_scales/resample_scales: the batch size drops after scales {missing} "
                                 f"({[b[k - 1] for k in missing]} -> {[b[k] for k in missing]}); each drop needs a "
                                 f"selection (clustering or resampling) there")
            flat = [k for k in cluster if k == 0 or b[k] >= b[k - 1]]
            if flat:
                raise ParameterError(f"cluster_scales: clustering keeps fewer samples than it gets; the batch size does "
                                 f"not drop after scales {flat} (batch sizes {b})")
        return {"n": n, "batch_sizes": b, "forward_sizes": forward, "cluster_scales": cluster,
                "resample_scales": resamp, "nfe": int(sum(forward))}

    def plan(self, nfe_budget, num_steps, num_segments=None) -> Plan:
        """The schedule for this request: N from ``n`` or the budget (largest N that fits)."""
        unit = self.schedule(num_steps, 1)["nfe"]
        n = self.n
        if n is None:
            need_budget("TTSVAR()", "n", nfe_budget)
            if nfe_budget < unit:
                raise ParameterError(f"nfe_budget: TTS-VAR at N=1 on {num_steps} scales needs {unit} NFE, "
                                     f"got {nfe_budget}")
            n = nfe_budget // unit
        p = self.schedule(num_steps, n)
        over_budget(f"TTSVAR(n={n}) on {num_steps} scales", p["nfe"], nfe_budget, num_steps)
        return Plan(self.name, p["nfe"], p["batch_sizes"][-1], p)

    # -- running -------------------------------------------------------------------
    def _features(self, run, images) -> np.ndarray:
        if callable(self.features):
            feats = self.features(images, run.prompt)
        elif self.features == "reward":
            hook = getattr(run.reward, "features", None)
            if hook is None:
                raise ParameterError(f"features: 'reward' needs a reward with a features(images, prompts) method; "
                                 f"{type(run.reward).__name__} has none (use 'image' or a callable)")
            feats = hook(images, run.prompt)
        else:
            feats = images.reshape(images.shape[0], -1)
        feats = np.asarray(feats.detach().cpu().numpy() if hasattr(feats, "detach") else feats, dtype=np.float64)
        if feats.ndim < 1 or feats.shape[0] != images.shape[0] or not np.isfinite(feats).all():
            raise ParameterError(f"features: expected finite features with one row per image ({images.shape[0]}), got "
                             f"shape {feats.shape}")
        return feats.reshape(feats.shape[0], -1)

    def run(self, run) -> None:
        K = run.num_steps
        b, cluster, resamp = run.plan["batch_sizes"], set(run.plan["cluster_scales"]), set(run.plan["resample_scales"])
        pop = run.initial(b[0])
        potentials = Potentials(POTENTIAL_KINDS[self.potential], self.lambda_, len(pop))
        g = 0
        for k in range(K - 1):
            pop, _ = run.rollout(pop, end=k + 1)
            target = b[k]
            if k in cluster and target < len(pop):
                images = run.preview_images(pop)
                idx = kmeans_select(self._features(run, images), target, random_state=int(run.rng.integers(2**31 - 1)))
                run.log_preview((), step=k, generation=g, population=len(pop), selection="cluster",
                                kept=[int(j) for j in idx])
                pop = pop.select(idx)
                potentials.select(idx)
                g += 1
            elif k in resamp:
                rewards = run.score(run.preview_images(pop))
                log_w = potentials.step(rewards)
                idx = resample(normalize_log_weights(log_w), self.resampling, run.rng, target)
                run.log_preview(rewards, step=k, generation=g, selection="resample",
                                ancestors=[int(j) for j in idx], weights=[float(w) for w in normalize_log_weights(log_w)])
                pop = run.branch(pop, idx, "keep")  # copies continue with fresh noise
                potentials.select(idx)
                g += 1
        pop, _ = run.rollout(pop)
        run.evaluate(pop, generation=g, step=K)
