"""The one table every front-end uses: search methods, bundled models, rewards.

The CLI, batch runs, the Gradio app and the ComfyUI nodes list, build and describe
methods, models and rewards from here, so that a name means the same thing everywhere.
Errors are :class:`~evosearch.core.validation.ParameterError` (a ValueError) naming the
parameter; front-ends show them in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

from .core.validation import ParameterError, check_choice, check_int, describe
from .rewards import Aesthetic, CLIPScore, HPSv2, ImageReward, PickScore
from .search import TTSVAR, BestOfN, EvoSearch, ParticleSearch, PathSearch, TreeOfFrames, ZeroOrderSearch
from .search.method import SearchMethod

#: the methods this package ships, in the order the front-ends list them
BUILTIN_METHODS: tuple[type[SearchMethod], ...] = (EvoSearch, BestOfN, ZeroOrderSearch, PathSearch, ParticleSearch,
                                                    TTSVAR, TreeOfFrames)
#: name (as the CLI spells it) -> method class; filled by :func:`register_method` from each class's ``name``
METHODS: dict[str, type[SearchMethod]] = {}
#: what the front-ends' one "population" number sets, per method (None: the method sizes itself); each
#: class's ``population_parameter``
POPULATION_PARAMETER: dict[str, str | None] = {}
#: one line per method (each class's ``summary``), shown by the CLI, the Gradio app and ComfyUI
METHOD_SUMMARIES: dict[str, str] = {}
#: how many candidates one generation (or wave, or tree depth) of a method's plan holds at most (each
#: class's ``plan_population``)
PLAN_POPULATION: dict[str, Callable[[dict], int | None]] = {}


def register_method(cls: type[SearchMethod]) -> type[SearchMethod]:
    """Add a search method class to :data:`METHODS` (and the tables derived from it) under its ``name``;
    the CLI, batch, the Gradio app and ComfyUI then offer it. Returns ``cls`` (usable as a decorator).
    Registering the same class again does nothing; another class under a taken name is a ParameterError."""
    from dataclasses import is_dataclass

    if not (isinstance(cls, type) and issubclass(cls, SearchMethod) and is_dataclass(cls)):
        raise ParameterError(f"method: expected a SearchMethod dataclass, got {describe(cls)}")
    name = cls.name
    if not isinstance(name, str) or not name or name == SearchMethod.name or name != name.strip():
        raise ParameterError(f"method: {cls.__name__} needs a class attribute name (the registry name), "
                             f"got {name!r}")
    if METHODS.get(name, cls) is not cls:
        raise ParameterError(f"method: the name {name!r} of {cls.__module__}.{cls.__qualname__} is taken by "
                             f"{METHODS[name].__module__}.{METHODS[name].__qualname__}")
    param = cls.population_parameter
    if param is not None and param not in {f.name for f in fields(cls)}:
        raise ParameterError(f"method: {cls.__name__}.population_parameter is {param!r}, not one of its fields "
                             f"({', '.join(f.name for f in fields(cls))})")
    METHODS[name], POPULATION_PARAMETER[name] = cls, param
    METHOD_SUMMARIES[name] = cls.summary or (cls.__doc__ or name).strip().splitlines()[0]
    PLAN_POPULATION[name] = cls.plan_population
    return cls


for _cls in BUILTIN_METHODS:
    register_method(_cls)


def method_options(name: str) -> tuple[str, ...]:
    """The keyword arguments ``build_method(name, ...)`` accepts besides ``population``."""
    return tuple(f.name for f in fields(METHODS[name]))


def build_method(name: str, population: int | None = None, **options) -> SearchMethod:
    """The method ``name`` with ``population`` (see :data:`POPULATION_PARAMETER`; None: sized from the
    budget) and any of its own hyperparameters as keyword arguments."""
    check_choice("method", name, METHODS)
    check_int("population", population, lo=1, allow_none=True, hint=" (None: sized from the nfe_budget)")
    unknown = sorted(set(options) - set(method_options(name)))
    if unknown:
        raise ParameterError(f"{unknown[0]}: not an option of {name}; its options are "
                             f"{', '.join(method_options(name))}")
    if population is not None:
        param = POPULATION_PARAMETER[name]
        if param is None:
            raise ParameterError(f"population: {name} sizes its populations from nfe_budget (or from "
                                 f"evolution_schedule/population_schedule); leave population unset")
        options[param] = population
    return METHODS[name](**options)


# ------------------------------------------------------------------------------------ models
@dataclass(frozen=True)
class ModelEntry:
    """A bundled world: how to load its pipeline, its default reward (a REWARDS name), example
    prompts by category, the default prompt, and the methods it can run."""

    name: str
    summary: str
    load: Callable[..., object]
    reward: str
    default_prompt: str
    examples: dict
    methods: tuple[str, ...]


def _shapes(variant: str):
    def load(device: str = "cpu"):
        from .bundled import shapes

        return shapes.load_pipeline(variant, device=device)

    return load


def _shapes_examples() -> dict:
    from .bundled.shapes.grammar import benchmark_prompts

    out: dict[str, list[str]] = {}
    for category, prompt in benchmark_prompts():
        out.setdefault(category, []).append(prompt)
    return {k: [v[0], v[len(v) // 2]] for k, v in out.items()}  # two per category: one page of examples


_IMAGE_METHODS = ("evosearch", "best-of-n", "zero-order", "paths", "particles")


def _digits(device: str = "cpu"):
    from .bundled import digits

    return digits.load_pipeline(device=device)


def _var_digits(device: str = "cpu"):
    from .bundled import var_digits

    return var_digits.load_pipeline(device=device)


def _moving_digits(device: str = "cpu"):
    from .bundled import moving_digits

    return moving_digits.load_pipeline(device=device)


MODELS: dict[str, ModelEntry] = {
    "shapes": ModelEntry("shapes", "coloured shapes from compositional prompts (diffusion; exact judge)",
                         _shapes("diffusion"), "shapes-clip", "a yellow circle and a white square",
                         {}, _IMAGE_METHODS),
    "shapes-flow": ModelEntry("shapes-flow", "the shapes world's flow-matching variant (exact judge)",
                              _shapes("flow"), "shapes-clip", "a yellow circle and a white square", {},
                              _IMAGE_METHODS),
    "digits": ModelEntry("digits", "handwritten digits 0-9 (class-conditional diffusion; SVC judge)", _digits,
                         "digits", "3", {"digits": ["3", "7", "digit 2"]}, _IMAGE_METHODS),
    "var-digits": ModelEntry("var-digits", "handwritten digits, next-scale (VAR) model", _var_digits, "digits",
                             "3", {"digits": ["3", "7"]}, ("tts-var", "best-of-n")),
    "moving-digits": ModelEntry("moving-digits", "a digit sliding across the canvas (segment video model)",
                                _moving_digits, "moving-digits", "3", {"digits": ["3", "5"]},
                                ("tree-of-frames", "best-of-n", "evosearch")),
}
DEFAULT_MODEL = "shapes"


def register_model(entry: ModelEntry) -> ModelEntry:
    """Add a world (a :class:`ModelEntry`) to :data:`MODELS`; its ``reward`` must be a :data:`REWARDS`
    name and its ``methods`` :data:`METHODS` names (check when registered). Returns ``entry``."""
    if not isinstance(entry, ModelEntry):
        raise ParameterError(f"model: expected a registry.ModelEntry, got {describe(entry)}")
    if MODELS.get(entry.name, entry) != entry:
        raise ParameterError(f"model: the name {entry.name!r} is taken ({MODELS[entry.name].summary})")
    MODELS[entry.name] = entry
    return entry


def check_model_folder(path) -> str:
    """The pipeline class named by a local diffusers folder's ``model_index.json``, checked without
    loading any weights: the folder exists, the file is a JSON object whose ``_class_name`` diffusers
    knows. Errors name ``model``."""
    import json
    from pathlib import Path

    folder = Path(path)
    if not folder.exists():
        raise ParameterError(f"model: {str(path)!r} is neither a bundled model ({', '.join(MODELS)}) nor an "
                             f"existing folder")
    if not folder.is_dir():
        raise ParameterError(f"model: {str(path)!r} is a file; expected a bundled model ({', '.join(MODELS)}) or a "
                             f"diffusers folder with model_index.json")
    index = folder / "model_index.json"
    try:
        config = json.loads(index.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParameterError(f"model: {str(path)!r} has no model_index.json, so it is not a diffusers "
                             f"pipeline folder") from None
    except (ValueError, OSError) as err:
        raise ParameterError(f"model: {index} is not readable JSON ({err})") from None
    name = config.get("_class_name") if isinstance(config, dict) else None
    if not isinstance(name, str):
        raise ParameterError(f"model: {index} has no \"_class_name\" naming the pipeline class")
    import diffusers

    if not isinstance(getattr(diffusers, name, None), type):
        raise ParameterError(f"model: {index} names the pipeline class {name!r}, which diffusers "
                             f"{diffusers.__version__} does not have")
    return name


def load_model(name: str, device: str = "cpu"):
    """A bundled model by name (:data:`MODELS`) or a local diffusers folder, on ``device``. Missing
    weights, a broken ``model_index.json`` or an unloadable folder raise a ParameterError naming
    ``model``."""
    if not isinstance(name, str) or not name:
        raise ParameterError(f"model: expected a bundled model ({', '.join(MODELS)}) or a local diffusers "
                             f"folder, got {describe(name)}")
    if name in MODELS:
        try:
            return MODELS[name].load(device=device)
        except FileNotFoundError as err:
            raise ParameterError(f"model: the bundled {name!r} model's weights are not installed "
                                 f"({str(err).removeprefix('path: ')})") from err
    check_model_folder(name)
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(name)
    except Exception as err:  # any failure reading a user's folder is reported as that folder's problem
        raise ParameterError(f"model: cannot load {name!r} as a diffusers pipeline ({type(err).__name__}: "
                             f"{err})") from err
    return pipe.to(device)


def model_examples(name: str) -> dict:
    """Example prompts of a bundled model, by category."""
    check_choice("model", name, MODELS)
    entry = MODELS[name]
    return _shapes_examples() if name.startswith("shapes") else dict(entry.examples)


# ----------------------------------------------------------------------------------- rewards
@dataclass(frozen=True)
class RewardEntry:
    """A reward by name: its loader ``load(checkpoint=None, device="cpu")``, whether it needs
    downloaded weights (no checkpoint given), whether it scores videos, and for which models."""

    name: str
    summary: str
    load: Callable[..., object]
    needs_weights: bool
    video: bool = False
    models: tuple[str, ...] | None = None  # None: any model


def _reward_shapes(checkpoint=None, device="cpu"):
    from .bundled import shapes

    return shapes.load_reward(path=checkpoint, device=device)


def _reward_shapes_v1(checkpoint=None, device="cpu"):
    from .bundled import shapes

    return shapes.load_reward(path=checkpoint, device=device, version="v1")


def _reward_digits(checkpoint=None, device="cpu"):
    from .bundled import digits

    return digits.load_reward(path=checkpoint, device=device)


def _reward_moving_digits(checkpoint=None, device="cpu"):
    from .bundled import moving_digits

    return moving_digits.load_reward(path=checkpoint)  # a tiny classifier: it runs on the CPU


#: name -> reward entry: the bundled worlds' rewards (loaded lazily: a world imports its model code), then
#: the reward classes that declare a ``registry_name`` (:data:`BUILTIN_REWARDS`), then registered plugins
REWARDS: dict[str, RewardEntry] = {
    "shapes-clip": RewardEntry("shapes-clip", "the shapes world's contrastive image-text score (bundled; trained "
                                              "with hard negatives)", _reward_shapes, False,
                               models=("shapes", "shapes-flow")),
    "shapes-clip-v1": RewardEntry("shapes-clip-v1", "the shapes world's first, weak reward (fooled on positions: "
                                                    "shows reward hacking)", _reward_shapes_v1, False,
                                  models=("shapes", "shapes-flow")),
    "digits": RewardEntry("digits", "log-probability of the digit by the bundled classifier", _reward_digits, False,
                          models=("digits", "var-digits")),
    "moving-digits": RewardEntry("moving-digits", "per-frame digit classifier on videos (bundled)",
                                 _reward_moving_digits, False, video=True, models=("moving-digits",)),
}


def register_reward(reward) -> object:
    """Add a reward to :data:`REWARDS`: a :class:`~evosearch.rewards.Reward` subclass that declares
    ``registry_name``, ``summary``, ``needs_weights`` (and optionally ``models``; its loader is the
    classmethod ``from_checkpoint(checkpoint=None, device="cpu")``), or a :class:`RewardEntry`. The CLI,
    batch, the Gradio app and ComfyUI then offer it. Returns ``reward`` (usable as a decorator)."""
    from .rewards.base import Reward

    if isinstance(reward, RewardEntry):
        entry = reward
    elif isinstance(reward, type) and issubclass(reward, Reward):
        if not isinstance(reward.registry_name, str) or not reward.registry_name:
            raise ParameterError(f"reward: {reward.__name__} needs a class attribute registry_name (its name in "
                                 f"the registry), got {reward.registry_name!r}")
        entry = RewardEntry(reward.registry_name, reward.summary or reward.__name__, reward.from_checkpoint,
                            bool(reward.needs_weights), video=bool(reward.video_input), models=reward.models)
    else:
        raise ParameterError(f"reward: expected a Reward subclass or a RewardEntry, got {describe(reward)}")
    taken = REWARDS.get(entry.name)
    if taken is not None and taken.load != entry.load:
        raise ParameterError(f"reward: the name {entry.name!r} is taken ({taken.summary})")
    REWARDS[entry.name] = entry
    return reward


#: the reward classes this package registers by their ``registry_name`` (hub weights or a checkpoint)
BUILTIN_REWARDS: tuple = (CLIPScore, Aesthetic, ImageReward, PickScore, HPSv2)
for _cls in BUILTIN_REWARDS:
    register_reward(_cls)


def default_reward(model: str | None) -> str:
    """The reward a model is searched with unless told otherwise (``clip`` for a diffusers folder)."""
    return MODELS[model].reward if model in MODELS else "clip"


def load_reward(name: str, checkpoint: str | None = None, device: str = "cpu"):
    """A reward by registry name, or ``module:attr`` naming an importable Reward (instance, class or
    callable)."""
    if not isinstance(name, str) or not name:
        raise ParameterError(f"reward: expected a reward name ({', '.join(REWARDS)}) or module:attr, "
                             f"got {describe(name)}")
    if name in REWARDS:
        return REWARDS[name].load(checkpoint=checkpoint, device=device)
    if ":" not in name:
        raise ParameterError(f"reward: unknown reward {name!r}; allowed: {', '.join(REWARDS)}, or module:attr")
    import importlib

    from .rewards.base import Reward, as_reward

    module, _, attr = name.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ParameterError(f"reward: cannot import {name!r} ({err})") from None
    if isinstance(obj, type) and issubclass(obj, Reward):
        obj = obj()
    try:
        return as_reward(obj)
    except TypeError as err:
        raise ParameterError(f"reward: {name!r}: {err}") from None


# ------------------------------------------------------------------------------ availability
#: the file each bundled model loads its weights from, under ``evosearch/bundled/assets``
MODEL_WEIGHTS = {"shapes": "shapes/diffusion/model_index.json", "shapes-flow": "shapes/flow/model_index.json",
                 "digits": "digits/model_index.json", "var-digits": "var_digits/model.safetensors",
                 "moving-digits": "moving_digits/model_index.json"}
#: the file each bundled reward loads its weights from (rewards with ``needs_weights`` download theirs)
REWARD_WEIGHTS = {"shapes-clip": "shapes/reward/config.json", "shapes-clip-v1": "shapes/reward-v1/config.json",
                  "digits": "digits/classifier/model.safetensors",
                  "moving-digits": "moving_digits/classifier/model.safetensors"}


def _missing(kind: str, name: str, relative: str | None) -> str | None:
    from .bundled.paths import ASSETS

    if relative is None or (ASSETS / relative).is_file():
        return None
    return f"{name}: its {kind} weights are not there yet (no bundled/assets/{relative})"


def model_unavailable(name: str) -> str | None:
    """Why the bundled model ``name`` cannot be loaded here (its weights are missing), or None."""
    check_choice("model", name, MODELS)
    return _missing("model", name, MODEL_WEIGHTS.get(name))


def makes_videos(model: str) -> bool:
    """Whether the bundled model ``model`` makes videos (its default reward scores videos)."""
    check_choice("model", model, MODELS)
    return REWARDS[MODELS[model].reward].video


def method_unavailable(method: str, model: str) -> str | None:
    """Why ``method`` is not offered for the bundled model ``model`` (None: it is, or ``model`` is not
    bundled, or ``method`` is not one of :data:`BUILTIN_METHODS` (which a model's ``methods`` list): then
    the Stepper's capabilities decide at run time)."""
    check_choice("method", method, METHODS)
    if model not in MODELS or method in MODELS[model].methods or METHODS[method] not in BUILTIN_METHODS:
        return None
    where = [m for m, entry in MODELS.items() if method in entry.methods]
    return f"{method}: runs on {', '.join(where)}, not {model}"


def reward_unavailable(name: str, model: str | None = None, offline: bool = False,
                       checkpoint: str | None = None) -> str | None:
    """Why the reward ``name`` cannot score ``model``'s samples here, or None: it is made for other
    models, scores videos where the model makes images (or the reverse), its bundled weights are
    missing, or it needs hub weights while ``offline`` and no ``checkpoint`` is given."""
    check_choice("reward", name, REWARDS)
    entry = REWARDS[name]
    if model in MODELS:
        if entry.models is not None and model not in entry.models:
            return f"{name}: made for {', '.join(entry.models)}, not {model}"
        if entry.video != makes_videos(model):
            return f"{name}: scores {'videos' if entry.video else 'images'}, {model} makes " \
                   f"{'videos' if makes_videos(model) else 'images'}"
    elif entry.models is not None:
        return f"{name}: made for {', '.join(entry.models)}"
    if checkpoint is not None:
        return None
    if entry.needs_weights and offline:
        return (f"{name}: needs weights from the Hugging Face hub and this machine is offline (HF_HUB_OFFLINE=1 or "
                f"no network); give it a local checkpoint")
    return _missing("reward", name, REWARD_WEIGHTS.get(name))


def largest_population(plan) -> int:
    """The most candidates a :class:`~evosearch.core.Plan` holds at once (for a method whose
    ``plan_population`` says None, or not registered: every sample it makes)."""
    read = PLAN_POPULATION.get(plan.method)
    most = read(plan.details) if read is not None else None
    return int(most) if most is not None else int(plan.samples)


# ------------------------------------------------------------------------------------ plugins
#: entry-point group -> how its entries are registered; an entry point names a SearchMethod class
#: (``evosearch.methods``), a Reward class or RewardEntry (``evosearch.rewards``) or a ModelEntry
#: (``evosearch.models``), e.g. in a plugin's pyproject.toml:
#: ``[project.entry-points."evosearch.methods"] toy = "my_package.toy:ToySearch"``
ENTRY_POINT_GROUPS: dict[str, Callable] = {"evosearch.methods": register_method,
                                           "evosearch.rewards": register_reward,
                                           "evosearch.models": register_model}


def load_plugins() -> list[str]:
    """Register what installed distributions declare under :data:`ENTRY_POINT_GROUPS` (run once when
    this module is imported; running it again registers what was installed since). A plugin that cannot
    be imported or registered is skipped with a warning naming its entry point, so one broken plugin
    does not take the CLI down. Returns ``group:name`` of each entry point registered."""
    import warnings
    from importlib.metadata import entry_points

    done = []
    for group, register in ENTRY_POINT_GROUPS.items():
        for ep in entry_points(group=group):
            try:
                register(ep.load())
            except Exception as err:  # a third party's bug must not break the library's own front-ends
                warnings.warn(f"evosearch plugin {group}:{ep.name} = {ep.value} was not registered "
                              f"({type(err).__name__}: {err})", stacklevel=2)
            else:
                done.append(f"{group}:{ep.name}")
    return done


load_plugins()
