"""What the page offers: the registry's models, methods and rewards, each option that cannot
work here (missing weights, another model's method, a video reward on an image model, hub
weights offline) left out with its reason. No gradio import: the rules are testable alone."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from typing import Callable, Mapping

from ... import registry
from ...core.validation import ParameterError, check_choice

EXAMPLES_PER_CATEGORY = 3
MAX_EXAMPLES = 12


def is_offline(timeout: float = 2.0) -> bool:
    """True when ``HF_HUB_OFFLINE`` is set, or the hub's host does not answer within ``timeout`` s."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    answered: list[bool] = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            answered.append(True)
        except OSError:
            pass

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout + 1.0)  # name resolution has no timeout of its own
    return not answered


@dataclass(frozen=True)
class Choices:
    """The options the page offers for one model, and one line per option it leaves out."""

    model: str
    methods: tuple[str, ...]
    default_method: str
    rewards: tuple[str, ...]
    default_reward: str
    default_prompt: str
    examples: tuple[tuple[str, str], ...]  # (category, prompt)
    left_out: tuple[str, ...]  # "name: why"


class Catalog:
    """The registry, filtered for this server.

    Args:
        offline: no hub downloads (None: :func:`is_offline`).
        reward_checkpoints: reward name -> local checkpoint (a reward with one needs no download).
        extra_rewards: name -> ``loader(device)`` for rewards beyond the registry's (offered for
            every model; the embedding program vouches for them).
    """

    def __init__(self, offline: bool | None = None, reward_checkpoints: Mapping[str, str] | None = None,
                 extra_rewards: Mapping[str, Callable] | None = None):
        self.offline = is_offline() if offline is None else bool(offline)
        self.reward_checkpoints = dict(reward_checkpoints or {})
        for name in self.reward_checkpoints:
            check_choice("reward_checkpoints", name, registry.REWARDS)
        self.extra_rewards = dict(extra_rewards or {})
        clash = sorted(set(self.extra_rewards) & set(registry.REWARDS))
        if clash:
            raise ParameterError(f"extra_rewards: {clash[0]!r} is already a registry reward; pick another name")
        self.missing_models = {m: why for m in registry.MODELS if (why := registry.model_unavailable(m))}
        self.models = tuple(m for m in registry.MODELS if m not in self.missing_models)
        if not self.models:
            raise ParameterError("model: no bundled model has its weights here: "
                                 + "; ".join(self.missing_models.values()))

    # -- defaults ----------------------------------------------------------------------
    def default_model(self) -> tuple[str, str | None]:
        """The registry's default model, or the first available one and a notice saying why."""
        preferred = registry.DEFAULT_MODEL
        if preferred in self.models:
            return preferred, None
        fallback = "digits" if "digits" in self.models else self.models[0]
        return fallback, f"{self.missing_models[preferred]}; showing {fallback} instead"

    # -- per model ---------------------------------------------------------------------
    def reward_reason(self, name: str, model: str) -> str | None:
        if name in self.extra_rewards:
            return None
        return registry.reward_unavailable(name, model, offline=self.offline,
                                           checkpoint=self.reward_checkpoints.get(name))

    def choices(self, model: str) -> Choices:
        check_choice("model", model, self.models)
        left_out = list(self.missing_models.values())
        methods = []
        for name in registry.METHODS:
            why = registry.method_unavailable(name, model)
            if why is None:
                methods.append(name)
            else:
                left_out.append(why)
        rewards = []
        for name in [*registry.REWARDS, *self.extra_rewards]:
            why = self.reward_reason(name, model)
            if why is None:
                rewards.append(name)
            else:
                left_out.append(why)
        default_reward = registry.default_reward(model)
        if default_reward not in rewards:
            default_reward = rewards[0] if rewards else ""
        examples = tuple((category, prompt) for category, prompts in registry.model_examples(model).items()
                         for prompt in prompts[:EXAMPLES_PER_CATEGORY])[:MAX_EXAMPLES]
        default_method = "evosearch" if "evosearch" in methods else methods[0]
        return Choices(model, tuple(methods), default_method, tuple(rewards), default_reward,
                       registry.MODELS[model].default_prompt, examples, tuple(left_out))

    def check(self, model, method, rewards) -> None:
        """A ParameterError (naming the parameter and why) for an option this server does not offer."""
        if model in self.missing_models:
            raise ParameterError(f"model: {self.missing_models[model]}")
        check_choice("model", model, self.models)
        check_choice("method", method, registry.METHODS)
        why = registry.method_unavailable(method, model)
        if why is not None:
            raise ParameterError(f"method: {why}")
        for name in rewards:
            if name not in self.extra_rewards:
                check_choice("reward", name, registry.REWARDS)
            why = self.reward_reason(name, model)
            if why is not None:
                raise ParameterError(f"reward: {why}")

    def load_reward(self, name: str, device: str):
        if name in self.extra_rewards:
            return self.extra_rewards[name](device)
        return registry.load_reward(name, self.reward_checkpoints.get(name), device)
