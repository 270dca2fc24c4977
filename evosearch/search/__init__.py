"""Search methods. Each is a small class holding its hyperparameters with
``plan(nfe_budget, num_steps)``, ``cost(...)``, ``config()`` and ``run(ctx)``; shared pieces
(selection, mutation, schedules, lineage, the search context) live in one module each."""

from .best_of_n import BestOfN
from .context import BudgetExceeded, Candidate, SearchContext, SearchInterrupted, SearchStats
from .evosearch import PRESETS, EvoSearch
from .lineage import Event, Lineage
from .particles import ParticleSearch
from .paths import PathSearch
from .schedules import auto_schedule, schedule_cost, validate_schedules
from .tree_of_frames import TreeOfFrames
from .tts_var import TTSVAR
from .zero_order import ZeroOrderSearch

METHODS = {"evosearch": EvoSearch, "best-of-n": BestOfN, "zero-order": ZeroOrderSearch, "paths": PathSearch,
           "particles": ParticleSearch, "tree-of-frames": TreeOfFrames, "tts-var": TTSVAR}

__all__ = ["BestOfN", "EvoSearch", "ZeroOrderSearch", "PathSearch", "ParticleSearch", "TTSVAR", "PRESETS", "METHODS",
           "TreeOfFrames",
           "SearchContext", "SearchInterrupted", "BudgetExceeded",
           "Candidate", "SearchStats", "Lineage", "Event", "auto_schedule", "schedule_cost", "validate_schedules"]
