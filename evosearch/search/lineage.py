"""Lineage: how one candidate came to be, enough to re-generate it alone.

A lineage is the request (prompt and sampling settings) plus a list of events.
Each event starts a segment at ``step``: it sets or changes the state there, and its
``seed`` keys the step noise of every step of the segment (``derive_seed(seed, i)``),
until the next event::

    init  (step 0)   x = N(0, I) drawn with seed
    vp    (step 0)   x = sqrt(1 - rate^2) x + rate * N(0, I)          (variance preserving)
    sigma (step e)   x = x + noise_scale(e - 1) * N(0, I)             (the sampler's own std)
    keep  (step e)   x unchanged (an elite), new step noise from here on
    renoise, branch ... (other methods add their own kinds)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Event:
    kind: str
    step: int
    seed: int
    rate: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Lineage:
    """Request settings plus the events that made one candidate (see module docstring)."""

    events: tuple[Event, ...]
    request: dict = field(default_factory=dict, compare=False)

    @classmethod
    def init(cls, seed: int, request: dict) -> "Lineage":
        return cls((Event("init", 0, seed),), request)

    def then(self, kind: str, step: int, seed: int, rate: float | None = None) -> "Lineage":
        """This lineage cut at ``step`` and continued by a new event there."""
        last = self.events[-1].step
        if step < last:
            raise ValueError(f"step: a new event must not come before the last one (step {last}), got {step}")
        return Lineage(self.events + (Event(kind, step, seed, rate),), self.request)

    def to_dict(self) -> dict:
        return {"request": self.request, "events": [e.to_dict() for e in self.events]}

    @classmethod
    def from_dict(cls, d: dict) -> "Lineage":
        return cls(tuple(Event(**e) for e in d["events"]), dict(d.get("request", {})))
