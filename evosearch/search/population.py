"""A population: states of one step index and the lineage of each row, selected together."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..core.lineage import Lineage


@dataclass(frozen=True)
class Population:
    """``states`` (the Stepper's state batch: a tensor, or its own object) at step ``step``, row k
    made by ``lineages[k]``. Methods move populations with :meth:`select` and the run's
    operations; they never index ``states`` themselves."""

    states: Any
    lineages: tuple[Lineage, ...]
    step: int
    selector: Callable = None  # the Stepper's select(states, index)

    def __post_init__(self):
        object.__setattr__(self, "lineages", tuple(self.lineages))
        if len(self.states) != len(self.lineages):
            raise ValueError(f"states: {len(self.states)} rows for {len(self.lineages)} lineages")

    def __len__(self) -> int:
        return len(self.lineages)

    @property
    def seeds(self) -> list[int]:
        """Each row's current segment seed (it keys the row's step noise)."""
        return [lin.seed for lin in self.lineages]

    def select(self, index: Sequence[int] | np.ndarray) -> "Population":
        """The rows at ``index`` (repeats allowed: copies of a row), in that order."""
        idx = [int(k) for k in np.asarray(index, dtype=np.int64).reshape(-1)]
        return Population(self.selector(self.states, idx), tuple(self.lineages[k] for k in idx), self.step,
                          self.selector)

    def replace(self, states=None, lineages=None, step: int | None = None) -> "Population":
        return Population(self.states if states is None else states,
                          self.lineages if lineages is None else tuple(lineages),
                          self.step if step is None else step, self.selector)
