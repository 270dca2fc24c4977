"""Search methods. Each is a small class holding its hyperparameters with
``plan(nfe_budget, num_steps)``, ``cost(...)``, ``config()`` and ``run(ctx)``; shared pieces
(selection, mutation, schedules, lineage, the search context) live in one module each."""

from .best_of_n import BestOfN
from .context import BudgetExceeded, Candidate, SearchContext, SearchInterrupted, SearchStats
from .evosearch import PRESETS, EvoSearch
from .lineage import Event, Lineage
from .schedules import auto_schedule, schedule_cost, validate_schedules

METHODS = {"evosearch": EvoSearch, "best-of-n": BestOfN}

__all__ = ["BestOfN", "EvoSearch", "PRESETS", "METHODS", "SearchContext", "SearchInterrupted", "BudgetExceeded",
           "Candidate", "SearchStats", "Lineage", "Event", "auto_schedule", "schedule_cost", "validate_schedules"]
