"""The shapes world's prompt grammar: GenEval's six categories over coloured shapes.

A prompt describes the whole scene: every object it names is there, and nothing else.

| category      | form                                        | example                                   |
|---------------|---------------------------------------------|-------------------------------------------|
| single_object | ``a SHAPE``                                 | "a circle"                                |
| colors        | ``a COLOR SHAPE``                           | "a green square"                          |
| two_object    | ``a SHAPE and a SHAPE``                     | "a square and a triangle"                 |
| counting      | ``NUMBER [COLOR] SHAPE(s)``                 | "three green circles", "two squares"      |
| position      | ``a [COLOR] SHAPE RELATION a [COLOR] SHAPE``| "a red circle left of a blue square"      |
| color_attr    | ``a COLOR SHAPE and a COLOR SHAPE``         | "a red square and a green circle"         |

SHAPE: circle, square, triangle. COLOR: red, green, blue, yellow, purple, white.
NUMBER: one, two, three, four. RELATION: left of, right of, above, below.
A leading "a photo of" and a trailing "." are ignored; case and spacing are free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ...core.validation import ParameterError, describe

SHAPES = ("circle", "square", "triangle")
#: name -> RGB (0-255), far apart so that a generated colour reads as its nearest palette entry
PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 90, 235),
    "yellow": (235, 215, 40),
    "purple": (165, 60, 215),
    "white": (235, 235, 235),
}
COLORS = tuple(PALETTE)
NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4}
RELATIONS = ("left of", "right of", "above", "below")
CATEGORIES = ("single_object", "colors", "two_object", "counting", "position", "color_attr")
#: every word a prompt may use (the tokenizer's vocabulary)
VOCABULARY = ("a", "and", *SHAPES, *(s + "s" for s in SHAPES), *COLORS, *NUMBERS, "left", "right", "of", "above",
              "below")

GRAMMAR_HELP = ("prompts of the shapes world: 'a SHAPE', 'a COLOR SHAPE', 'a SHAPE and a SHAPE', "
                "'NUMBER [COLOR] SHAPEs', 'a [COLOR] SHAPE RELATION a [COLOR] SHAPE', "
                "'a COLOR SHAPE and a COLOR SHAPE'; SHAPE in " + "/".join(SHAPES) + ", COLOR in " + "/".join(COLORS)
                + ", NUMBER in " + "/".join(NUMBERS) + ", RELATION in " + "/".join(RELATIONS)
                + " (e.g. 'a red circle left of a blue square', 'three green triangles')")


@dataclass(frozen=True)
class ObjectSpec:
    """One object a prompt asks for; ``color`` None means any colour."""

    shape: str
    color: str | None = None

    def text(self) -> str:
        return f"{self.color} {self.shape}" if self.color else self.shape


@dataclass(frozen=True)
class SceneSpec:
    """What a prompt asks for: exactly ``objects`` (in any order, unless ``relation`` ties
    ``objects[0]`` to ``objects[1]``: ``"left of"`` means objects[0] is left of objects[1])."""

    category: str
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None

    def prompt(self) -> str:
        """The canonical prompt of this spec (``parse_prompt(spec.prompt()) == spec``)."""
        objs = self.objects
        if self.category == "counting":
            n = len(objs)
            word = next(w for w, k in NUMBERS.items() if k == n)
            return f"{word} {objs[0].text()}" + ("s" if n > 1 else "")
        if self.category == "position":
            return f"a {objs[0].text()} {self.relation} a {objs[1].text()}"
        return " and ".join(f"a {o.text()}" for o in objs)


_SHAPE = "(" + "|".join(SHAPES) + ")"
_COLOR = "(?:(" + "|".join(COLORS) + ") )?"
_RE_ONE = re.compile(f"^a {_COLOR}{_SHAPE}$")
_RE_TWO = re.compile(f"^a {_COLOR}{_SHAPE} and a {_COLOR}{_SHAPE}$")
_RE_POS = re.compile(f"^a {_COLOR}{_SHAPE} ({'|'.join(RELATIONS)}) a {_COLOR}{_SHAPE}$")
_RE_COUNT = re.compile(f"^({'|'.join(NUMBERS)}) {_COLOR}{_SHAPE}(s?)$")


def normalize_prompt(prompt: str) -> str:
    text = " ".join(prompt.lower().replace(",", " ").split()).rstrip(".").strip()
    if text.startswith("a photo of "):
        text = text[len("a photo of "):]
    return text


def parse_prompt(prompt) -> SceneSpec:
    """The :class:`SceneSpec` a prompt asks for, or a ValueError naming ``prompt`` and the grammar."""
    if not isinstance(prompt, str):
        raise ParameterError(f"prompt: expected a string, got {describe(prompt)}; {GRAMMAR_HELP}")
    text = normalize_prompt(prompt)
    m = _RE_ONE.match(text)
    if m:
        color, shape = m.groups()
        return SceneSpec("colors" if color else "single_object", (ObjectSpec(shape, color),))
    m = _RE_TWO.match(text)
    if m:
        c1, s1, c2, s2 = m.groups()
        category = "color_attr" if (c1 and c2) else "two_object"
        return SceneSpec(category, (ObjectSpec(s1, c1), ObjectSpec(s2, c2)))
    m = _RE_POS.match(text)
    if m:
        c1, s1, rel, c2, s2 = m.groups()
        return SceneSpec("position", (ObjectSpec(s1, c1), ObjectSpec(s2, c2)), rel)
    m = _RE_COUNT.match(text)
    if m:
        word, color, shape, plural = m.groups()
        n = NUMBERS[word]
        if (n > 1) != bool(plural):
            raise ParameterError(f"prompt: {describe(prompt)} — say 'one {shape}' or '{word} {shape}s'; {GRAMMAR_HELP}")
        return SceneSpec("counting", tuple(ObjectSpec(shape, color) for _ in range(n)))
    raise ParameterError(f"prompt: {describe(prompt)} is outside the grammar; {GRAMMAR_HELP}")


def sample_spec(rng: np.random.Generator, category: str | None = None) -> SceneSpec:
    """A random scene spec (uniform over categories unless ``category`` is given)."""
    category = category or CATEGORIES[rng.integers(len(CATEGORIES))]
    shape = lambda: SHAPES[rng.integers(len(SHAPES))]  # noqa: E731
    color = lambda: COLORS[rng.integers(len(COLORS))]  # noqa: E731
    if category == "single_object":
        return SceneSpec(category, (ObjectSpec(shape()),))
    if category == "colors":
        return SceneSpec(category, (ObjectSpec(shape(), color()),))
    if category == "two_object":
        s1, s2 = rng.choice(len(SHAPES), size=2, replace=False)
        return SceneSpec(category, (ObjectSpec(SHAPES[s1]), ObjectSpec(SHAPES[s2])))
    if category == "counting":
        n = int(rng.integers(1, 5))
        c = color() if rng.random() < 0.5 else None
        s = shape()
        return SceneSpec(category, tuple(ObjectSpec(s, c) for _ in range(n)))
    if category == "position":
        objs = []
        for _ in range(2):
            objs.append(ObjectSpec(shape(), color() if rng.random() < 0.7 else None))
        if objs[0] == objs[1]:  # "a circle left of a circle" is legal but says little; make them differ
            objs[1] = ObjectSpec(SHAPES[(SHAPES.index(objs[0].shape) + 1) % len(SHAPES)], objs[1].color)
        return SceneSpec(category, tuple(objs), RELATIONS[rng.integers(len(RELATIONS))])
    if category == "color_attr":
        s1, s2 = rng.choice(len(SHAPES), size=2, replace=False)
        c1, c2 = rng.choice(len(COLORS), size=2, replace=False)
        return SceneSpec(category, (ObjectSpec(SHAPES[s1], COLORS[c1]), ObjectSpec(SHAPES[s2], COLORS[c2])))
    raise ValueError(f"category: expected one of {CATEGORIES}, got {category!r}")


def benchmark_prompts(per_category: int = 8, seed: int = 2024) -> list[tuple[str, str]]:
    """A fixed list of (category, prompt): ``per_category`` distinct prompts of each category (all 3
    of single_object), drawn with ``seed`` — the same list on every machine. As in GenEval, counting
    prompts ask for two, three and four objects in turn, and position prompts cycle through the
    four relations."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, str]] = []
    for category in CATEGORIES:
        seen: list[str] = []
        for _ in range(1000):
            if len(seen) == per_category:
                break
            spec = sample_spec(rng, category)
            if category == "counting":
                n = 2 + len(seen) % 3
                spec = SceneSpec(category, (spec.objects[0],) * n)
            elif category == "position":
                spec = SceneSpec(category, spec.objects, RELATIONS[len(seen) % len(RELATIONS)])
            p = spec.prompt()
            if p not in seen:
                seen.append(p)
        out.extend((category, p) for p in seen)
    return out


def perturb_spec(spec: SceneSpec, rng: np.random.Generator) -> SceneSpec:
    """A spec that differs from ``spec`` in one attribute a person would notice: a shape, a colour,
    the count, the relation, or which colour goes with which shape (hard negatives for a
    contrastive reward). Always a different prompt."""
    objs = list(spec.objects)
    for _ in range(100):
        choice = rng.integers(5)
        new = list(objs)
        relation = spec.relation
        if choice == 0:  # a shape
            k = rng.integers(len(new))
            other = [s for s in SHAPES if s != new[k].shape]
            new[k] = ObjectSpec(other[rng.integers(len(other))], new[k].color)
            if spec.category == "counting":
                new = [ObjectSpec(new[k].shape, o.color) for o in new]
        elif choice == 1 and any(o.color for o in new):  # a colour
            k = rng.choice([i for i, o in enumerate(new) if o.color])
            other = [c for c in COLORS if c != new[k].color]
            new[k] = ObjectSpec(new[k].shape, other[rng.integers(len(other))])
            if spec.category == "counting":
                new = [ObjectSpec(o.shape, new[k].color) for o in new]
        elif choice == 2 and spec.category == "counting":  # the count
            n = len(new) + (1 if len(new) < 4 and (len(new) == 1 or rng.random() < 0.5) else -1)
            new = [new[0]] * n
        elif choice == 3 and relation is not None:  # the relation
            relation = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[relation]
            if rng.random() < 0.5:
                relation = RELATIONS[rng.integers(len(RELATIONS))]
        elif choice == 4 and len(new) == 2 and new[0].color and new[1].color and new[0].color != new[1].color:
            new = [ObjectSpec(new[0].shape, new[1].color), ObjectSpec(new[1].shape, new[0].color)]  # binding
        else:
            continue
        out = SceneSpec(spec.category, tuple(new), relation)
        if out.prompt() != spec.prompt():
            return out
    raise RuntimeError(f"perturb_spec: no perturbation of {spec.prompt()!r}")  # cannot happen: a shape can change
