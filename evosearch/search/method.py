"""The shape every search method has: a small frozen dataclass of hyperparameters with
``plan`` (what it will spend, before any compute) and ``run`` (the search itself)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

from ..core.records import Plan
from ..core.validation import ParameterError


@dataclass(frozen=True)
class SearchMethod:
    """Base class of the search methods.

    Subclasses set ``name`` (the registry's name, as the CLI spells it), ``summary`` (one line, shown
    by the CLI, the Gradio app and ComfyUI), ``population_parameter`` (the field the front-ends' one
    "population" number sets; None: the method sizes itself) and ``requires`` (the Stepper
    capabilities every run needs, see :data:`evosearch.core.CAPABILITIES`), validate their fields in
    ``__post_init__`` and implement :meth:`plan` and :meth:`run`. The registry
    (:mod:`evosearch.registry`) reads these attributes: a new method is one file plus
    :func:`evosearch.registry.register_method` or an ``evosearch.methods`` entry point."""

    name: ClassVar[str] = "method"
    summary: ClassVar[str] = ""
    population_parameter: ClassVar[str | None] = None
    requires: ClassVar[frozenset] = frozenset()

    @staticmethod
    def plan_population(details: dict) -> int | None:
        """The most candidates one generation (wave, tree depth) of a plan with these ``details``
        holds at once; None: every sample of the plan (the default)."""
        return None

    def plan(self, nfe_budget: int | None, num_steps: int, num_segments: int | None = None) -> Plan:
        """What a run on ``num_steps`` steps (``num_segments`` segments, for segment models) will do
        within ``nfe_budget``; a ParameterError naming the parameter when it cannot."""
        raise NotImplementedError

    def requirements(self, plan: Plan) -> frozenset:
        """Stepper capabilities this plan needs (default: :attr:`requires`)."""
        return self.requires

    def cost(self, nfe_budget: int | None, num_steps: int, num_segments: int | None = None) -> int:
        """NFE the plan spends."""
        return self.plan(nfe_budget, num_steps, num_segments).nfe

    def config(self) -> dict:
        """The hyperparameters, JSON-serialisable, with the method's name."""
        out = {"method": self.name}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else (v if not callable(v) else getattr(v, "__name__",
                                                                                                 "callable"))
        return out

    def run(self, run) -> None:
        """Search, recording candidates in ``run`` (a :class:`~evosearch.search.engine.SearchRun`)."""
        raise NotImplementedError


def need_budget(name: str, what: str, nfe_budget) -> None:
    """The error for a method asked to size itself without a budget."""
    if nfe_budget is None:
        raise ParameterError(f"nfe_budget: {name} without {what} needs an nfe_budget to size itself")


def over_budget(description: str, cost: int, nfe_budget, num_steps: int) -> None:
    """The error for a plan that would spend more than the budget."""
    if nfe_budget is not None and cost > nfe_budget:
        raise ParameterError(f"nfe_budget: {description} at {num_steps} steps needs {cost} NFE, more than "
                             f"nfe_budget={nfe_budget}")
