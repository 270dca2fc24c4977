"""The shapes world's exact judge: a program that reads a scene the way a person would.

It is no network and shares nothing with the generator or the learned reward, so search
cannot have optimised it. Per image:

1. **Foreground**: pixels whose brightest channel exceeds ``foreground_threshold``
   (the background is near-black).
2. **Segmentation by colour**: each foreground pixel takes the palette colour nearest in
   *chromaticity* (RGB divided by its brightest channel), which splits touching objects of
   different colours; pixels farther than ``color_tolerance`` from every palette colour are
   unexplained.
3. **Objects**: connected components (8-neighbourhood) of each colour. Small fringes
   touching a larger object of another colour (colour bleeding at edges) belong to it;
   any other component smaller than ``min_area`` is an unexplained blob. A component that
   reads as no clean shape, is not convex (its area under ``max_solidity`` of its convex
   hull's), and splits (a watershed on its distance transform from two seeds, or a straight cut
   across its long axis) into two clean shapes is two touching objects of one colour.
4. **Colour name**, from the mean RGB of the object's core (pixels at least 80% as bright as
   its brightest) in HSV: ``"other"`` when its brightness (max channel) is under
   ``min_brightness`` (grey, maroon); white when saturation <= ``white_max_saturation``;
   otherwise a palette colour when saturation >= ``min_saturation`` and the hue lies in that
   colour's band (:data:`HUE_BANDS`, degrees); anything else (orange, pink, magenta, lavender,
   yellow-green, grey...) is ``"other"``, which matches no named colour.
5. **Shape**, from the coverage (brightness turned into the fraction of each pixel covered):
   templates of each shape drawn as the renderer draws them, of the object's area and centroid,
   give a fit (overlap, 1 = identical). A triangle fits its template best; between circle and
   square the fits and the corners decide together: square when ``fit_square - fit_circle +
   diagonal_weight (diagonal_ratio - 1.16) > square_bias`` (``diagonal_ratio``: how much
   further the object reaches along the diagonals than along the axes; 1 for a disc, sqrt(2)
   for a square). The shape read must also pass its own checks: a fit of at least
   ``min_fit[shape]``; for circles and squares an elongation (sqrt of the ratio of the
   second-moment eigenvalues) of at most ``max_elongation``; a circle reaches about as far
   along the diagonals as along the axes (``diagonal_ratio`` at least ``circle_min_diagonal``,
   which rejects diamonds and stars), a square clearly further (at least
   ``square_min_diagonal``). Otherwise it is a "blob".
6. **Positions**: GenEval's rule (:func:`~.render.box_relations`) on the objects' bounding boxes
   (sub-pixel, from coverage): centres offset by more than a margin of 0.1 x the two boxes'
   summed size per axis, and that axis holding more than half of the offset's length.

``valid``: a clean scene — 1 to 4 objects, each of plausible size and shape, and nearly
no unexplained pixels. ``correct``: valid, and exactly the objects the prompt names
(shapes, and colours where named), in the named relation.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from itertools import permutations
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

from .grammar import PALETTE, SHAPES, SceneSpec, parse_prompt
from .render import PlacedObject, box_relations, object_mask

_PALETTE_NAMES = tuple(PALETTE)
_PALETTE = np.asarray([PALETTE[c] for c in _PALETTE_NAMES], dtype=np.float64) / 255.0
_CHROMA = _PALETTE / _PALETTE.max(axis=1, keepdims=True)
_EIGHT = np.ones((3, 3), dtype=bool)
#: hue band (degrees, low, high; red wraps through 0) of each chromatic palette colour
HUE_BANDS = {"red": (342.0, 18.0), "yellow": (40.0, 68.0), "green": (95.0, 160.0), "blue": (200.0, 248.0),
             "purple": (258.0, 297.0)}


@dataclass(frozen=True)
class FoundObject:
    """An object the judge found: shape, colour, centroid (x, y), area in pixels, bounding box
    ``(x0, y0, x1, y1)`` in pixels, and the geometry it read the shape from."""

    shape: str
    color: str
    x: float
    y: float
    area: float
    scores: dict
    problem: str | None = None
    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def to_dict(self) -> dict:
        d = {"shape": self.shape, "color": self.color, "x": round(self.x, 2), "y": round(self.y, 2),
             "area": round(self.area, 1), "box": [round(v, 2) for v in self.box],
             "scores": {k: round(v, 3) for k, v in self.scores.items()}}
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
                 max_area: float = 400.0, max_unexplained: int = 6, relation_margin: float = 0.1,
                 split_tolerance: float = 0.2, max_aspect: float = 1.45, max_elongation: float = 1.25,
                 min_fit: dict | None = None, circle_min_diagonal: float = 0.83, square_min_diagonal: float = 1.1,
                 white_max_saturation: float = 0.16, min_saturation: float = 0.45, diagonal_weight: float = 0.25,
                 square_bias: float = -0.005, max_solidity: float = 0.95,
                 min_brightness: float = 0.55):
        self.foreground_threshold = foreground_threshold
        self.color_tolerance = color_tolerance
        self.min_area = min_area
        self.max_area = max_area
        self.max_unexplained = max_unexplained
        self.relation_margin = relation_margin
        self.split_tolerance = split_tolerance
        self.max_aspect = max_aspect
        self.max_elongation = max_elongation
        self.min_fit = {"circle": 0.9, "square": 0.88, "triangle": 0.85, **(min_fit or {})}
        self.circle_min_diagonal = circle_min_diagonal
        self.square_min_diagonal = square_min_diagonal
        self.white_max_saturation = white_max_saturation
        self.min_saturation = min_saturation
        self.diagonal_weight = diagonal_weight
        self.square_bias = square_bias
        self.max_solidity = max_solidity
        self.min_brightness = min_brightness

    # -- reading a scene -----------------------------------------------------------------
    def read(self, image: np.ndarray) -> tuple[list[FoundObject], int]:
        """(objects found, unexplained pixels) in one (H, W, 3) float image in [0, 1].

        Connected foreground regions are objects; a region is split by colour only where it holds
        two or more parts, each at least ``min_area`` pixels and each, on average, within
        ``split_tolerance`` of its palette colour (touching objects); otherwise it is one object
        (edges blended with a neighbour's colour, a tint). A part that reads as no clean shape is
        split in two along its distance transform when both halves read as clean shapes."""
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
                color = self._color_name(img, bright, mask)
                cover = np.clip((bright - bg) / max(float(_PALETTE[k].max()) - bg, 1e-6), 0.0, 1.0)
                found = self._object(color, cover * mask, mask)
                if found.problem is not None:  # two touching objects of one colour? the cut they fit best
                    pairs = [[self._object(color, cover * h, h) for h in halves] for halves in self._split_touching(mask)]
                    pairs = [pair for pair in pairs if all(o.problem is None for o in pair)]
                    if pairs:
                        objects.extend(max(pairs, key=lambda pair: min(o.scores[o.shape] for o in pair)))
                        continue
                objects.append(found)
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

    def _split_touching(self, mask: np.ndarray) -> list[list[np.ndarray]]:
        """Ways to cut ``mask`` in two (each a pair of masks): a watershed on its distance transform,
        seeded at its two strongest distance peaks, one seeded at +-1 std along its long axis, and
        straight cuts across the long axis within 3 pixels of the centre (objects touching along a side).
        No cut for a convex mask (area at least ``max_solidity`` of its convex hull's)."""
        if mask.sum() < 2 * self.min_area:
            return []
        ys, xs = np.nonzero(mask)
        corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
        if mask.sum() >= self.max_solidity * ConvexHull(corners).volume:
            return []  # convex (a rectangle, a blob without a neck): no sign of two objects
        edt = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        seed_pairs = []
        peaks = (edt == ndimage.maximum_filter(edt, size=3)) & mask & (edt >= 1.5)
        lab, n = ndimage.label(peaks, structure=_EIGHT)
        if n >= 2:
            top = ndimage.maximum(edt, lab, index=np.arange(1, n + 1))
            order = np.argsort(top)[::-1][:2] + 1
            seed_pairs.append([tuple(int(round(v)) for v in ndimage.center_of_mass(lab == o)) for o in order])
        p = np.argwhere(mask).astype(np.float64)
        mean = p.mean(0)
        w, v = np.linalg.eigh(np.cov((p - mean).T))
        step = np.sqrt(w[-1]) * v[:, -1]
        seed_pairs.append([tuple(int(round(c)) for c in mean + sgn * step) for sgn in (-1, 1)])
        cuts = []
        along = (p - mean) @ v[:, -1]
        for shift in range(-3, 4):
            side = along < shift
            halves = [np.zeros_like(mask), np.zeros_like(mask)]
            for h, sel in zip(halves, (side, ~side)):
                h[p[sel, 0].astype(int), p[sel, 1].astype(int)] = True
            if all(h.sum() >= self.min_area for h in halves):
                cuts.append(halves)
        for seeds in seed_pairs:
            owner = self._flood(mask, edt, seeds)
            if owner is not None:
                halves = [mask & (owner == i) for i in (1, 2)]
                if all(h.sum() >= self.min_area for h in halves):
                    cuts.append(halves)
        return cuts

    @staticmethod
    def _flood(mask: np.ndarray, edt: np.ndarray, seeds) -> np.ndarray | None:
        """Watershed: owner (1 or 2) of each pixel of ``mask``, flooded from ``seeds`` deepest first
        (the cut falls on the neck); None when a seed lies outside the mask."""
        owner = np.zeros(mask.shape, dtype=np.int8)
        heap = []
        for i, (y, x) in enumerate(seeds, start=1):
            if not (0 <= y < mask.shape[0] and 0 <= x < mask.shape[1]) or not mask[y, x] or owner[y, x]:
                return None
            owner[y, x] = i
            heapq.heappush(heap, (-edt[y, x], len(heap), y, x))
        count = len(heap)
        while heap:
            _, _, y, x = heapq.heappop(heap)
            for ny in range(max(y - 1, 0), min(y + 2, mask.shape[0])):
                for nx in range(max(x - 1, 0), min(x + 2, mask.shape[1])):
                    if mask[ny, nx] and not owner[ny, nx]:
                        owner[ny, nx] = owner[y, x]
                        count += 1
                        heapq.heappush(heap, (-edt[ny, nx], count, ny, nx))
        return owner

    def _color_name(self, img: np.ndarray, bright: np.ndarray, mask: np.ndarray) -> str:
        """The palette name of the object's core colour (module docstring, step 4), or ``"other"``."""
        core = mask & (bright >= 0.8 * bright[mask].max())
        r, g, b = img[core].mean(0)
        hi, lo = max(r, g, b), min(r, g, b)
        saturation = (hi - lo) / max(hi, 1e-6)
        if hi < self.min_brightness:
            return "other"  # grey, maroon, olive...: too dark for any palette colour
        if saturation <= self.white_max_saturation:
            return "white"
        if saturation < self.min_saturation:
            return "other"
        if hi == r:
            hue = (60.0 * (g - b) / (hi - lo)) % 360.0
        elif hi == g:
            hue = 60.0 * (2.0 + (b - r) / (hi - lo))
        else:
            hue = 60.0 * (4.0 + (r - g) / (hi - lo))
        for name, (low, high) in HUE_BANDS.items():
            if (low <= hue <= high) if low <= high else (hue >= low or hue <= high):
                return name
        return "other"

    def _object(self, color: str, cover: np.ndarray, mask: np.ndarray) -> FoundObject:
        area = float(cover.sum())
        h, w = cover.shape
        gy, gx = np.mgrid[0:h, 0:w] + 0.5
        cx, cy = float((gx * cover).sum() / area), float((gy * cover).sum() / area)
        ys, xs = np.nonzero(mask)
        aspect = (np.ptp(xs) + 1) / (np.ptp(ys) + 1)
        sxx = float(((gx - cx) ** 2 * cover).sum() / area)
        syy = float(((gy - cy) ** 2 * cover).sum() / area)
        sxy = float(((gx - cx) * (gy - cy) * cover).sum() / area)
        ev = np.linalg.eigvalsh(np.array([[sxx, sxy], [sxy, syy]]))
        elongation = float(np.sqrt(ev[1] / max(ev[0], 1e-9)))
        scores = {shape: self._template_match(shape, cover, cx, cy, area) for shape in SHAPES}
        ratio = self._diagonal_ratio(xs, ys)
        if scores["triangle"] >= max(scores["circle"], scores["square"]):
            shape = "triangle"
        else:  # both fits and the corners tell (a square reaches sqrt(2) further along its diagonals)
            lean = scores["square"] - scores["circle"] + self.diagonal_weight * (ratio - 1.16)
            shape = "square" if lean > self.square_bias else "circle"
        problem = None
        if area < self.min_area:
            problem = "too small"
        elif area > self.max_area:
            problem = "too large"
        elif not 1 / self.max_aspect <= aspect <= self.max_aspect:
            problem = "elongated"
        elif scores[shape] < self.min_fit[shape]:
            problem = f"no clear shape (closest: {shape} {scores[shape]:.2f})"
        elif shape != "triangle" and elongation > self.max_elongation:
            problem = f"no clear shape (a {shape} elongated {elongation:.2f}:1)"
        elif shape == "circle" and ratio < self.circle_min_diagonal:
            problem = f"no clear shape (a circle with corners on its axes, diagonal ratio {ratio:.2f})"
        elif shape == "square" and ratio < self.square_min_diagonal:
            problem = f"no clear shape (a square without corners, diagonal ratio {ratio:.2f})"
        scores = {**scores, "diagonal_ratio": ratio, "elongation": elongation}
        return FoundObject("blob" if problem and problem.startswith("no clear") else shape, color, cx, cy, area,
                           scores, problem, self._box(cover))

    @staticmethod
    def _box(cover: np.ndarray) -> tuple[float, float, float, float]:
        """Sub-pixel bounding box (x0, y0, x1, y1) from coverage: the edge rows and columns count by
        how much of them is covered."""
        def span(profile: np.ndarray) -> tuple[float, float]:
            idx = np.nonzero(profile > 0)[0]
            lo, hi = int(idx[0]), int(idx[-1])
            return lo + 1.0 - float(profile[lo]), hi + float(profile[hi])

        x0, x1 = span(cover.max(axis=0))
        y0, y1 = span(cover.max(axis=1))
        return x0, y0, x1, y1

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
        # drawn in a window around the centroid that holds every template (the same pixels as the full
        # image, 2-3x faster); the object's mass outside the window counts as mismatch
        n = cover.shape[0]
        w = int(np.ceil(0.81 * size)) + 2
        x0, y0 = int(np.floor(cx)) - w, int(np.floor(cy)) - w
        crop = np.zeros((2 * w + 1, 2 * w + 1))
        inside = np.zeros_like(crop)
        ya, yb, xa, xb = max(y0, 0), min(y0 + 2 * w + 1, n), max(x0, 0), min(x0 + 2 * w + 1, n)
        crop[ya - y0:yb - y0, xa - x0:xb - x0] = cover[ya:yb, xa:xb]
        inside[ya - y0:yb - y0, xa - x0:xb - x0] = 1.0
        total = float(cover.sum())
        outside = total - float(crop.sum())
        best = 0.0
        for f in (0.92, 1.0, 1.08):
            t = object_mask(PlacedObject(shape, "white", cx - x0, cy - y0 - dy0 * f, size * f), 2 * w + 1) * inside
            best = max(best, 1.0 - (float(np.abs(crop - t).sum()) + outside) / (total + float(t.sum())))
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
            if spec.relation is None or spec.relation in box_relations(found[0].box, found[1].box, self.relation_margin):
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
