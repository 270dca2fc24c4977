"""Tree-of-Frames (Liu et al. 2025, Video-T1): a video grown segment by segment as a search tree.

The roots are ``roots`` initial noises of the first segment (5, as in Video-T1). Every node
at depth d - 1 that survives gets ``branch_factors[d]`` children at depth d: continuations
of its video by one segment, each from its own fresh noise (a ``"segment"`` lineage event;
with a branch factor of 1 the single child just carries on). At the depths in
``prune_at`` the partial videos are scored by the reward (the verifier) and only the
children at or above the median are kept (``keep="median"``: the ⌈n/2⌉ best, ties broken
by order, so the compute is exactly what the parameters say), or the ``keep`` best
(an int, top-k). The complete videos at the last depth are scored and the best leaf wins.

Runs on a :class:`~evosearch.pipelines.segments.SegmentStepper` (a segment model: the
bundled moving digits, a Wan image-to-video pipeline, ...): each node's segment costs
``steps_per_segment`` NFE, so

    NFE = steps_per_segment * sum_d n_d,   n_0 = roots,   n_d = kept(n_{d-1}) * branch_factors[d]

with kept(n) = n at depths that are not pruned. Reward calls = the n_d of pruned depths plus
the leaves. Decodes = the same (partial videos for pruning, whole videos for leaves).
The winner's lineage (root seed, then a ``segment`` event per branching) replays it alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from typing import Sequence

import numpy as np

from ..core.records import Plan
from ..core.validation import ParameterError, check_int
from .method import SearchMethod, need_budget

KEEP_MODES = ("median",)


@dataclass(frozen=True)
class TreeOfFrames(SearchMethod):
    """Tree search over video segments (Video-T1's Tree-of-Frames).

    Args:
        roots: initial noises of the first segment (default 5, as in Video-T1); None = as many as
            ``nfe_budget`` allows for the given branching and pruning.
        branch_factors: children per surviving node at each depth 1..S-1: one int for every depth,
            or a list of S - 1 ints.
        prune_at: depths (0..S-2) after which the partial videos are scored and pruned; None
            (default) = every depth before the last; ``[]`` = never (then with branch factor 1 this
            is best-of-``roots``).
        keep: ``"median"`` (keep the children at or above the median score: the ⌈n/2⌉ best) or an
            int k (the k best).
    """

    roots: int | None = 5
    branch_factors: int | Sequence[int] = 2
    prune_at: Sequence[int] | None = None
    keep: str | int = "median"

    name = "tree-of-frames"
    summary = "videos segment by segment, pruned by the reward (Video-T1)"
    population_parameter = "roots"
    requires = frozenset({"segments"})

    @staticmethod
    def plan_population(details: dict) -> int:
        return max(details["nodes"])

    def __post_init__(self):
        check_int("roots", self.roots, lo=1, allow_none=True, hint=" (None: as many as nfe_budget allows)")
        b = self.branch_factors
        if isinstance(b, Integral):
            b = check_int("branch_factors", b, lo=1)
        else:
            try:
                b = tuple(int(v) for v in b)
            except (TypeError, ValueError):
                raise ParameterError(f"branch_factors: expected an int or a list of ints (one per depth 1..S-1), "
                                     f"got {b!r}") from None
            if any(v < 1 for v in b):
                raise ParameterError(f"branch_factors: every factor must be >= 1, got {list(b)}")
        object.__setattr__(self, "branch_factors", b)
        if self.prune_at is not None:
            prune = tuple(sorted({int(d) for d in self.prune_at}))
            if any(d < 0 for d in prune):
                raise ParameterError(f"prune_at: depths must be >= 0, got {list(prune)}")
            object.__setattr__(self, "prune_at", prune)
        if not (isinstance(self.keep, str) and self.keep in KEEP_MODES):
            check_int("keep", self.keep, lo=1, hint=" (top-k) or " + " / ".join(map(repr, KEEP_MODES)))

    # -- planning ----------------------------------------------------------------
    def kept(self, n: int) -> int:
        """How many of n children a pruning keeps."""
        if self.keep == "median":
            return (n + 1) // 2
        return min(n, self.keep)

    def _shape(self, num_segments: int | None) -> tuple[int, list[int], list[int]]:
        if num_segments is None:
            if isinstance(self.branch_factors, int):
                raise ParameterError("num_segments: TreeOfFrames needs a segment model (a SegmentStepper: the bundled "
                                 "moving-digits pipeline, a Wan image-to-video pipeline, ...) or a list of "
                                 "branch_factors (one per depth 1..S-1)")
            num_segments = len(self.branch_factors) + 1
        S = int(num_segments)
        if isinstance(self.branch_factors, int):
            branch = [1] + [self.branch_factors] * (S - 1)
        else:
            if len(self.branch_factors) != S - 1:
                raise ParameterError(f"branch_factors: expected {S - 1} factors (one per depth 1..{S - 1} of a "
                                 f"{S}-segment video), got {len(self.branch_factors)}")
            branch = [1] + list(self.branch_factors)
        prune = list(range(S - 1)) if self.prune_at is None else list(self.prune_at)
        if any(d > S - 2 for d in prune):
            raise ParameterError(f"prune_at: depths must be in [0, {S - 2}] for {S} segments (the last depth is "
                             f"scored whole and its best leaf wins), got {prune}")
        return S, branch, prune

    def _tree(self, roots: int, S: int, T: int, branch: list[int], prune: list[int]) -> Plan:
        nodes, kept = [], []
        n = roots
        for d in range(S):
            if d > 0:
                n = kept[-1] * branch[d]
            nodes.append(n)
            kept.append(self.kept(n) if d in prune else n)
        details = {"roots": roots, "num_segments": S, "steps_per_segment": T, "branch_factors": branch,
                   "prune_at": prune, "nodes": nodes, "kept": kept,
                   "reward_calls": sum(nodes[d] for d in prune) + nodes[-1]}
        return Plan(self.name, T * sum(nodes), nodes[-1], details)

    def plan(self, nfe_budget, num_steps, num_segments=None) -> Plan:
        """The tree this run grows, for ``num_steps`` = segments x steps per segment."""
        S, branch, prune = self._shape(num_segments)
        if num_steps % S:
            raise ParameterError(f"num_steps: {num_steps} steps do not split into {S} segments")
        T = num_steps // S
        if self.roots is None:
            need_budget("TreeOfFrames(roots=None)", "roots", nfe_budget)
            roots = 0
            while self._tree(roots + 1, S, T, branch, prune).nfe <= nfe_budget:
                roots += 1
            if roots == 0:
                raise ParameterError(f"nfe_budget: {nfe_budget} NFE is less than one root's tree "
                                     f"({self._tree(1, S, T, branch, prune).nfe} NFE)")
        else:
            roots = self.roots
        tree = self._tree(roots, S, T, branch, prune)
        if nfe_budget is not None and tree.nfe > nfe_budget:
            raise ParameterError(f"nfe_budget: this tree (roots={roots}, nodes per depth {tree.nodes}) needs "
                                 f"{tree.nfe} NFE at {T} steps per segment, more than nfe_budget={nfe_budget}")
        return tree

    # -- running -----------------------------------------------------------------
    def select(self, rewards: np.ndarray) -> list[int]:
        """Indices (in their original order) of the children a pruning keeps."""
        order = sorted(range(len(rewards)), key=lambda k: (-float(rewards[k]), k))
        return sorted(order[:self.kept(len(rewards))])

    def run(self, run) -> None:
        tree = run.plan
        S, T = tree["num_segments"], tree["steps_per_segment"]
        pop = run.initial(tree["roots"])
        for d in range(S):
            b = tree["branch_factors"][d]
            if b > 1:  # every kept node gets b children, each continuing with its own noise
                pop = run.branch(pop, [k for k in range(len(pop)) for _ in range(b)], "segment", step=d * T)
            pop, _ = run.rollout(pop, end=(d + 1) * T)
            if d == S - 1:
                run.evaluate(pop, generation=d, step=d * T)
            elif d in tree["prune_at"]:
                rewards = run.score_prefix(pop, d + 1)
                run.log_preview(rewards, step=(d + 1) * T, generation=d, depth=d)
                pop = pop.select(self.select(rewards))
