"""The core: the Stepper protocol and its capabilities, the noise schedule, explicit noise,
lineage and replay, typed records and parameter checks. It imports torch and numpy only
(never diffusers), so search methods and apps can be imported without a model library."""

from .lineage import EVENT_KINDS, Event, Lineage, apply_events, denoise, replay
from .noise import MUTATION_KEY, NoiseSeeds, derive_seed, gaussian_rows, mutation_seed, step_seed, uniform_rows
from .records import Candidate, HistoryEntry, Plan, Request, SearchEvent, SearchStats
from .schedule import NoiseSchedule
from .stepper import CAPABILITIES, Stepper, check_capabilities, module_fingerprint
from .validation import ParameterError, check_bool, check_choice, check_int, check_number, check_steps, describe

__all__ = ["Stepper", "CAPABILITIES", "check_capabilities", "module_fingerprint", "NoiseSchedule", "Event", "Lineage",
           "EVENT_KINDS", "apply_events", "denoise", "replay", "NoiseSeeds", "derive_seed", "step_seed",
           "mutation_seed", "gaussian_rows", "uniform_rows", "MUTATION_KEY", "Request", "Plan", "Candidate",
           "SearchStats", "HistoryEntry", "SearchEvent", "ParameterError", "check_int", "check_number",
           "check_choice", "check_bool", "check_steps", "describe"]
