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
import warnings
from typing import Callable, Sequence

import numpy as np

from .context import SearchContext, apply_events
from .lineage import Lineage
from .resampling import SCHEMES, Potentials, normalize_log_weights, resample

#: the authors' batch-size shape for Infinity's 13 scales (times N)
DEFAULT_BATCH_SHAPE = (8, 8, 6, 6, 6, 4, 2, 2, 2, 1, 1, 1, 1)
#: our potential names -> Potentials kinds (TTS-VAR calls them VALUE, DIFF, MAX, SUM)
POTENTIAL_KINDS = {"value": "rt", "diff": "diff", "max": "max", "sum": "add", "rt": "rt", "add": "add"}
FEATURES = ("image", "reward")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def map_batch_shape(shape: Sequence[int], num_scales: int) -> list[int]:
    """The S-entry ``shape`` mapped onto ``num_scales`` scales: scale k takes entry
    floor(k (S - 1) / (K - 1) + 1/2) (identity when K == S)."""
    S, K = len(shape), num_scales
    if K == S:
        return [int(v) for v in shape]
    if K == 1:
        return [int(shape[-1])]
    return [int(shape[int(math.floor(k * (S - 1) / (K - 1) + 0.5))]) for k in range(K)]


def kmeans_select(features: np.ndarray, k: int, random_state: int, n_init: int = 3) -> np.ndarray:
    """k distinct row indices: k-means (scikit-learn) on ``features`` (N, D), then the member
    nearest each centre. Empty or duplicate clusters (identical features) are filled with the
    remaining rows nearest any centre. Sorted ascending."""
    from sklearn.cluster import KMeans

    X = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    n = len(X)
    if not 1 <= k <= n:
        raise ValueError(f"k: must be in [1, {n}] (survivors from {n} samples), got {k}")
    if k == n:
        return np.arange(n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer distinct points than clusters: handled below
        km = KMeans(n_clusters=k, random_state=int(random_state), n_init=n_init).fit(X)
    centres, labels = km.cluster_centers_, km.labels_
    dist = np.linalg.norm(X[:, None, :] - centres[None, :, :], axis=-1)  # (N, k)
    chosen: list[int] = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        members = members[~np.isin(members, chosen)]
        if len(members):
            chosen.append(int(members[np.argmin(dist[members, c])]))
    if len(chosen) < k:
        rest = [j for j in np.argsort(dist.min(axis=1), kind="stable") if j not in chosen]
        chosen += [int(j) for j in rest[: k - len(chosen)]]
    return np.sort(np.asarray(chosen, dtype=np.int64))


class TTSVAR:
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

    name = "tts-var"

    def __init__(self, n: int | None = None, batch_shape: Sequence[int] = DEFAULT_BATCH_SHAPE,
                 cluster_scales: Sequence[int] | None = None, resample_scales: Sequence[int] | None = None,
                 coarse_fraction: float = 0.5, potential: str = "value", lambda_: float = 10.0,
                 resampling: str = "multinomial", features: str | Callable = "image"):
        if n is not None and (not _is_int(n) or n < 1):
            raise ValueError(f"n: must be a positive integer or None (from the nfe_budget), got {n!r}")
        shape = list(batch_shape) if isinstance(batch_shape, (list, tuple)) else None
        if not shape or any(not _is_int(v) or v < 1 for v in shape):
            raise ValueError(f"batch_shape: must be a non-empty list of positive integers, got {batch_shape!r}")
        if any(b > a for a, b in zip(shape, shape[1:])):
            raise ValueError(f"batch_shape: must be non-increasing (a descending schedule), got {shape}")
        for name, scales in (("cluster_scales", cluster_scales), ("resample_scales", resample_scales)):
            if scales is not None and (not isinstance(scales, (list, tuple)) or any(not _is_int(v) or v < 0
                                                                                   for v in scales)):
                raise ValueError(f"{name}: must be a list of scale indices >= 0 or None, got {scales!r}")
        if cluster_scales is not None and resample_scales is not None and set(cluster_scales) & set(resample_scales):
            raise ValueError(f"cluster_scales/resample_scales: a scale cannot be both, got "
                             f"{sorted(set(cluster_scales) & set(resample_scales))}")
        if isinstance(coarse_fraction, bool) or not isinstance(coarse_fraction, (int, float)) or not (
                0.0 <= coarse_fraction <= 1.0):
            raise ValueError(f"coarse_fraction: must be in [0, 1], got {coarse_fraction!r}")
        if potential not in POTENTIAL_KINDS:
            raise ValueError(f"potential: must be one of value, diff, max, sum, got {potential!r}")
        if (isinstance(lambda_, bool) or not isinstance(lambda_, (int, float)) or not math.isfinite(lambda_)
                or lambda_ < 0):
            raise ValueError(f"lambda_: must be a finite number >= 0, got {lambda_!r}")
        if resampling not in SCHEMES:
            raise ValueError(f"resampling: must be one of {', '.join(SCHEMES)}, got {resampling!r}")
        if not (callable(features) or features in FEATURES):
            raise ValueError(f"features: must be one of {', '.join(FEATURES)} or a callable "
                             f"(images, prompts) -> (N, D) features, got {features!r}")
        self.n = n
        self.batch_shape = [int(v) for v in shape]
        self.cluster_scales = None if cluster_scales is None else sorted(int(v) for v in cluster_scales)
        self.resample_scales = None if resample_scales is None else sorted(int(v) for v in resample_scales)
        self.coarse_fraction = float(coarse_fraction)
        self.potential = potential
        self.lambda_ = float(lambda_)
        self.resampling = resampling
        self.features = features

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
                    raise ValueError(f"{name}: selection scales must be in [0, {K - 2}] for a model with {K} scales "
                                     f"(after the last scale the best sample is kept), got {bad}")
            missing = [k for k in drops if k not in cluster and k not in resamp]
            if missing:
                raise ValueError(f"cluster_scales/resample_scales: the batch size drops after scales {missing} "
                                 f"({[b[k - 1] for k in missing]} -> {[b[k] for k in missing]}); each drop needs a "
                                 f"selection (clustering or resampling) there")
            flat = [k for k in cluster if k == 0 or b[k] >= b[k - 1]]
            if flat:
                raise ValueError(f"cluster_scales: clustering keeps fewer samples than it gets; the batch size does "
                                 f"not drop after scales {flat} (batch sizes {b})")
        return {"n": n, "batch_sizes": b, "forward_sizes": forward, "cluster_scales": cluster,
                "resample_scales": resamp, "nfe": int(sum(forward))}

    def plan(self, nfe_budget: int | None, num_steps: int) -> dict:
        """The schedule for this request: N from ``n`` or the budget (largest N that fits)."""
        unit = self.schedule(num_steps, 1)["nfe"]
        n = self.n
        if n is None:
            if nfe_budget is None:
                raise ValueError("nfe_budget: TTSVAR() without n needs an nfe_budget to size itself")
            if nfe_budget < unit:
                raise ValueError(f"nfe_budget: TTS-VAR at N=1 on {num_steps} scales needs {unit} NFE, got {nfe_budget}")
            n = nfe_budget // unit
        p = self.schedule(num_steps, n)
        if nfe_budget is not None and p["nfe"] > nfe_budget:
            raise ValueError(f"nfe_budget: TTSVAR(n={n}) on {num_steps} scales needs {p['nfe']} NFE, more than "
                             f"nfe_budget={nfe_budget}")
        return p

    def cost(self, nfe_budget: int | None, num_steps: int) -> int:
        return self.plan(nfe_budget, num_steps)["nfe"]

    def config(self) -> dict:
        return {"method": self.name, "n": self.n, "batch_shape": self.batch_shape,
                "cluster_scales": self.cluster_scales, "resample_scales": self.resample_scales,
                "coarse_fraction": self.coarse_fraction, "potential": self.potential, "lambda_": self.lambda_,
                "resampling": self.resampling,
                "features": self.features if isinstance(self.features, str) else getattr(self.features, "__name__",
                                                                                       "callable")}

    # -- running -------------------------------------------------------------------
    def _features(self, ctx: SearchContext, images) -> np.ndarray:
        if callable(self.features):
            feats = self.features(images, ctx.prompt)
        elif self.features == "reward":
            hook = getattr(ctx.reward, "features", None)
            if hook is None:
                raise ValueError(f"features: 'reward' needs a reward with a features(images, prompts) method; "
                                 f"{type(ctx.reward).__name__} has none (use 'image' or a callable)")
            feats = hook(images, ctx.prompt)
        else:
            feats = images.reshape(images.shape[0], -1)
        feats = np.asarray(feats.detach().cpu().numpy() if hasattr(feats, "detach") else feats, dtype=np.float64)
        if feats.ndim < 1 or feats.shape[0] != images.shape[0] or not np.isfinite(feats).all():
            raise ValueError(f"features: expected finite features with one row per image ({images.shape[0]}), got "
                             f"shape {feats.shape}")
        return feats.reshape(feats.shape[0], -1)

    def run(self, ctx: SearchContext) -> None:
        stepper = ctx.stepper
        if getattr(stepper, "family", None) != "var":
            raise ValueError(f"method: TTS-VAR needs a next-scale model (a 'var' Stepper such as the bundled "
                             f"VARDigitsPipeline); this pipeline's Stepper is {getattr(stepper, 'family', '?')!r}")
        K = ctx.num_steps
        p = self.plan(ctx.nfe_budget, K)
        ctx.set_planned_nfe(p["nfe"])
        ctx.plan = dict(p)
        b, cluster, resamp = p["batch_sizes"], set(p["cluster_scales"]), set(p["resample_scales"])

        lineages = [Lineage.init(s, ctx.request) for s in ctx.new_seeds(b[0])]
        states = apply_events(stepper, None, [lin.events[0] for lin in lineages])
        potentials = Potentials(POTENTIAL_KINDS[self.potential], self.lambda_, len(lineages))
        g = 0
        for k in range(K):
            states, _ = ctx.rollout(states, lineages, start=k, end=k + 1)
            if k == K - 1:
                break
            target = b[k]
            if k in cluster and target < len(lineages):
                ctx.check_stop()
                with ctx.timed("decode"):
                    images = stepper.preview(states, k)
                idx = kmeans_select(self._features(ctx, images), target, random_state=int(ctx.rng.integers(2**31 - 1)))
                entry = {"generation": g, "step": k, "population": len(lineages), "preview": True,
                         "selection": "cluster", "rewards": [], "kept": [int(j) for j in idx],
                         "best_reward": None if ctx.best is None else ctx.best.reward, "nfe": ctx.nfe}
                ctx.history.append(entry)
                ctx.emit({"type": "selection", **entry})
                states = stepper.select(states, idx)
                lineages = [lineages[j] for j in idx]
                potentials.select(idx)
                g += 1
            elif k in resamp:
                ctx.check_stop()
                rewards = ctx.score_preview(states, step=k, generation=g)  # finish() of a partial state = its preview
                log_w = potentials.step(rewards)
                idx = resample(normalize_log_weights(log_w), self.resampling, ctx.rng, target)
                states = stepper.select(states, idx)
                potentials.select(idx)
                lineages = [lineages[j].then("keep", k + 1, ctx.new_seed()) for j in idx]
                ctx.history[-1].update(selection="resample", ancestors=[int(j) for j in idx],
                                       weights=[float(w) for w in normalize_log_weights(log_w)])
                g += 1
        ctx.evaluate(states, lineages, generation=g, step=K)

    def __repr__(self) -> str:
        return (f"TTSVAR(n={self.n}, potential={self.potential!r}, lambda_={self.lambda_}, "
                f"features={self.config()['features']!r})")
