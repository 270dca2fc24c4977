"""The shapes world's procedural renderer: a scene that satisfies a prompt, for any seed.

Scenes are 32x32 RGB: a dark background (a random shade of near-black) and 1-4 filled
objects (circle, upright triangle, axis-aligned square; 5 only as a reward-training negative,
one more than "four") in palette colours with small
colour jitter, random sizes and positions, never touching (a gap of at least 2 pixels),
anti-aliased by 4x supersampling. Unspecified attributes of a prompt (a colour it does
not name) are drawn at random, so ``render(prompt, seed)`` over seeds covers everything
the prompt allows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .grammar import COLORS, PALETTE, SceneSpec, parse_prompt

IMAGE_SIZE = 32
SUPERSAMPLE = 4
MIN_GAP = 2.0          # pixels between object bounding boxes
#: object size (bounding-box side, pixels) by the number of objects in the scene
SIZE_RANGE = {1: (10, 15), 2: (8, 12), 3: (7, 10), 4: (7, 9), 5: (6, 8)}
#: a relation is drawn with its main displacement at least this many pixels and at least
#: twice the cross displacement, so it reads unambiguously
RELATION_MIN_SHIFT = 6.0


@dataclass(frozen=True)
class PlacedObject:
    """An object as drawn: shape, colour name, centre (x, y) and bounding-box side, in pixels."""

    shape: str
    color: str
    cx: float
    cy: float
    size: float


def relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float], min_shift: float,
                   dominance: float) -> bool:
    """Whether centre ``a`` is ``relation`` of centre ``b`` (image y grows downwards): the main
    displacement is at least ``min_shift`` pixels and ``dominance`` times the cross one. The renderer
    draws relations by this rule (6 pixels, twice the cross displacement), stricter than the judge's
    :func:`box_relations`, so every drawn relation also holds there, with a margin."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    main, cross = {"left of": (dx, dy), "right of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[relation]
    return main >= min_shift and main >= dominance * abs(cross)


def box_relations(box_a: tuple[float, float, float, float], box_b: tuple[float, float, float, float],
                  margin: float = 0.1) -> set[str]:
    """GenEval's relation rule: the relations of box ``a`` to box ``b`` (boxes ``(x0, y0, x1, y1)``
    in pixels, image y grows downwards). With centres ``c`` (box means), sizes ``d`` (width, height),
    ``offset = c_a - c_b`` and ``revised = max(|offset| - margin (d_a + d_b), 0) sign(offset)`` per
    axis: no relation if every ``|revised| < 1e-3``; else ``(dx, dy) = revised / |offset|`` and
    "left of" if dx < -0.5, "right of" if dx > 0.5, "above" if dy < -0.5, "below" if dy > 0.5
    (two may hold at once, on a diagonal)."""
    a, b = np.asarray(box_a, dtype=np.float64), np.asarray(box_b, dtype=np.float64)
    offset = (a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2
    dims = (a[2:] - a[:2]) + (b[2:] - b[:2])
    revised = np.maximum(np.abs(offset) - margin * dims, 0.0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    return {r for r, holds in (("left of", dx < -0.5), ("right of", dx > 0.5), ("above", dy < -0.5),
                               ("below", dy > 0.5)) if holds}


def placed_box(obj: "PlacedObject") -> tuple[float, float, float, float]:
    """The drawn bounding box ``(x0, y0, x1, y1)`` of an object, in pixels."""
    h = obj.size / 2 * (0.9 if obj.shape == "square" else 1.0)
    return obj.cx - h, obj.cy - h, obj.cx + h, obj.cy + h


def layout(spec: SceneSpec, rng: np.random.Generator, size: int = IMAGE_SIZE) -> list[PlacedObject]:
    """Random non-overlapping placements of the spec's objects (rejection sampling)."""
    n = len(spec.objects)
    lo, hi = SIZE_RANGE[n]
    colors = [o.color or COLORS[rng.integers(len(COLORS))] for o in spec.objects]
    for _ in range(10000):
        sizes = rng.uniform(lo, hi, size=n)
        centres = [(rng.uniform(1 + s / 2, size - 1 - s / 2), rng.uniform(1 + s / 2, size - 1 - s / 2)) for s in sizes]
        ok = all(max(abs(centres[i][0] - centres[j][0]) - (sizes[i] + sizes[j]) / 2,
                     abs(centres[i][1] - centres[j][1]) - (sizes[i] + sizes[j]) / 2) >= MIN_GAP
                 for i in range(n) for j in range(i))
        if ok and spec.relation is not None:
            ok = relation_holds(spec.relation, centres[0], centres[1], RELATION_MIN_SHIFT, 2.0)
        if ok:
            return [PlacedObject(o.shape, c, float(x), float(y), float(s))
                    for o, c, (x, y), s in zip(spec.objects, colors, centres, sizes)]
    raise RuntimeError(f"layout: no placement found for {spec}")  # cannot happen with SIZE_RANGE as set


def object_mask(obj: PlacedObject, size: int = IMAGE_SIZE, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Coverage (size, size) in [0, 1] of one object (area-averaged supersampled mask)."""
    n = size * supersample
    c = (np.arange(n) + 0.5) / supersample
    x, y = np.meshgrid(c, c)
    h = obj.size / 2
    dx, dy = x - obj.cx, y - obj.cy
    if obj.shape == "circle":
        m = dx * dx + dy * dy <= h * h
    elif obj.shape == "square":
        m = (np.abs(dx) <= h * 0.9) & (np.abs(dy) <= h * 0.9)  # 0.9: a square's area near a circle's
    elif obj.shape == "triangle":  # upright isosceles: apex at the top, base at the bottom
        t = (dy + h) / (2 * h)  # 0 at the apex, 1 at the base
        m = (t >= 0) & (t <= 1) & (np.abs(dx) <= t * h)
    else:
        raise ValueError(f"shape: expected circle, square or triangle, got {obj.shape!r}")
    return m.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


def draw(objects: list[PlacedObject], rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """The scene as float32 (size, size, 3) in [0, 1]."""
    background = rng.uniform(0.02, 0.12)
    img = np.full((size, size, 3), background, dtype=np.float32)
    for obj in objects:
        rgb = np.asarray(PALETTE[obj.color], dtype=np.float32) / 255.0
        rgb = np.clip(rgb + rng.uniform(-0.04, 0.04, size=3), 0.0, 1.0)
        cover = object_mask(obj, size)[..., None]
        img = img * (1 - cover) + rgb * cover
    return img.astype(np.float32)


def render_array(prompt: str | SceneSpec, seed: int = 0, size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[PlacedObject]]:
    """(image float32 (size, size, 3) in [0, 1], the placed objects) for a prompt and seed."""
    spec = prompt if isinstance(prompt, SceneSpec) else parse_prompt(prompt)
    rng = np.random.default_rng(seed)
    objects = layout(spec, rng, size)
    return draw(objects, rng, size), objects


def render(prompt: str, seed: int = 0) -> Image.Image:
    """A 32x32 RGB PIL image that satisfies ``prompt`` (a ValueError for prompts outside the grammar)."""
    img, _ = render_array(prompt, seed)
    return Image.fromarray((img * 255).round().astype(np.uint8))
