"""Search methods. Each is a small frozen dataclass of hyperparameters with ``plan(nfe_budget,
num_steps)`` (a :class:`~evosearch.core.Plan`, before any compute), ``cost(...)``, ``config()``
and ``run(run)``; what they share lives in one place each: :mod:`.engine` (population
operations), :mod:`.context` (budget, timers, recording, stop), :mod:`.population`,
:mod:`.ops` (selection, resampling, potentials, schedules: pure functions).

Importing this package does not import diffusers."""

from ..core.lineage import Event, Lineage
from ..core.records import Candidate, HistoryEntry, Plan, SearchEvent, SearchStats
from .best_of_n import BestOfN
from .context import BudgetExceeded, EarlyStop, SearchContext, SearchInterrupted, SearchStopped
from .engine import Prediction, SearchRun
from .evosearch import PRESETS, EvoSearch
from .method import SearchMethod
from .ops.schedules import auto_schedule, schedule_cost, validate_schedules
from .particles import ParticleSearch
from .paths import PathSearch
from .population import Population
from .tree_of_frames import TreeOfFrames
from .tts_var import TTSVAR
from .zero_order import ZeroOrderSearch

__all__ = ["SearchMethod", "BestOfN", "EvoSearch", "ZeroOrderSearch", "PathSearch", "ParticleSearch", "TTSVAR",
           "TreeOfFrames", "PRESETS", "SearchContext", "SearchRun", "Population", "Prediction", "SearchInterrupted",
           "SearchStopped", "BudgetExceeded", "EarlyStop", "Candidate", "SearchStats", "Plan", "HistoryEntry",
           "SearchEvent", "Lineage", "Event", "auto_schedule", "schedule_cost", "validate_schedules"]
