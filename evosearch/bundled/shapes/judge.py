"""The shapes world's exact judge: a program that reads a scene the way a person would.

It is no network and shares nothing with the generator or the learned reward, so search
cannot have optimised it. Per image:

1. **Foreground**: pixels whose brightest channel exceeds ``foreground_threshold``
   (the background is near-black).
2. **Colour**: each foreground pixel takes the palette colour nearest in *chromaticity*
   (RGB divided by its brightest channel), so that darkened anti-aliased edges and
   off-palette tints (white drawn lavender, red drawn a little orange) read as a person
   would read them; pixels farther than ``color_tolerance`` from every palette colour
   are unexplained.
3. **Objects**: connected components (8-neighbourhood) of each colour. Small fringes
   touching a larger object of another colour (colour bleeding at edges) belong to it;
   any other component smaller than ``min_area`` is an unexplained blob.
4. **Shape**, from geometry of the component's coverage: fill of its bounding box
   (square ~1, circle ~0.79, triangle ~0.5), fill of the bounding box's corners
   (square ~1, circle ~0.4, upright triangle: only the bottom corners) and the share of
   the area in the lower half (triangle ~0.75, others ~0.5).
5. **Positions** from coverage-weighted centroids: "A left of B" holds when B's centroid
   is at least ``relation_min_shift`` pixels to the right of A's and the horizontal
   offset is at least ``relation_dominance`` times the vertical one.

``valid``: a clean scene — 1 to 4 objects, each of plausible size and shape, and nearly
no unexplained pixels. ``correct``: valid, and exactly the objects the prompt names
(shapes, and colours where named), in the named relation.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations
from typing import Sequence

import numpy as np
from scipy import ndimage

from .grammar import PALETTE, SHAPES, SceneSpec, parse_prompt
from .render import PlacedObject, object_mask, relation_holds

_PALETTE_NAMES = tuple(PALETTE)
_PALETTE = np.asarray([PALETTE[c] for c in _PALETTE_NAMES], dtype=np.float64) / 255.0
_CHROMA = _PALETTE / _PALETTE.max(axis=1, keepdims=True)
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class FoundObject:
    """An object the judge found: shape, colour, centroid (x, y) and area in pixels, and the
    geometry it read the shape from."""

    shape: str
    color: str
    x: float
    y: float
    area: float
    scores: dict
    problem: str | None = None

    def to_dict(self) -> dict:
        d = {"shape": self.shape, "color": self.color, "x": round(self.x, 2), "y": round(self.y, 2),
             "area": round(self.area, 1), "scores": {k: round(v, 3) for k, v in self.scores.items()}}
        if self.problem:
            d["problem"] = self.problem
        return d


class Judge:
    """Exact judge of the shapes world. ``judge(images, prompts)`` -> one dict per image with
    ``correct`` (bool), ``valid`` (bool), ``category`` (str), ``objects`` (what it found),
    ``reason`` (why not correct; None when correct).

    ``images``: a tensor (N, 3, H, W) in [0, 1], a numpy array (N, H, W, 3) or a list of PIL images.
    ``prompts``: one prompt, or one per image (a ValueError for prompts outside the grammar).
    """

    def __init__(self, foreground_threshold: float = 0.35, color_tolerance: float = 0.45, min_area: float = 12.0,
                 max_area: float = 400.0, max_unexplained: int = 6, relation_min_shift: float = 3.0,
                 relation_dominance: float = 0.5, min_shape_score: float = 0.8, split_tolerance: float = 0.2,
                 square_ratio: float = 1.16, max_aspect: float = 1.45):
        self.foreground_threshold = foreground_threshold
        self.color_tolerance = color_tolerance
        self.min_area = min_area
        self.max_area = max_area
        self.max_unexplained = max_unexplained
        self.relation_min_shift = relation_min_shift
        self.relation_dominance = relation_dominance
        self.min_shape_score = min_shape_score
        self.split_tolerance = split_tolerance
        self.square_ratio = square_ratio
        self.max_aspect = max_aspect

    # -- reading a scene -----------------------------------------------------------------
    def read(self, image: np.ndarray) -> tuple[list[FoundObject], int]:
        """(objects found, unexplained pixels) in one (H, W, 3) float image in [0, 1].

        Connected foreground regions are objects; a region is split by colour only where it holds
        two or more parts, each at least ``min_area`` pixels and each, on average, within
        ``split_tolerance`` of its palette colour (touching objects); otherwise it is one object of
        the palette colour nearest its mean chromaticity (edges blended with a neighbour's colour,
        a tint, a drift between two palette colours)."""
        img = np.asarray(image, dtype=np.float64)
        bright = img.max(axis=2)
        fg = bright > self.foreground_threshold
        chroma = img / np.maximum(bright, 1e-6)[..., None]
        dist = np.linalg.norm(chroma[:, :, None, :] - _CHROMA[None, None], axis=-1)  # (H, W, K)
        nearest = dist.argmin(axis=2)
        bg = float(np.median(bright[~fg])) if (~fg).any() else 0.0  # to turn brightness into coverage
        regions, n = ndimage.label(fg, structure=_EIGHT)
        objects, unexplained = [], 0
        for j in range(1, n + 1):
            region = regions == j
            if region.sum() < self.min_area:
                unexplained += int(region.sum())  # a speck: no object a person would name
                continue
            for k, mask in self._split(region, nearest, chroma):
                if dist[..., k][mask].mean() > self.color_tolerance:  # per pixel, far from every colour
                    unexplained += int(mask.sum())
                    continue
                cover = np.clip((bright - bg) / max(float(_PALETTE[k].max()) - bg, 1e-6), 0.0, 1.0) * mask
                objects.append(self._object(_PALETTE_NAMES[k], cover, mask))
        return objects, unexplained

    def _split(self, region: np.ndarray, nearest: np.ndarray, chroma: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """[(palette index, mask)] of the objects in one connected foreground region."""
        parts = []
        for k in np.unique(nearest[region]):
            lab, n = ndimage.label(region & (nearest == k), structure=_EIGHT)
            for j in range(1, n + 1):
                m = lab == j
                if m.sum() >= self.min_area and np.linalg.norm(chroma[m].mean(0) - _CHROMA[k]) <= self.split_tolerance:
                    parts.append((int(k), m))
        if len(parts) >= 2:  # touching objects: every pixel goes to the nearest clean part
            seeds = np.zeros(region.shape, dtype=np.int32)
            for i, (_, m) in enumerate(parts, start=1):
                seeds[m] = i
            _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
            owner = seeds[iy, ix]
            return [(k, region & (owner == i)) for i, (k, _) in enumerate(parts, start=1)]
        mean = chroma[region].mean(0)
        return [(int(np.linalg.norm(_CHROMA - mean, axis=1).argmin()), region)]

    def _object(self, color: str, cover: np.ndarray, mask: np.ndarray) -> FoundObject:
        area = float(cover.sum())
        h, w = cover.shape
        gy, gx = np.mgrid[0:h, 0:w] + 0.5
        cx, cy = float((gx * cover).sum() / area), float((gy * cover).sum() / area)
        ys, xs = np.nonzero(mask)
        aspect = (np.ptp(xs) + 1) / (np.ptp(ys) + 1)
        scores = {shape: self._template_match(shape, cover, cx, cy, area) for shape in SHAPES}
        ratio = self._diagonal_ratio(xs, ys)
        if scores["triangle"] >= max(scores["circle"], scores["square"]):
            shape = "triangle"
        else:  # circle or square: the corners tell (a square reaches sqrt(2) further along its diagonals)
            shape = "square" if ratio >= self.square_ratio else "circle"
        problem = None
        if area < self.min_area:
            problem = "too small"
        elif area > self.max_area:
            problem = "too large"
        elif not 1 / self.max_aspect <= aspect <= self.max_aspect:
            problem = "elongated"
        elif max(scores.values()) < self.min_shape_score:
            problem = f"no clear shape (closest: {max(scores, key=scores.get)} {max(scores.values()):.2f})"
        return FoundObject("blob" if problem and problem.startswith("no clear") else shape, color, cx, cy, area,
                           {**scores, "diagonal_ratio": ratio}, problem)

    @staticmethod
    def _diagonal_ratio(xs: np.ndarray, ys: np.ndarray) -> float:
        """How much further the region reaches along the diagonals than along the axes (from its
        centre): 1.0 for a disc, sqrt(2) for an axis-aligned square."""
        p = np.stack([xs - xs.mean(), ys - ys.mean()], 1).astype(np.float64)
        reach = lambda u: float((p @ u).max()) + 0.5  # noqa: E731  (pixel centres: +half a pixel)
        axis = np.mean([reach(np.array(u, dtype=np.float64)) for u in ((1, 0), (-1, 0), (0, 1), (0, -1))])
        diag = np.mean([reach(np.array(u) / np.sqrt(2)) for u in ((1, 1), (-1, 1), (1, -1), (-1, -1))])
        return float(diag / axis)

    @staticmethod
    def _template_match(shape: str, cover: np.ndarray, cx: float, cy: float, area: float) -> float:
        """Overlap (1 - L1 / total mass) between ``cover`` and the best ideal ``shape`` of the same area
        and centroid, drawn as the renderer draws (sizes within +-8%)."""
        size = {"circle": 2 * np.sqrt(area / np.pi), "square": np.sqrt(area) / 0.9, "triangle": np.sqrt(2 * area)}[shape]
        dy0 = size / 6 if shape == "triangle" else 0.0  # a triangle's centroid lies h/3 below its box centre
        best = 0.0
        for f in (0.92, 1.0, 1.08):
            t = object_mask(PlacedObject(shape, "white", cx, cy - dy0 * f, size * f), cover.shape[0])
            best = max(best, 1.0 - float(np.abs(cover - t).sum() / (cover.sum() + t.sum())))
        return best

    # -- verdicts ------------------------------------------------------------------------
    def verdict(self, image: np.ndarray, spec: SceneSpec) -> dict:
        objects, unexplained = self.read(image)
        problems = [f"{o.color} {o.shape}: {o.problem}" for o in objects if o.problem]
        if unexplained > self.max_unexplained:
            problems.append(f"{unexplained} unexplained pixels")
        if not objects:
            problems.append("no object")
        elif len(objects) > 4:
            problems.append(f"{len(objects)} objects (at most 4)")
        valid = not problems
        reason = "; ".join(problems) if problems else self._mismatch(objects, spec)
        return {"correct": valid and reason is None, "valid": valid, "category": spec.category,
                "objects": [o.to_dict() for o in objects], "reason": reason}

    def _mismatch(self, objects: Sequence[FoundObject], spec: SceneSpec) -> str | None:
        """None when the objects are exactly the spec's, else what differs."""
        want = spec.objects
        if len(objects) != len(want):
            return f"{len(objects)} objects, the prompt asks for {len(want)}"
        relation_error = None
        for order in permutations(range(len(objects))):
            found = [objects[j] for j in order]
            if not all(f.shape == w.shape and (w.color is None or f.color == w.color) for f, w in zip(found, want)):
                continue
            if spec.relation is None or relation_holds(spec.relation, (found[0].x, found[0].y), (found[1].x, found[1].y),
                                                       self.relation_min_shift, self.relation_dominance):
                return None
            relation_error = f"{found[0].color} {found[0].shape} is not {spec.relation} {found[1].color} {found[1].shape}"
        if relation_error is not None:
            return relation_error
        seen = ", ".join(f"{o.color} {o.shape}" for o in objects)
        return f"found {seen}"

    def __call__(self, images, prompts) -> list[dict]:
        from ...rewards.base import broadcast_prompts, to_tensor_images

        x = to_tensor_images(images).permute(0, 2, 3, 1).numpy()
        texts = broadcast_prompts(prompts, len(x))
        specs = [parse_prompt(p) for p in texts]
        return [self.verdict(img, spec) for img, spec in zip(x, specs)]

    @staticmethod
    def accuracy(verdicts: Sequence[dict], key: str = "correct") -> float:
        """Fraction of verdicts with ``key`` true."""
        return float(np.mean([bool(v[key]) for v in verdicts])) if verdicts else float("nan")
