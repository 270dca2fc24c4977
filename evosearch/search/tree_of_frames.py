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

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from .context import SearchContext, apply_events
from .lineage import Lineage

KEEP_MODES = ("median",)


@dataclass(frozen=True)
class TreePlan:
    """What a Tree-of-Frames run will do: nodes generated and kept at each depth, and its NFE."""

    roots: int
    num_segments: int
    steps_per_segment: int
    branch_factors: list[int]  # per depth 0..S-1 (depth 0: 1, the roots are the first generation)
    prune_at: list[int]
    nodes: list[int]
    kept: list[int]
    nfe: int
    reward_calls: int

    def to_dict(self) -> dict:
        return asdict(self)


class TreeOfFrames:
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

    name = "tree-of-frames"
    uses_segments = True

    def __init__(self, roots: int | None = 5, branch_factors: int | Sequence[int] = 2,
                 prune_at: Sequence[int] | None = None, keep: str | int = "median"):
        if roots is not None and (not isinstance(roots, (int, np.integer)) or isinstance(roots, bool) or roots < 1):
            raise ValueError(f"roots: must be a positive integer or None (as many as nfe_budget allows), got {roots!r}")
        if isinstance(branch_factors, (int, np.integer)) and not isinstance(branch_factors, bool):
            if branch_factors < 1:
                raise ValueError(f"branch_factors: must be >= 1, got {branch_factors}")
            branch_factors = int(branch_factors)
        else:
            try:
                branch_factors = [int(b) for b in branch_factors]
            except TypeError:
                raise ValueError(f"branch_factors: expected an int or a list of ints (one per depth 1..S-1), "
                                 f"got {branch_factors!r}") from None
            if any(b < 1 for b in branch_factors):
                raise ValueError(f"branch_factors: every factor must be >= 1, got {branch_factors}")
        if prune_at is not None:
            prune_at = sorted({int(d) for d in prune_at})
            if any(d < 0 for d in prune_at):
                raise ValueError(f"prune_at: depths must be >= 0, got {prune_at}")
        top_k = isinstance(keep, (int, np.integer)) and not isinstance(keep, bool) and keep >= 1
        if not (keep in KEEP_MODES or top_k):
            raise ValueError(f"keep: expected 'median' or a positive int (top-k), got {keep!r}")
        self.roots = None if roots is None else int(roots)
        self.branch_factors = branch_factors
        self.prune_at = prune_at
        self.keep = keep if keep in KEEP_MODES else int(keep)

    # -- planning ----------------------------------------------------------------
    def kept(self, n: int) -> int:
        """How many of n children a pruning keeps."""
        if self.keep == "median":
            return (n + 1) // 2
        return min(n, self.keep)

    def _shape(self, num_segments: int | None) -> tuple[int, list[int], list[int]]:
        if num_segments is None:
            if isinstance(self.branch_factors, int):
                raise ValueError("num_segments: TreeOfFrames needs a segment model (a SegmentStepper: the bundled "
                                 "moving-digits pipeline, a Wan image-to-video pipeline, ...) or a list of "
                                 "branch_factors (one per depth 1..S-1)")
            num_segments = len(self.branch_factors) + 1
        S = int(num_segments)
        if isinstance(self.branch_factors, int):
            branch = [1] + [self.branch_factors] * (S - 1)
        else:
            if len(self.branch_factors) != S - 1:
                raise ValueError(f"branch_factors: expected {S - 1} factors (one per depth 1..{S - 1} of a "
                                 f"{S}-segment video), got {len(self.branch_factors)}")
            branch = [1] + list(self.branch_factors)
        prune = list(range(S - 1)) if self.prune_at is None else list(self.prune_at)
        if any(d > S - 2 for d in prune):
            raise ValueError(f"prune_at: depths must be in [0, {S - 2}] for {S} segments (the last depth is "
                             f"scored whole and its best leaf wins), got {prune}")
        return S, branch, prune

    def _tree(self, roots: int, S: int, T: int, branch: list[int], prune: list[int]) -> TreePlan:
        nodes, kept = [], []
        n = roots
        for d in range(S):
            if d > 0:
                n = kept[-1] * branch[d]
            nodes.append(n)
            kept.append(self.kept(n) if d in prune else n)
        return TreePlan(roots=roots, num_segments=S, steps_per_segment=T, branch_factors=branch, prune_at=prune,
                        nodes=nodes, kept=kept, nfe=T * sum(nodes),
                        reward_calls=sum(nodes[d] for d in prune) + nodes[-1])

    def plan(self, nfe_budget: int | None, num_steps: int, num_segments: int | None = None) -> TreePlan:
        """The tree this run grows, for ``num_steps`` = segments x steps per segment."""
        S, branch, prune = self._shape(num_segments)
        if num_steps % S:
            raise ValueError(f"num_steps: {num_steps} steps do not split into {S} segments")
        T = num_steps // S
        if self.roots is None:
            if nfe_budget is None:
                raise ValueError("roots: TreeOfFrames(roots=None) needs an nfe_budget to size itself")
            roots = 0
            while self._tree(roots + 1, S, T, branch, prune).nfe <= nfe_budget:
                roots += 1
            if roots == 0:
                raise ValueError(f"nfe_budget: {nfe_budget} NFE is less than one root's tree "
                                 f"({self._tree(1, S, T, branch, prune).nfe} NFE)")
        else:
            roots = self.roots
        tree = self._tree(roots, S, T, branch, prune)
        if nfe_budget is not None and tree.nfe > nfe_budget:
            raise ValueError(f"nfe_budget: this tree (roots={roots}, nodes per depth {tree.nodes}) needs {tree.nfe} "
                             f"NFE at {T} steps per segment, more than nfe_budget={nfe_budget}")
        return tree

    def cost(self, nfe_budget: int | None, num_steps: int, num_segments: int | None = None) -> int:
        return self.plan(nfe_budget, num_steps, num_segments).nfe

    def config(self) -> dict:
        return {"method": self.name, "roots": self.roots, "branch_factors": self.branch_factors,
                "prune_at": self.prune_at, "keep": self.keep}

    # -- running -----------------------------------------------------------------
    def select(self, rewards: np.ndarray) -> list[int]:
        """Indices (in their original order) of the children a pruning keeps."""
        order = sorted(range(len(rewards)), key=lambda k: (-float(rewards[k]), k))
        return sorted(order[:self.kept(len(rewards))])

    def run(self, ctx: SearchContext) -> None:
        stepper = ctx.stepper
        if not hasattr(stepper, "steps_per_segment"):
            raise ValueError(f"method: TreeOfFrames needs a segment model (a SegmentStepper), "
                             f"got {type(stepper).__name__}")
        S, T = stepper.num_segments, stepper.steps_per_segment
        tree = self.plan(ctx.nfe_budget, ctx.num_steps, S)
        ctx.set_planned_nfe(tree.nfe)
        ctx.plan = tree.to_dict()

        lineages = [Lineage.init(s, ctx.request) for s in ctx.new_seeds(tree.roots)]
        states = apply_events(stepper, None, [lin.events[0] for lin in lineages])
        for d in range(S):
            if d > 0:  # branch: every kept node gets b children
                b = tree.branch_factors[d]
                parents = torch.arange(states.shape[0]).repeat_interleave(b)
                parent_states = states.index_select(0, parents.to(states.device))
                if b == 1:
                    states = parent_states
                else:
                    lineages = [lineages[int(p)].then("segment", d * T, ctx.new_seed()) for p in parents]
                    states = apply_events(stepper, parent_states, [lin.events[-1] for lin in lineages])
                ctx.emit({"type": "depth", "depth": d, "nodes": states.shape[0], "nfe": ctx.nfe})
            states, _ = ctx.rollout(states, lineages, start=d * T, end=(d + 1) * T)
            if d == S - 1:
                ctx.evaluate(states, lineages, generation=d, step=d * T)
            elif d in tree.prune_at:
                with ctx.timed("decode"):
                    partial = stepper.finish_prefix(states, d + 1)
                rewards = ctx.score_partial(partial, step=(d + 1) * T, generation=d, depth=d)
                keep = self.select(rewards)
                states = states.index_select(0, torch.as_tensor(keep, dtype=torch.long, device=states.device))
                lineages = [lineages[k] for k in keep]

    def __repr__(self) -> str:
        return (f"TreeOfFrames(roots={self.roots}, branch_factors={self.branch_factors}, prune_at={self.prune_at}, "
                f"keep={self.keep!r})")
