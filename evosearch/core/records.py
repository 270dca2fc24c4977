"""Typed records of a search: request, plan, candidate, stats, history entry, callback event.

History entries and callback events are frozen dataclasses with documented fields; they
also read like the dicts they replace (``entry["rewards"]``, ``event.get("type")``), with a
method's own extra fields (``ess``, ``action``, ...) under :attr:`HistoryEntry.extra`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Mapping


class _ReadsLikeADict:
    """``record[key]`` / ``record.get(key)`` / ``key in record`` over the fields, then ``extra``."""

    def _lookup(self, key: str):
        names = {f.name for f in fields(self)}
        if key in names and key != "extra":
            return getattr(self, key)
        extra = getattr(self, "extra", None) or {}
        if key in extra:
            return extra[key]
        raise KeyError(key)

    def __getitem__(self, key: str):
        return self._lookup(key)

    def get(self, key: str, default=None):
        try:
            return self._lookup(key)
        except KeyError:
            return default

    def __contains__(self, key: str) -> bool:
        try:
            self._lookup(key)
            return True
        except KeyError:
            return False


@dataclass
class Request:
    """What one search call asks of a Stepper; recorded in every lineage for replay."""

    prompt: Any
    num_inference_steps: int
    guidance_scale: float
    eta: float
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {"prompt": self.prompt, "num_inference_steps": self.num_inference_steps,
             "guidance_scale": self.guidance_scale, "eta": self.eta, "negative_prompt": self.negative_prompt,
             "height": self.height, "width": self.width}
        if self.extra:
            d["extra"] = self.extra
        return d


@dataclass(frozen=True)
class Plan:
    """What a method will do for one request, decided before any compute.

    ``nfe``: denoiser evaluations it will spend (exactly, unless it stops early or is
    interrupted); ``samples``: final samples it will decode and score; ``details``: its own
    sizes and schedules (JSON-serialisable), e.g. EvoSearch's ``evolution_schedule``."""

    method: str
    nfe: int
    samples: int
    details: Mapping = field(default_factory=dict)

    def __getitem__(self, key: str):
        if key in ("method", "nfe", "samples"):
            return getattr(self, key)
        return self.details[key]

    def __getattr__(self, key: str):  # plan.nodes reads details["nodes"]
        details = self.__dict__.get("details", {})
        if key in details:
            return details[key]
        raise AttributeError(key)

    def to_dict(self) -> dict:
        return {"method": self.method, "nfe": self.nfe, "samples": self.samples, **dict(self.details)}


@dataclass
class Candidate:
    """A scored sample: image (3, H, W) — or video (F, 3, H, W) — uint8 on the CPU, reward, lineage,
    the generation that made it."""

    image: Any
    reward: float
    lineage: Any
    generation: int = 0


@dataclass
class Preview:
    """The best x0 preview of the rows a search held when it was stopped before it scored any sample:
    image (3, H, W) uint8 on the CPU (or (F, 3, H, W)), reward, the step it was predicted at, how many
    rows were scored, and its x0 estimate ``latent`` (1, ...). No lineage: it is not a finished sample."""

    image: Any
    reward: float
    step: int
    rows: int
    latent: Any = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {"reward": self.reward, "step": self.step, "rows": self.rows}


@dataclass
class SearchStats:
    """Compute a search spent. ``nfe``: denoiser evaluations per sample per step (with CFG
    one NFE is one batched cond+uncond pass, the papers' unit); ``planned_nfe``: what the plan
    would spend; ``reward_calls``: samples scored; ``decode_calls``: samples decoded;
    ``seconds``: wall time per phase; ``stopped``: why the search ended before its plan
    (``"early stop: ..."``, ``"interrupted"``, ``"error: ..."``) or None. A distributed search
    (``world_size`` > 1) counts NFE, decodes and reward calls over every rank, and adds
    ``comm_bytes`` (bytes this rank received through collectives) and ``seconds["comm"]`` (time
    in collectives, waiting for slower ranks included; it overlaps the other phases), split into
    ``seconds["comm_sync"]`` (the stop/progress syncs, where waiting for the slowest rank shows)
    and ``seconds["comm_data"]`` (moving rewards, samples and states)."""

    nfe: int = 0
    nfe_budget: int | None = None
    planned_nfe: int | None = None
    reward_calls: int = 0
    decode_calls: int = 0
    seconds: dict = field(default_factory=lambda: {"denoise": 0.0, "decode": 0.0, "reward": 0.0, "total": 0.0})
    peak_memory_bytes: int = 0
    tokens: int | None = None  # token positions predicted, for Steppers that count them (next-scale models)
    stopped: str | None = None
    world_size: int = 1
    comm_bytes: int = 0

    def to_dict(self) -> dict:
        d = {"nfe": self.nfe, "nfe_budget": self.nfe_budget, "planned_nfe": self.planned_nfe,
             "reward_calls": self.reward_calls, "decode_calls": self.decode_calls,
             "seconds": {k: round(v, 4) for k, v in self.seconds.items()}, "peak_memory_bytes": self.peak_memory_bytes,
             "stopped": self.stopped}
        if self.tokens is not None:
            d["tokens"] = self.tokens
        if self.world_size > 1:
            d["world_size"], d["comm_bytes"] = self.world_size, self.comm_bytes
        return d


@dataclass(frozen=True)
class HistoryEntry(_ReadsLikeADict):
    """One scored batch of a search.

    ``generation``: the method's round (EvoSearch generation, particle potential step, ...);
    ``step``: the denoising step the round started from (or scored at, for previews);
    ``population``: samples scored; ``rewards``: their rewards; ``best_reward``: best final
    sample so far (None before any); ``nfe``: NFE spent when scored; ``seconds``: since the
    search began; ``preview``: True for x0 previews / partial videos (never candidates);
    ``extra``: the method's own fields (``ess``, ``ancestors``, ``action``, ``kept``, ...)."""

    generation: int
    step: int | None
    population: int
    rewards: tuple
    best_reward: float | None
    nfe: int
    seconds: float
    preview: bool = False
    extra: Mapping = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "rewards", tuple(float(r) for r in self.rewards))
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    def to_dict(self) -> dict:
        return {"generation": self.generation, "step": self.step, "population": self.population,
                "rewards": list(self.rewards), "best_reward": self.best_reward, "nfe": self.nfe,
                "seconds": self.seconds, "preview": self.preview, **dict(self.extra)}


@dataclass(frozen=True)
class SearchEvent(_ReadsLikeADict):
    """What a ``callback`` receives.

    ``type``: "plan" (before compute; ``planned_nfe`` set), "progress" (after each micro-batch
    of denoising), "preview" or "generation" (a batch was scored; ``entry`` holds it, and for
    "generation" ``images`` the decoded samples (N, 3, H, W) or videos, float in [0, 1]).
    ``nfe``: spent so far; ``planned_nfe``: the plan's total."""

    type: str
    nfe: int
    planned_nfe: int | None = None
    entry: HistoryEntry | None = None
    images: Any = None

    def _lookup(self, key: str):
        try:
            return super()._lookup(key)
        except KeyError:
            if self.entry is not None:
                return self.entry[key]
            raise
