"""One request from the page, checked: every value by :mod:`evosearch.core.validation` (a
ParameterError naming the parameter), the server's limits, and the catalog's rules. No gradio
import."""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass

from ... import registry
from ...core.validation import ParameterError, check_bool, check_int, check_number, describe
from .catalog import Catalog

DEFAULT_MAX_NFE_BUDGET = 2000
DEFAULT_MAX_POPULATION = 64

DEFAULT_MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Limits:
    """What one request may ask for on this server."""

    max_nfe_budget: int = DEFAULT_MAX_NFE_BUDGET
    max_population: int = DEFAULT_MAX_POPULATION
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS

    def __post_init__(self):
        check_int("max_nfe_budget", self.max_nfe_budget, lo=1)
        check_int("max_population", self.max_population, lo=1)
        check_int("max_prompt_chars", self.max_prompt_chars, lo=1)


@dataclass(frozen=True)
class RunSettings:
    """A checked request; ``population`` and ``steps`` None: sized by the method / the model's default."""

    model: str
    prompt: str
    method: str
    population: int | None
    nfe_budget: int
    steps: int | None
    seed: int
    rewards: tuple[str, ...]
    weights: tuple[float, ...]
    guidance_scale: float | None
    eta: float
    mutation_rate: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rewards"], d["weights"] = list(self.rewards), list(self.weights)
        return d

    @property
    def reward_label(self) -> str:
        """The reward as the plot's axis names it: ``digits``, or ``2×digits + 1×ink``."""
        if len(self.rewards) == 1:
            return self.rewards[0]
        return " + ".join(f"{w:g}×{r}" for r, w in zip(self.rewards, self.weights))

    def build_method(self):
        own = registry.method_options(self.method)
        options = {"mutation_rate": self.mutation_rate} if "mutation_rate" in own else {}
        return registry.build_method(self.method, self.population, **options)


def _count(name: str, value, lo: int, auto: bool = False, hint: str = "") -> int | None:
    """An integer from a number box (the browser sends 250.0 as readily as 250; an empty box is None);
    with ``auto``, empty or 0 means "decide for me" (None)."""
    if auto and (value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return check_int(name, value, lo=lo, hint=hint)


def _weights(text, n: int) -> tuple[float, ...]:
    if text is None or (isinstance(text, str) and not text.strip()):
        return (1.0,) * n
    if not isinstance(text, str):
        raise ParameterError(f"weights: expected numbers separated by commas, got {describe(text)}")
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p]
    try:
        weights = tuple(float(p) for p in parts)
    except ValueError:
        raise ParameterError(f"weights: expected numbers separated by commas (one per reward), got "
                             f"{describe(text)}") from None
    if len(weights) != n:
        raise ParameterError(f"weights: expected {n} weight(s), one per selected reward, got {len(weights)} "
                             f"({describe(text)})")
    for w in weights:
        check_number("weights", w, lo=0.0, hint=" (each)")
    if not any(w > 0 for w in weights):
        raise ParameterError(f"weights: at least one must be positive, got {describe(text)}")
    return weights


def parse_request(catalog: Catalog, limits: Limits, model, prompt, method, population, nfe_budget, steps, seed,
                  randomize_seed, rewards, weights, guidance_scale, eta, mutation_rate) -> RunSettings:
    """The request as :class:`RunSettings`, or a ParameterError naming the first bad parameter."""
    if not isinstance(model, str):
        raise ParameterError(f"model: expected one of {', '.join(catalog.models)}, got {describe(model)}")
    if not isinstance(prompt, str):
        raise ParameterError(f"prompt: expected a string, got {describe(prompt)}")
    if len(prompt) > limits.max_prompt_chars:
        raise ParameterError(f"prompt: at most {limits.max_prompt_chars} characters on this server, got "
                             f"{describe(prompt)}")
    prompt = prompt.strip()
    if not prompt:
        raise ParameterError("prompt: empty; enter a prompt or pick an example")
    if isinstance(rewards, str):
        rewards = [rewards]
    if not isinstance(rewards, (list, tuple)) or not all(isinstance(r, str) for r in rewards):
        raise ParameterError(f"reward: expected a list of reward names, got {describe(rewards)}")
    rewards = tuple(dict.fromkeys(r for r in rewards if r))
    if not rewards:
        raise ParameterError("reward: select at least one reward")
    catalog.check(model, method, rewards)
    budget = _count("nfe_budget", nfe_budget, lo=1)
    if budget > limits.max_nfe_budget:
        raise ParameterError(f"nfe_budget: {budget} exceeds this server's limit max_nfe_budget={limits.max_nfe_budget}")
    pop = _count("population", population, lo=1, auto=True, hint=" (0: sized from the budget)")
    if pop is not None and pop > limits.max_population:
        raise ParameterError(f"population: {pop} exceeds this server's limit max_population={limits.max_population}")
    if check_bool("randomize_seed", bool(randomize_seed) if randomize_seed is None else randomize_seed):
        seed = secrets.randbelow(MAX_SEED + 1)
    seed = _count("seed", seed, lo=0)
    if seed > MAX_SEED:
        raise ParameterError(f"seed: must be at most {MAX_SEED}, got {seed}")
    settings = RunSettings(
        model=model, prompt=prompt, method=method, population=pop, nfe_budget=budget,
        steps=_count("steps", steps, lo=1, auto=True, hint=" (0: the model's default)"), seed=seed, rewards=rewards,
        weights=_weights(weights, len(rewards)),
        guidance_scale=check_number("guidance_scale", guidance_scale, lo=0.0, hi=100.0, allow_none=True) or None,
        eta=check_number("eta", 1.0 if eta is None else eta, lo=0.0, hi=1.0),
        mutation_rate=check_number("mutation_rate", 0.2 if mutation_rate is None else mutation_rate, lo=0.0, hi=1.0,
                                   lo_open=True))
    settings.build_method()  # the method's own checks (e.g. a population for a method that sizes itself)
    return settings
