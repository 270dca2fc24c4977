"""The EvoSearchSampler node (and the record saver): evosearch's test-time search inside ComfyUI.

The search runs through :class:`evosearch.pipelines.kdiffusion.KDiffusionStepper` over
ComfyUI's own guided model call. ComfyUI entry points used (all imported lazily, so this
module imports without ComfyUI):

* ``comfy.sample.fix_empty_latent_channels`` — as ComfyUI's KSampler node does;
* ``comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps)`` — the sigmas of the
  chosen scheduler (``model.get_model_object("model_sampling")``);
* ``comfy.samplers.CFGGuider(model)`` with ``set_conds`` / ``set_cfg`` / ``sample`` — model
  loading, conditioning, patches, hooks and CFG exactly as for SamplerCustomAdvanced;
* ``comfy.samplers.KSAMPLER(sampler_function)`` — the custom-sampler extension point: the
  search is the sampler function, ``denoised = model(x, sigma, **extra_args)`` its denoiser;
* ``comfy.model_sampling.CONST`` — flow models (x = (1 - sigma) x0 + sigma eps) versus the
  k-diffusion ``x = x0 + sigma eps`` of every other model sampling;
* ``comfy.utils.ProgressBar`` — progress (NFE spent of the budget) and a preview of the best
  sample so far;
* ``comfy.model_management.processing_interrupted`` — the search's ``stop``: an interrupt
  returns the best candidate so far (or aborts, per ``on_interrupt``);
* ``folder_paths`` — the output folder of the record saver.
"""

from __future__ import annotations

import json
import logging
import math
import os
from types import SimpleNamespace

import torch

CATEGORY = "sampling/evosearch"
REWARD_TYPE = "REWARD"

#: search methods that run on a k-diffusion Stepper (TTS-VAR and Tree-of-Frames need other model kinds)
METHOD_CHOICES = ("evosearch", "best-of-n", "zero-order", "paths", "particles")
ON_INTERRUPT = ("return best so far", "abort")
#: ComfyUI's scheduler names, for INPUT_TYPES when ComfyUI is not importable (tests, docs)
FALLBACK_SCHEDULERS = ("simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                       "linear_quadratic", "kl_optimal")
PREVIEW_MAX_SIZE = 512


def comfy_modules() -> SimpleNamespace:
    """ComfyUI's modules this node pack uses (imported on first use)."""
    import comfy.model_management
    import comfy.model_sampling
    import comfy.sample
    import comfy.samplers
    import comfy.utils

    return SimpleNamespace(samplers=comfy.samplers, sample=comfy.sample, model_management=comfy.model_management,
                           utils=comfy.utils, model_sampling=comfy.model_sampling)


def scheduler_names() -> list[str]:
    try:
        import comfy.samplers

        return list(comfy.samplers.KSampler.SCHEDULERS)
    except Exception:  # ComfyUI not importable: the names of its current release
        return list(FALLBACK_SCHEDULERS)


def make_method(name: str, population: int = 0, mutation_rate: float = 0.2):
    """A search method by name. ``population`` (0: sized from the NFE budget): best-of-n's N,
    zero-order's neighbours per iteration, paths' kept paths, particles' particle count; EvoSearch
    sizes its populations from the budget and takes ``mutation_rate``."""
    from evosearch.search import BestOfN, EvoSearch, ParticleSearch, PathSearch, ZeroOrderSearch

    pop = int(population) if population else None
    if pop is not None and pop < 0:
        raise ValueError(f"population: must be >= 0 (0: sized from nfe_budget), got {population}")
    if name == "evosearch":
        return EvoSearch(mutation_rate=float(mutation_rate))
    if name == "best-of-n":
        return BestOfN(n=pop)
    if name == "zero-order":
        return ZeroOrderSearch() if pop is None else ZeroOrderSearch(n_neighbors=pop)
    if name == "paths":
        return PathSearch() if pop is None else PathSearch(n_keep=pop, width=4)
    if name == "particles":
        return ParticleSearch(n_particles=pop)
    raise ValueError(f"method: unknown method {name!r}; allowed: {', '.join(METHOD_CHOICES)}")


def bchw_to_comfy(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) float [0, 1] -> ComfyUI IMAGE (N, H, W, 3) float32 on the CPU."""
    return images.detach().float().cpu().clamp(0, 1).movedim(1, -1).contiguous()


def image_grid(images: torch.Tensor, cols: int | None = None, pad: int = 2) -> torch.Tensor:
    """(N, 3, H, W) -> one grid image (3, H', W'), row-major, ``pad`` black pixels between cells."""
    n, c, h, w = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.zeros(c, rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, dtype=images.dtype)
    for k in range(n):
        r, q = divmod(k, cols)
        grid[:, r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = images[k]
    return grid


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def record_json(record: dict) -> str:
    return json.dumps(record, indent=2, default=_json_default)


class BestLatentTracker:
    """Keeps the latent of the best sample a search scored, without re-generating it.

    Every scored generation is a ``finish`` of the Stepper (which keeps its states in
    ``last_finished``) followed by a ``"generation"`` event with the rewards in the same order;
    the best is kept as evosearch's SearchContext keeps it (first maximum, strict improvement).
    """

    def __init__(self, stepper):
        self.stepper = stepper
        self.reward = -math.inf
        self.latent: torch.Tensor | None = None
        self.image: torch.Tensor | None = None

    def __call__(self, event: dict) -> bool:
        """Update from a callback event; True when the best improved."""
        if event.get("type") != "generation" or self.stepper.last_finished is None:
            return False
        rewards = event["rewards"]
        k = max(range(len(rewards)), key=lambda j: rewards[j])
        if self.latent is not None and not rewards[k] > self.reward:
            return False
        self.reward = rewards[k]
        self.latent = self.stepper.last_finished[k:k + 1].clone()
        images = event.get("images")
        self.image = None if images is None else images[k].detach().float().cpu()
        return True


class EvoSearchSampler:
    """Test-time search (EvoSearch, best-of-N, zero-order, paths, particles) with a reward.

    Spends ``nfe_budget`` denoiser evaluations (one NFE = one guided model call for one sample
    at one step) on candidates, scores the decoded candidates with the reward and returns the
    best, the final population as a grid, and a JSON record (settings, NFE and reward calls,
    rewards per generation, the winner's lineage). One ``seed`` fixes every random number.
    """

    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT", "IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("best_latent", "best_image", "population_grid", "record_json")
    OUTPUT_TOOLTIPS = ("The latent of the best sample (decode it with any VAE Decode).",
                       "The best sample, decoded with the given VAE.",
                       "The final population, best first, as one grid image.",
                       "The search record as JSON: best_reward, complete, settings, stats (nfe, reward_calls, "
                       "decode_calls, seconds), lineage, rewards, history.")
    DESCRIPTION = ("Searches over initial noises and intermediate states for the sample with the highest reward, "
                   "within an NFE budget (evosearch).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model."}),
                "positive": ("CONDITIONING", {"tooltip": "Positive conditioning."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative conditioning."}),
                "latent_image": ("LATENT", {"tooltip": "The latent to sample (its first item; a full denoise)."}),
                "vae": ("VAE", {"tooltip": "Decodes candidates for the reward."}),
                "reward": (REWARD_TYPE, {"tooltip": "What the search maximises (an evosearch reward loader)."}),
                "reward_prompt": ("STRING", {"multiline": True, "default": "",
                                             "tooltip": "The text the reward scores against (usually the positive "
                                                        "prompt; 'digit 3' for the digit classifier)."}),
                "method": (list(METHOD_CHOICES), {"default": "evosearch"}),
                "nfe_budget": ("INT", {"default": 200, "min": 1, "max": 1_000_000,
                                       "tooltip": "Denoiser evaluations to spend (samples x steps); never exceeded."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                "scheduler": (scheduler_names(), {"default": "normal",
                                                  "tooltip": "ComfyUI scheduler that sets the sigmas."}),
                "eta": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                  "tooltip": "Noise of each step: 1 ancestral, 0 deterministic (EvoSearch and "
                                             "particles need > 0)."}),
            },
            "optional": {
                "population": ("INT", {"default": 0, "min": 0, "max": 10000,
                                       "tooltip": "0: sized from the budget. best-of-n: N; zero-order: neighbours; "
                                                  "paths: kept paths; particles: particles (EvoSearch: unused)."}),
                "mutation_rate": ("FLOAT", {"default": 0.2, "min": 0.01, "max": 1.0, "step": 0.01,
                                            "tooltip": "EvoSearch's mutation strength of initial noises."}),
                "max_batch_size": ("INT", {"default": 8, "min": 1, "max": 1024,
                                           "tooltip": "Samples per model call (bounds memory)."}),
                "on_interrupt": (list(ON_INTERRUPT), {"default": ON_INTERRUPT[0],
                                                      "tooltip": "What Cancel does: keep the best sample so far and "
                                                                 "let the workflow finish, or abort the prompt."}),
            },
        }

    def sample(self, model, positive, negative, latent_image, vae, reward, reward_prompt, method, nfe_budget, seed,
               steps, cfg, scheduler, eta, population=0, mutation_rate=0.2, max_batch_size=8,
               on_interrupt=ON_INTERRUPT[0]):
        out, best_latent, info = run_search(model, positive, negative, latent_image, vae, reward, reward_prompt,
                                            method=method, nfe_budget=nfe_budget, seed=seed, steps=steps, cfg=cfg,
                                            scheduler=scheduler, eta=eta, population=population,
                                            mutation_rate=mutation_rate, max_batch_size=max_batch_size,
                                            on_interrupt=on_interrupt)
        record = out.to_record()
        record["comfyui"] = info
        best_image = bchw_to_comfy(out.best.image[None])
        grid = bchw_to_comfy(image_grid(out.images)[None])
        latent = {"samples": best_latent}
        return (latent, best_image, grid, record_json(record))


def run_search(model, positive, negative, latent_image, vae, reward, reward_prompt, *, method="evosearch",
               nfe_budget=200, seed=0, steps=20, cfg=8.0, scheduler="normal", eta=1.0, population=0,
               mutation_rate=0.2, max_batch_size=8, on_interrupt=ON_INTERRUPT[0]):
    """Run one search with ComfyUI's guided model call; returns (SearchPipelineOutput with
    ``output_type="pt"``, the best latent (1, ...) as ComfyUI latents, a dict for the record)."""
    from evosearch import SearchPipeline
    from evosearch.pipelines.kdiffusion import KDiffusionStepper, kdiffusion_schedule
    from evosearch.rewards.base import Reward

    cm = comfy_modules()
    mm = cm.model_management
    if not isinstance(reward, Reward):
        raise TypeError(f"reward: expected an evosearch REWARD (from an evosearch reward loader node), "
                        f"got {type(reward).__name__}")
    if on_interrupt not in ON_INTERRUPT:
        raise ValueError(f"on_interrupt: must be one of {ON_INTERRUPT}, got {on_interrupt!r}")
    if latent_image.get("noise_mask") is not None:
        raise ValueError("latent_image: has a noise mask (inpainting), which EvoSearchSampler does not support; "
                         "use a latent without a mask")
    search_method = make_method(method, population, mutation_rate)
    samples = cm.sample.fix_empty_latent_channels(model, latent_image["samples"])[:1]
    empty = not bool(torch.count_nonzero(samples))
    model_sampling = model.get_model_object("model_sampling")
    flow = isinstance(model_sampling, cm.model_sampling.CONST)
    sigmas = cm.samplers.calculate_sigmas(model_sampling, scheduler, int(steps)).detach().float().cpu()
    try:
        kdiffusion_schedule(sigmas, "flow" if flow else "ve", float(eta))
    except ValueError as e:
        raise ValueError(f"scheduler: {scheduler!r} at {steps} steps gives sigmas this sampler cannot use: {e}") from e
    # bad budgets / population sizes fail before any model loads (some schedulers add a step: ddim_uniform)
    search_method.plan(int(nfe_budget), len(sigmas) - 1)
    sigma_max = float(model_sampling.sigma_max)
    # ComfyUI's max_denoise (comfy.samplers.Sampler.max_denoise): a full denoise starts from unit-variance noise
    max_denoise = (not flow) and (math.isclose(sigma_max, float(sigmas[0]), rel_tol=1e-5)
                                  or float(sigmas[0]) > sigma_max)
    latent_format = model.get_model_object("latent_format")
    base_model = getattr(model, "model", model)
    config = getattr(base_model, "model_config", None)
    model_name = type(base_model).__name__ + ("" if config is None else f"/{type(config).__name__}")
    batch = max(1, min(int(max_batch_size), int(nfe_budget)))  # what the memory estimate of model loading sees
    result = {}

    def search_function(k_model, x, k_sigmas, extra_args=None, callback=None, disable=None):
        """KSAMPLER's sampler function: k_model(x, sigma, **extra_args) -> denoised."""
        extra_args = {} if extra_args is None else extra_args

        def denoise(xx, sigma):
            return k_model(xx, sigma, **extra_args)

        def decode(x0):
            images = vae.decode(latent_format.process_out(x0))
            # loading the VAE may have unloaded the sampling models (low VRAM): load those back
            needed = getattr(guider, "loaded_models", None) or [model]
            loaded = mm.loaded_models()
            missing = [m for m in needed if not any(m is lm for lm in loaded)]
            if missing:
                mm.load_models_gpu(missing)
            if images.ndim != 4:
                raise ValueError(f"vae: decoded latents to shape {tuple(images.shape)}; EvoSearchSampler needs "
                                 f"images (N, H, W, C)")
            return images.movedim(-1, 1)

        init = None  # x is the noise-free start: latent (VE) or (1 - sigma_0) * latent (flow), as model latents
        if not empty:
            a0 = 1.0 - float(k_sigmas[0]) if flow else 1.0
            init = x[:1] / a0 if a0 > 0 else None
        stepper = KDiffusionStepper(denoise, k_sigmas, tuple(x.shape[1:]), decode,
                                    parameterization="flow" if flow else "ve", max_batch_size=int(max_batch_size),
                                    eta=float(eta), device=x.device, dtype=torch.float32, init_latent=init,
                                    max_denoise=max_denoise, guidance_scale=float(cfg), name=model_name)
        search = SearchPipeline.from_stepper(stepper, reward, search_method)
        tracker = BestLatentTracker(stepper)
        pbar = cm.utils.ProgressBar(int(nfe_budget))

        def progress(value, preview=None):
            try:
                pbar.update_absolute(min(int(value), int(nfe_budget)), int(nfe_budget), preview)
            except mm.InterruptProcessingException:  # the progress hook saw Cancel: keep it for `stop`
                mm.interrupt_current_processing(True)

        def on_event(event):
            improved = tracker(event)
            if event.get("type") == "generation":
                logging.info("[evosearch] generation %s: %d scored, best reward %.6g, %d/%d NFE", event["generation"],
                             len(event["rewards"]), event["best_reward"], event["nfe"], int(nfe_budget))
            preview = None
            if improved and tracker.image is not None:
                from PIL import Image

                arr = (tracker.image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                preview = ("JPEG", Image.fromarray(arr), PREVIEW_MAX_SIZE)
            progress(event.get("nfe", 0), preview)

        out = search(reward_prompt, seed=int(seed), num_inference_steps=stepper.default_num_inference_steps,
                     guidance_scale=float(cfg), nfe_budget=int(nfe_budget), output_type="pt",
                     callback=on_event, stop=mm.processing_interrupted, progress=False,
                     scheduler=scheduler, sampling="flow" if flow else "ve", model=model_name)
        result["out"], result["tracker"], result["stepper"] = out, tracker, stepper
        if out.best is None or tracker.latent is None:
            mm.interrupt_current_processing(True)
            mm.throw_exception_if_processing_interrupted()  # nothing scored yet: abort the prompt
            raise RuntimeError("EvoSearchSampler: the search scored no candidate")
        return tracker.latent.to(x.device, x.dtype)

    guider = cm.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(float(cfg))
    noise = torch.zeros((batch, *samples.shape[1:]), dtype=torch.float32)
    latent_batch = samples.float().expand(batch, *samples.shape[1:])
    sampler = cm.samplers.KSAMPLER(search_function)
    best = guider.sample(noise, latent_batch, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=True,
                         seed=int(seed))
    best = best.to(mm.intermediate_device())
    out = result["out"]
    if not out.complete:
        logging.info("[evosearch] interrupted after %d/%d NFE: %s", out.stats.nfe, int(nfe_budget),
                     "aborting" if on_interrupt == "abort" else "returning the best sample so far")
        if on_interrupt == "abort":
            mm.throw_exception_if_processing_interrupted()
        mm.interrupt_current_processing(False)  # keep the best so far: let the rest of the workflow run
    info = {"scheduler": scheduler, "sigmas": [float(s) for s in sigmas], "sampling": "flow" if flow else "ve",
            "model": model_name, "latent_shape": list(samples.shape[1:]),
            "cfg": float(cfg), "max_denoise": max_denoise, "on_interrupt": on_interrupt}
    return out, best, info


class EvoSearchSaveRecord:
    """Writes a JSON record (EvoSearchSampler's record_json) into ComfyUI's output folder."""

    CATEGORY = CATEGORY
    FUNCTION = "save"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    DESCRIPTION = "Saves the search record (JSON) next to the images, as <prefix>_<counter>_.json."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "record_json": ("STRING", {"forceInput": True}),
            "filename_prefix": ("STRING", {"default": "evosearch/record"}),
        }}

    def save(self, record_json, filename_prefix="evosearch/record"):
        import folder_paths

        from evosearch.io import atomic_write_bytes

        try:
            parsed = json.loads(record_json)
        except (TypeError, ValueError) as e:
            raise ValueError(f"record_json: not valid JSON: {e}") from e
        output_dir = folder_paths.get_output_directory()
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output_dir)
        name = f"{filename}_{counter:05}_.json"
        atomic_write_bytes(os.path.join(folder, name), (json.dumps(parsed, indent=2) + "\n").encode())
        return {"ui": {"evosearch_records": [{"filename": name, "subfolder": subfolder, "type": "output"}]}}
