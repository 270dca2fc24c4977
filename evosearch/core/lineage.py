"""Lineage: how one candidate came to be, enough to re-generate it alone, and replay.

A lineage is the request (prompt and sampling settings), a fingerprint of the model, and a
list of events. Each event starts a segment at ``step``: it sets or changes the state there,
and its ``seed`` keys the step noise of every step of the segment
(:func:`~evosearch.core.noise.step_seed`), until the next event. The previous segment is
denoised up to the next event's ``step``, or up to its ``from_step`` when it has one (an
event that moves the state back to a noisier step). An event's own noise is drawn with
:func:`~evosearch.core.noise.mutation_seed` ``(seed)``::

    init     (step 0)   x = the Stepper's initial state for seed (N(0, I) for Gaussian states)
    vp       (step 0)   x = sqrt(1 - rate^2) x + rate * N(0, I)          (variance preserving)
    sigma    (step e)   x = x + c_{e-1} * N(0, I)        (c: the std step e - 1 injects; adds variance)
    resample (step e)   x = x + c_{e-1} ((sqrt(1 - rate^2) - 1) z_e + rate * N(0, I)), z_e the noise
                        step e - 1 injected (re-drawn from the lineage): the sampler's own law
    keep     (step e)   x unchanged (an elite, or a resampled particle copy), new step noise
                        from here on
    neighbor (step 0)   x at cosine ``rate`` to x with the norm of x (zero-order search)
    renoise  (step k, from_step j >= k)  the state at step j moved back to step k with the
                        forward process (search over paths)
    Steppers add their own kinds (``Stepper.event_kinds``: "segment" for segment models).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .mutation import resample_mutation, sigma_mutation, sphere_neighbor, vp_mutation
from .noise import NoiseSeeds, mutation_seed, step_seed

if TYPE_CHECKING:
    from .stepper import Stepper

#: event kinds every Gaussian-state Stepper understands, and the capability each needs
EVENT_KINDS = {"init": None, "keep": None, "vp": "gaussian", "sigma": "gaussian", "resample": "gaussian",
               "neighbor": "gaussian", "renoise": "gaussian"}
_RATE_KINDS = ("vp", "resample", "neighbor")
#: kinds that change the state, and so need a step still to come (a change after the last step is never made)
_MUTATION_KINDS = ("vp", "sigma", "resample", "neighbor", "renoise")
#: seeds are 64-bit (:func:`~evosearch.core.noise.derive_seed` keeps 64 bits: a larger seed would alias)
SEED_LIMIT = 2 ** 64


def _plain(x):
    """``x`` as it reads back from JSON (tuples as lists, numpy scalars as numbers)."""
    return json.loads(json.dumps(x, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def lineage_check(request: dict, events: list) -> str:
    """A short digest of a lineage's request (all but ``extra``) and events: ``to_dict`` writes it
    and ``from_dict`` refuses a lineage whose digest no longer matches (an edited step count, seed, ...)."""
    body = {"request": {k: v for k, v in request.items() if k != "extra"}, "events": events}
    text = json.dumps(_plain(body), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


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
    """Request settings, the model's fingerprint, and the events that made one candidate."""

    events: tuple[Event, ...]
    request: dict = field(default_factory=dict, compare=False)
    model: dict = field(default_factory=dict, compare=False)
    #: read from a dict whose request or events no longer match its ``check`` (see :func:`lineage_check`)
    edited: bool = field(default=False, compare=False)

    @classmethod
    def init(cls, seed: int, request: dict, model: dict | None = None) -> "Lineage":
        return cls((Event("init", 0, seed),), request, model or {})

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
        return Lineage(self.events + (Event(kind, step, seed, rate, from_step),), self.request, self.model)

    def check_unedited(self) -> None:
        """A ValueError naming ``lineage`` when it was changed after the search (its ``check``)."""
        if self.edited:
            raise ValueError("lineage: its request or events were changed after the search (they no longer match "
                             "its 'check'); replay needs the lineage as the search recorded it")

    @property
    def seed(self) -> int:
        """The seed of the last event: it keys the step noise from its step on."""
        return self.events[-1].seed

    def to_dict(self) -> dict:
        events = [e.to_dict() for e in self.events]
        d = {"request": self.request, "events": events, "check": lineage_check(self.request, events)}
        if self.model:
            d["model"] = self.model
        return d

    @classmethod
    def from_dict(cls, d) -> "Lineage":
        """A lineage from :meth:`to_dict` output; a ValueError naming ``lineage`` for anything else."""
        if isinstance(d, Lineage):
            return d
        if not isinstance(d, dict) or not isinstance(d.get("events"), (list, tuple)) or not d["events"]:
            raise ValueError(f"lineage: expected a Lineage or its to_dict() (a dict with a non-empty 'events' "
                             f"list, from a search output's best.lineage), got {_short(d)}")
        events = []
        for k, e in enumerate(d["events"]):
            if not isinstance(e, dict) or not {"kind", "step", "seed"} <= set(e) or set(e) - set(Event.__annotations__):
                raise ValueError(f"lineage: event {k} must be a dict with kind, step, seed (and optionally rate, "
                                 f"from_step), got {_short(e)}")
            seed = e["seed"]
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
                raise ValueError(f"lineage: event {k} ({e.get('kind')}) has seed {_short(seed)}; seeds are integers "
                                 f"in [0, 2**64)")
            if isinstance(e["step"], bool) or not isinstance(e["step"], int):
                raise ValueError(f"lineage: event {k} ({e.get('kind')}) has step {_short(e['step'])}; steps are "
                                 f"integers")
            events.append(Event(**e))
        request = d.get("request", {})
        if not isinstance(request, dict):
            raise ValueError(f"lineage: 'request' must be a dict of sampling settings, got {_short(request)}")
        check = d.get("check")
        edited = check is not None and check != lineage_check(request, [dict(e) for e in d["events"]])
        return cls(tuple(events), dict(request), dict(d.get("model") or {}), edited)

    def validate(self, num_steps: int, kinds: Sequence[str]) -> None:
        """A ValueError naming ``lineage`` unless the events can be replayed on a Stepper of
        ``num_steps`` steps that knows ``kinds``: known kinds, the first event an ``init`` at step 0,
        steps in [0, num_steps], each event cut at or after the one before."""
        ev = self.events
        if not ev or ev[0].kind != "init" or ev[0].step != 0:
            raise ValueError("lineage: the first event must be 'init' at step 0")
        last = 0
        for k, e in enumerate(ev):
            if e.kind not in kinds:
                raise ValueError(f"lineage: event {k} has kind {e.kind!r}; this model knows {', '.join(kinds)}")
            if not isinstance(e.step, int) or not 0 <= e.step <= num_steps:
                raise ValueError(f"lineage: event {k} ({e.kind}) is at step {e.step!r}, outside [0, {num_steps}]")
            if e.from_step is not None and not (isinstance(e.from_step, int) and e.step <= e.from_step <= num_steps):
                raise ValueError(f"lineage: event {k} ({e.kind}) has from_step {e.from_step!r}; it must be in "
                                 f"[step = {e.step}, {num_steps}]")
            cut = e.step if e.from_step is None else e.from_step
            if k and cut < last:
                raise ValueError(f"lineage: event {k} ({e.kind} at step {cut}) comes before the event before it "
                                 f"(step {last}); events must be in order")
            if e.kind in _MUTATION_KINDS and e.step >= num_steps:
                raise ValueError(f"lineage: event {k} ({e.kind}) is at step {e.step}; a change of the state needs a "
                                 f"step after it, so it must be in [0, {num_steps - 1}]")
            if e.kind in _RATE_KINDS and (isinstance(e.rate, bool) or not isinstance(e.rate, (int, float))
                                          or not 0.0 <= float(e.rate) <= 1.0):
                raise ValueError(f"lineage: event {k} ({e.kind}) needs a rate in [0, 1], got {e.rate!r}")
            last = e.step


def _short(v, n: int = 80) -> str:
    r = repr(v)
    return r if len(r) <= n else r[:n] + "..."


# ---------------------------------------------------------------------------- applying events
def _injected_noise(stepper: "Stepper", events: Sequence[Event], e: int):
    """(1, ...) the standard-normal noise that made the state at step ``e`` from step e - 1, re-drawn
    from the lineage (``events``: the events before the one being applied)."""
    k, at_e = len(events) - 1, []
    while k >= 0 and events[k].step == e and events[k].from_step is None:
        at_e.append(events[k])
        k -= 1
    if k < 0 or events[k].step > e - 1 or any(x.kind not in ("keep", "resample") for x in at_e):
        raise ValueError(f"lineage: 'resample' at step {e} needs the state there to come from a plain step "
                         f"{e - 1}, not from {[x.kind for x in at_e] or 'a re-noising'}")
    z = stepper.sample_noise([step_seed(events[k].seed, e - 1)])
    for x in reversed(at_e):
        if x.kind == "resample":
            z = math.sqrt(1.0 - x.rate * x.rate) * z + x.rate * stepper.sample_noise([mutation_seed(x.seed)])
    return z


def _apply_group(stepper: "Stepper", states, lineages: Sequence[Lineage]):
    """The last event of each lineage applied to its row of ``states``; every event has the same
    kind, step, rate and from_step."""
    ev = lineages[0].events[-1]
    seeds = [lin.seed for lin in lineages]
    if ev.kind == "init":
        return stepper.start(seeds)
    if states is None:
        raise ValueError(f"event {ev.kind!r} needs parent states")
    if ev.kind == "keep":
        return states
    if ev.kind in getattr(stepper, "event_kinds", ()):  # a Stepper's own kinds (segment models: "segment")
        return stepper.apply_event(states, ev, stepper.sample_noise([mutation_seed(s) for s in seeds]))
    noise = stepper.sample_noise([mutation_seed(s) for s in seeds]).to(states.device)
    if ev.kind == "vp":
        return vp_mutation(states, noise, ev.rate)
    if ev.kind == "neighbor":
        return sphere_neighbor(states, noise, ev.rate)
    if ev.kind == "sigma":
        return sigma_mutation(states, noise, stepper.noise_scale(ev.step - 1) if ev.step > 0 else 1.0)
    if ev.kind == "resample":
        if ev.step == 0:
            raise ValueError("lineage: 'resample' needs a step > 0 (use 'vp' at step 0)")
        injected = stepper.concat([_injected_noise(stepper, lin.events[:-1], ev.step) for lin in lineages])
        return resample_mutation(states, injected.to(states.device), noise, stepper.noise_scale(ev.step - 1), ev.rate)
    if ev.kind == "renoise":
        if ev.from_step is None:
            raise ValueError("lineage: event 'renoise' needs a from_step")
        return stepper.renoise(states, ev.from_step, ev.step, noise)
    raise ValueError(f"lineage: event kind {ev.kind!r} is unknown (allowed: {', '.join(stepper.event_kinds_all)})")


def apply_events(stepper: "Stepper", states, lineages: Sequence[Lineage]):
    """Row k of the result is the last event of ``lineages[k]`` applied to row k of ``states``
    (None when every event is an ``init``). Rows with the same kind of event are changed together."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for k, lin in enumerate(lineages):
        ev = lin.events[-1]
        groups[(ev.kind, ev.step, ev.rate, ev.from_step)].append(k)
    if len(groups) == 1:
        return _apply_group(stepper, states, lineages)
    outs, order = [], []
    for rows in groups.values():
        sub = None if states is None else stepper.select(states, rows)
        outs.append(_apply_group(stepper, sub, [lineages[k] for k in rows]))
        order += rows
    return stepper.select(stepper.concat(outs), np.argsort(order, kind="stable"))


def denoise(stepper: "Stepper", states, segment_seeds: Sequence[int], start: int, end: int, on_batch=None):
    """Steps [start, end) of ``states``; row k's step noise is keyed by ``segment_seeds[k]``."""
    for i in range(start, end):
        noise = NoiseSeeds.for_step(segment_seeds, i) if stepper.noise_scale(i) > 0 else None
        states = stepper.step(states, i, noise, on_batch=on_batch)
    return states


def replay(stepper: "Stepper", lineage: Lineage, on_batch=None) -> Any:
    """The final state (1, ...) of ``lineage`` on a prepared Stepper, re-generated alone."""
    lineage.validate(stepper.num_steps, stepper.event_kinds_all)
    events = lineage.events
    x = None
    for k, ev in enumerate(events):
        x = apply_events(stepper, x, [Lineage(events[:k + 1])])
        nxt = events[k + 1] if k + 1 < len(events) else None
        end = stepper.num_steps if nxt is None else (nxt.step if nxt.from_step is None else nxt.from_step)
        x = denoise(stepper, x, [ev.seed], ev.step, end, on_batch)
    return x
