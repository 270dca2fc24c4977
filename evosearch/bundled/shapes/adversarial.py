"""Images a person would reject that a lax judge accepts: off-palette colours and near-shapes.

``adversarial_cases()`` draws each case programmatically (32x32, anti-aliased like the renderer)
at several sizes, positions and colours. Each case pairs an image with a prompt it must *not*
satisfy: an orange circle is no "yellow circle", a 45-degree diamond is no "circle", a 1.4:1
rectangle is no "square". Used by the judge's tests and ``benchmarks/shapes_judge.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .grammar import PALETTE
from .render import IMAGE_SIZE, SUPERSAMPLE, PlacedObject, object_mask


@dataclass(frozen=True)
class AdversarialCase:
    """``image`` float32 (32, 32, 3) in [0, 1]; ``prompts``: prompts a person would say it fails."""

    name: str
    image: np.ndarray
    prompts: tuple[str, ...]


#: off-palette colours (RGB 0-255) and the palette colour a lax judge reads them as
OFF_PALETTE = {
    "orange": ((245, 140, 30), "yellow"),
    "red+yellow mix": (tuple((np.add(PALETTE["red"], PALETTE["yellow"]) / 2).round().astype(int)), "yellow"),
    "green+yellow mix": (tuple((np.add(PALETTE["green"], PALETTE["yellow"]) / 2).round().astype(int)), "yellow"),
    "lavender": ((200, 180, 240), "white"),
    "magenta": ((225, 40, 215), "purple"),
    "pink": ((245, 140, 185), "purple"),
    "grey": ((135, 135, 135), "white"),
    "maroon": ((125, 25, 25), "red"),
}


def _coverage(inside: Callable[[np.ndarray, np.ndarray], np.ndarray], cx: float, cy: float) -> np.ndarray:
    """Coverage (32, 32) of the region ``inside(dx, dy)`` (offsets in pixels from (cx, cy)), 4x supersampled."""
    n = IMAGE_SIZE * SUPERSAMPLE
    c = (np.arange(n) + 0.5) / SUPERSAMPLE
    x, y = np.meshgrid(c, c)
    m = inside(x - cx, y - cy)
    return m.reshape(IMAGE_SIZE, SUPERSAMPLE, IMAGE_SIZE, SUPERSAMPLE).mean(axis=(1, 3))


def _paint(cover: np.ndarray, rgb, background: float = 0.06) -> np.ndarray:
    img = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), background, dtype=np.float64)
    color = np.asarray(rgb, dtype=np.float64)
    color = color / 255.0 if color.ndim == 1 else color
    return (img * (1 - cover[..., None]) + color * cover[..., None]).astype(np.float32)


def _shapes(h: float) -> dict[str, tuple[Callable, tuple[str, ...]]]:
    """Near-shapes of half-size ``h``: name -> (inside(dx, dy), prompts it fails)."""
    r = h
    return {
        "45-degree diamond": (lambda dx, dy: np.abs(dx) + np.abs(dy) <= r * 1.2, ("a circle", "a square")),
        "four-pointed star": (lambda dx, dy: np.abs(dx) ** 0.7 + np.abs(dy) ** 0.7 <= (r * 1.1) ** 0.7,
                              ("a circle", "a square")),
        "quarter disc": (lambda dx, dy: ((dx + r) ** 2 + (dy + r) ** 2 <= (2 * r) ** 2) & (dx >= -r) & (dy >= -r),
                         ("a square", "a circle")),
        "corner-cut circle": (lambda dx, dy: (dx * dx + dy * dy <= r * r) & ~((dx < 0) & (dy < 0)),
                              ("a square", "a circle")),
        "1.4:1 rectangle": (lambda dx, dy: (np.abs(dx) <= r * 0.9 * 1.18) & (np.abs(dy) <= r * 0.9 / 1.18),
                            ("a square", "a circle")),
        "1:1.4 rectangle": (lambda dx, dy: (np.abs(dx) <= r * 0.9 / 1.18) & (np.abs(dy) <= r * 0.9 * 1.18),
                            ("a square", "a circle")),
    }


def adversarial_cases(variants: int = 4) -> list[AdversarialCase]:
    """Every adversarial case at ``variants`` sizes/positions (``variants`` >= 1): the off-palette colours
    (each drawn as a circle and a square, prompts naming the colour a lax judge reads) and the near-shapes
    (drawn in palette colours)."""
    rng = np.random.default_rng(1234)
    cases = []
    for v in range(variants):
        size = 10.0 + 4.0 * v / max(variants - 1, 1)
        cx, cy = rng.uniform(9, 23, size=2)
        for name, (rgb, lax) in OFF_PALETTE.items():
            for shape in ("circle", "square"):
                cover = object_mask(PlacedObject(shape, "white", cx, cy, size))
                cases.append(AdversarialCase(f"{name} {shape}", _paint(cover, rgb), (f"a {lax} {shape}",)))
        # a red/yellow checkerboard reads as orange to a person
        cover = object_mask(PlacedObject("circle", "white", cx, cy, size))
        yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
        checker = np.where(((xx + yy) % 2 == 0)[..., None], np.asarray(PALETTE["red"]), np.asarray(PALETTE["yellow"]))
        cases.append(AdversarialCase("red/yellow checkerboard circle", _paint(cover, checker / 255.0),
                                     ("a yellow circle", "a red circle")))
        color = list(PALETTE)[v % len(PALETTE)]
        for name, (inside, prompts) in _shapes(size / 2).items():
            cases.append(AdversarialCase(name, _paint(_coverage(inside, cx, cy), PALETTE[color]), prompts))
    return cases
