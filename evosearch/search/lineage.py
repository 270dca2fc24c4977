"""Lineage: how one candidate came to be, enough to re-generate it alone.

A lineage is the request (prompt and sampling settings) plus a list of events.
Each event starts a segment at ``step``: it sets or changes the state there, and its
``seed`` keys the step noise of every step of the segment (``derive_seed(seed, i)``),
until the next event. The previous segment is denoised up to the next event's ``step``,
or up to its ``from_step`` when it has one (an event that moves the state back to a
noisier step). N(0, I) in an event is drawn with ``derive_seed(seed, MUTATION_KEY)``::

    init     (step 0)   x = N(0, I) drawn with seed
    vp       (step 0)   x = sqrt(1 - rate^2) x + rate * N(0, I)          (variance preserving)
    sigma    (step e)   x = x + noise_scale(e - 1) * N(0, I)             (the sampler's own std)
    keep     (step e)   x unchanged (an elite, or a resampled particle copy), new step noise
                        from here on
    neighbor (step 0)   x = rate x + sqrt(1 - rate^2) |x| u / |u|, u the part of N(0, I)
                        orthogonal to x: a point at cosine ``rate`` to x with the norm of x
                        (zero-order search; ``rate`` is its lambda_)
    renoise  (step k, from_step j >= k)  the state at step j moved back to step k with the
                        forward process: x_k = (a_k / a_j) x_j + sqrt(s_k^2 - (a_k s_j / a_j)^2) N(0, I)
                        (search over paths; a, s: the schedule's x_t = a_t x0 + s_t eps)
    branch ... (other methods add their own kinds)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Event:
    kind: str
    step: int
    seed: int
    rate: float | None = None
    from_step: int | None = None

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

    def then(self, kind: str, step: int, seed: int, rate: float | None = None,
             from_step: int | None = None) -> "Lineage":
        """This lineage cut at ``step`` (or at ``from_step``, for events that move the state
        back to a noisier ``step``) and continued by a new event."""
        last = self.events[-1].step
        cut = step if from_step is None else from_step
        if cut < last:
            raise ValueError(f"step: a new event must not come before the last one (step {last}), got {cut}")
        if from_step is not None and step > from_step:
            raise ValueError(f"step: an event with from_step={from_step} must go back (step <= from_step), got {step}")
        return Lineage(self.events + (Event(kind, step, seed, rate, from_step),), self.request)

    def to_dict(self) -> dict:
        return {"request": self.request, "events": [e.to_dict() for e in self.events]}

    @classmethod
    def from_dict(cls, d: dict) -> "Lineage":
        return cls(tuple(Event(**e) for e in d["events"]), dict(d.get("request", {})))
