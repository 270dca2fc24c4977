"""What EvoSearchSampler checks and derives from its inputs before any model loads.

Everything here runs before ComfyUI loads the model for sampling, so a bad input fails in
about a second with a message naming the input, never after minutes of sampling:

* the search method, built by :func:`evosearch.registry.build_method` (the one table of
  methods and of what "population" means for each);
* the latent: image latents (B, C, H, W) only, no inpainting mask; each of the B items is
  searched on its own;
* the sigmas of ``steps``, ``scheduler`` and ``denoise``, taken from ComfyUI's own
  ``KSampler`` so that partial denoising starts exactly where the stock KSampler starts;
* the reward prompt (empty: the positive prompt's text, read from the workflow), by scoring one
  blank image with the reward.
"""

from __future__ import annotations

import math

import torch

from evosearch.core.validation import ParameterError, check_choice, check_int, check_number, describe
from evosearch.registry import METHOD_SUMMARIES, METHODS, POPULATION_PARAMETER, build_method, method_options

#: the nodes' menu category, and the socket type of evosearch rewards
CATEGORY = "sampling/evosearch"
REWARD_TYPE = "REWARD"
#: ComfyUI's scheduler names, for INPUT_TYPES when ComfyUI is not importable (tests, docs)
FALLBACK_SCHEDULERS = ("simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                       "linear_quadratic", "kl_optimal")
#: the blank image the reward prompt is checked with
PROBE_SIZE = 64


def method_choices() -> tuple[str, ...]:
    """The registry's methods that run on ComfyUI's model call: those whose requirements a stochastic
    k-diffusion Stepper meets (TTS-VAR and Tree-of-Frames need other model kinds)."""
    from evosearch.pipelines.kdiffusion import KDiffusionStepper  # imports diffusers: only when asked

    can = KDiffusionStepper.base_capabilities | {"stochastic"}
    return tuple(name for name, cls in METHODS.items() if cls.requires <= can)


def scheduler_names() -> list[str]:
    try:
        import comfy.samplers

        return list(comfy.samplers.KSampler.SCHEDULERS)
    except Exception:  # ComfyUI not importable: the names of its current release
        return list(FALLBACK_SCHEDULERS)


def method_tooltip() -> str:
    return "The search method. " + "; ".join(f"{name}: {METHOD_SUMMARIES[name]}" for name in method_choices()) + "."


def population_tooltip() -> str:
    uses = "; ".join(f"{name}: {param}" if param else f"{name}: unused (sized from nfe_budget)"
                     for name, param in POPULATION_PARAMETER.items() if name in method_choices())
    return f"0: sized from nfe_budget. Otherwise the method's population parameter — {uses}."


def search_method(method: str, population: int = 0, mutation_rate: float = 0.2):
    """The registry's method ``method`` with the node's ``population`` (0: sized from the budget) and,
    for EvoSearch, ``mutation_rate``."""
    check_choice("method", method, method_choices())
    population = check_int("population", population, lo=0, hint=" (0: sized from nfe_budget)")
    options = {}
    if "mutation_rate" in method_options(method):  # EvoSearch's; the other methods have no such option
        options["mutation_rate"] = check_number("mutation_rate", mutation_rate, 0.0, 1.0, lo_open=True)
    return build_method(method, population or None, **options)


def check_latent(latent_image) -> torch.Tensor:
    """The latent's samples (B, C, H, W): video latents and inpainting masks are refused."""
    if not isinstance(latent_image, dict) or not isinstance(latent_image.get("samples"), torch.Tensor):
        raise ParameterError(f"latent_image: expected a LATENT (a dict with a 'samples' tensor), "
                             f"got {describe(latent_image)}")
    samples = latent_image["samples"]
    if samples.ndim == 5:
        raise ParameterError(f"latent_image: is a video latent {tuple(samples.shape)} (batch, channels, frames, "
                             f"height, width); EvoSearchSampler searches image latents (batch, channels, height, "
                             f"width) only — use an image model's latent (e.g. Empty Latent Image)")
    if samples.ndim != 4:
        raise ParameterError(f"latent_image: expected an image latent (batch, channels, height, width), got shape "
                             f"{tuple(samples.shape)}")
    if samples.shape[0] < 1:
        raise ParameterError("latent_image: the batch is empty")
    if latent_image.get("noise_mask") is not None:
        raise ParameterError("latent_image: has a noise mask (inpainting), which EvoSearchSampler does not support; "
                             "use a latent without a mask")
    return samples


def search_sigmas(samplers, model, scheduler: str, steps: int, denoise: float) -> torch.Tensor:
    """The sigmas the stock KSampler samples ``steps`` steps with at ``denoise`` (ComfyUI's own
    ``KSampler.set_steps``: for ``denoise < 1`` the last ``steps + 1`` sigmas of a schedule of
    ``int(steps / denoise)`` steps), on the CPU."""
    steps = check_int("steps", steps, lo=1)
    denoise = check_number("denoise", denoise, 0.0, 1.0, lo_open=True,
                           hint=" (1: from pure noise; 0.5: keep half of the input latent's structure)")
    names = list(samplers.KSampler.SCHEDULERS)
    check_choice("scheduler", scheduler, names)  # KSampler would silently use another one
    sigmas = samplers.KSampler(model, steps=steps, device="cpu", sampler="euler", scheduler=scheduler,
                               denoise=denoise).sigmas
    return sigmas.detach().float().cpu()


def check_sigmas(sigmas: torch.Tensor, flow: bool, eta: float, scheduler: str, steps: int, denoise: float):
    from evosearch.pipelines.kdiffusion import kdiffusion_schedule

    try:
        kdiffusion_schedule(sigmas, "flow" if flow else "ve", float(eta))
    except ValueError as e:
        raise ParameterError(f"scheduler: {scheduler!r} at {steps} steps (denoise {denoise:g}) gives sigmas this "
                             f"sampler cannot use: {e}") from e


def max_denoise(model_sampling, sigmas: torch.Tensor, flow: bool) -> bool:
    """ComfyUI's ``Sampler.max_denoise``: a full denoise of a VE model starts from unit-variance noise."""
    if flow:
        return False
    sigma_max = float(model_sampling.sigma_max)
    return math.isclose(sigma_max, float(sigmas[0]), rel_tol=1e-5) or float(sigmas[0]) > sigma_max


#: inputs of text encoder nodes that hold the prompt text, in the order they are tried
TEXT_INPUTS = ("text", "text_g", "t5xxl", "prompt")
#: inputs of string nodes (primitives) a text input may be linked to
STRING_INPUTS = ("value", "text", "string")


def conditioning_text(graph, node_id, input_name: str = "positive", depth: int = 16) -> tuple[str, str] | None:
    """(text, where) of the text encoder that feeds ``input_name`` of node ``node_id`` in ComfyUI's prompt
    graph (the hidden ``PROMPT`` input): links are followed back through nodes' ``conditioning`` inputs to
    a node with its text in the workflow (CLIP Text Encode), or to a string node linked to its text input.
    None when the text is not in the graph (computed by a node, or no graph)."""
    if not isinstance(graph, dict):
        return None
    link = (graph.get(str(node_id)) or {}).get("inputs", {}).get(input_name)
    for _ in range(depth):
        if not (isinstance(link, list) and len(link) == 2):
            return None
        source = graph.get(str(link[0])) or {}
        inputs = source.get("inputs", {})
        where = f"node {link[0]} ({source.get('class_type', '?')})"
        for key in TEXT_INPUTS:
            value = inputs.get(key)
            if isinstance(value, list) and len(value) == 2:  # linked to a string node
                strings = (graph.get(str(value[0])) or {}).get("inputs", {})
                value = next((strings[k] for k in STRING_INPUTS if isinstance(strings.get(k), str)), None)
            if isinstance(value, str) and value.strip():
                return value, where
        link = inputs.get("conditioning")
    return None


def resolve_reward_prompt(reward_prompt, graph=None, node_id=None) -> tuple[str, str]:
    """(the text the reward scores against, where it came from): ``reward_prompt`` itself, or when it is
    empty the positive conditioning's text (see :func:`conditioning_text`)."""
    if not isinstance(reward_prompt, str):
        raise ParameterError(f"reward_prompt: must be a string, got {describe(reward_prompt)}")
    if reward_prompt.strip():
        return reward_prompt, "reward_prompt"
    found = conditioning_text(graph, node_id)
    if found is None:
        raise ParameterError("reward_prompt: is empty, and the text of the positive conditioning is not in the "
                             "workflow (it does not come from a CLIP Text Encode node with its text typed in); type "
                             "the text the reward should score into reward_prompt")
    text, where = found
    return text, f"the positive conditioning's text ({where})"


def check_reward_prompt(reward, prompt) -> None:
    """Score one blank image with ``prompt`` before any sampling: a reward that cannot use the prompt
    (the digit classifier asked for "a cat") fails now, naming ``reward_prompt``."""
    if not isinstance(prompt, str):
        raise ParameterError(f"reward_prompt: must be a string, got {describe(prompt)}")
    try:
        reward(torch.full((1, 3, PROBE_SIZE, PROBE_SIZE), 0.5), prompt)
    except Exception as err:
        name = getattr(reward, "name", type(reward).__name__)
        raise ParameterError(f"reward_prompt: the reward {name} cannot score the prompt {describe(prompt)} "
                             f"(checked on a blank image before sampling): {err}") from err


__all__ = ["CATEGORY", "REWARD_TYPE", "method_choices", "FALLBACK_SCHEDULERS", "scheduler_names", "method_tooltip", "population_tooltip",
           "search_method", "check_latent", "search_sigmas", "check_sigmas", "max_denoise", "check_reward_prompt",
           "conditioning_text", "resolve_reward_prompt"]
