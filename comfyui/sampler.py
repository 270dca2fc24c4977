"""The EvoSearchSampler node: evosearch's test-time search inside ComfyUI.

The search runs through :class:`evosearch.pipelines.kdiffusion.KDiffusionStepper` over
ComfyUI's own guided model call. ComfyUI entry points used (all imported lazily, so this
module imports without ComfyUI):

* ``comfy.sample.fix_empty_latent_channels`` — as ComfyUI's KSampler node does;
* ``comfy.samplers.KSampler(model, steps, device, sampler, scheduler, denoise).sigmas`` — the
  sigmas the stock KSampler samples with, including partial denoise;
* ``comfy.samplers.CFGGuider(model)`` with ``set_conds`` / ``set_cfg`` / ``sample`` — model
  loading, conditioning, patches, hooks and CFG exactly as for SamplerCustomAdvanced;
* ``comfy.samplers.KSAMPLER(sampler_function)`` — the custom-sampler extension point: the
  search is the sampler function, ``denoised = model(x, sigma, **extra_args)`` its denoiser;
* ``comfy.model_sampling.CONST`` — flow models (x = (1 - sigma) x0 + sigma eps) versus the
  k-diffusion ``x = x0 + sigma eps`` of every other model sampling;
* ``comfy.utils.ProgressBar`` and ``comfy.model_management.processing_interrupted`` — progress
  per micro-batch and Cancel (see :mod:`.progress`);
* ``folder_paths`` — the output folder of the record saver (:mod:`.record`).

A batch of B latents is searched latent by latent (B searches, each with the whole
``nfe_budget``; latent k with seed ``seed + k``), and the outputs are stacked in the same order.
The seed is KSampler's noise seed: each search's first candidate starts from the noise the stock
KSampler draws for it (``comfy.sample.prepare_noise``).
"""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import torch

from evosearch.core.validation import ParameterError, check_choice, check_int, check_number, describe

from .inputs import (CATEGORY, REWARD_TYPE, check_latent, check_reward_prompt, check_sigmas, max_denoise,
                     method_choices, method_tooltip, population_tooltip, resolve_reward_prompt, scheduler_names,
                     search_method, search_sigmas)
from .progress import BestLatentTracker, ComfyProgress
from .record import record_json

ON_INTERRUPT = ("return best so far", "abort")


def comfy_modules() -> SimpleNamespace:
    """ComfyUI's modules this node pack uses (imported on first use)."""
    import comfy.model_management
    import comfy.model_sampling
    import comfy.sample
    import comfy.samplers
    import comfy.utils

    return SimpleNamespace(samplers=comfy.samplers, sample=comfy.sample, model_management=comfy.model_management,
                           utils=comfy.utils, model_sampling=comfy.model_sampling)


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


def stack_padded(images: list[torch.Tensor]) -> torch.Tensor:
    """Images (3, H_k, W_k) as one batch (N, 3, H, W), black-padded to the largest size."""
    h, w = max(i.shape[1] for i in images), max(i.shape[2] for i in images)
    out = torch.zeros(len(images), images[0].shape[0], h, w, dtype=images[0].dtype)
    for k, img in enumerate(images):
        out[k, :, :img.shape[1], :img.shape[2]] = img
    return out


class _NothingScored(Exception):
    """A latent's search was interrupted before it scored any candidate."""


class EvoSearchSampler:
    """Test-time search (EvoSearch, best-of-N, zero-order, paths, particles) with a reward.

    Spends ``nfe_budget`` denoiser evaluations (one NFE = one guided model call for one sample
    at one step) on candidates, scores the decoded candidates with the reward and returns the
    best, the final population as a grid, and a JSON record (settings, NFE and reward calls,
    rewards per generation, the winner's lineage, the judge's verdict). One ``seed`` fixes every
    random number; it is KSampler's noise seed for the first candidate.
    """

    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT", "IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("best_latent", "best_image", "population_grid", "record_json")
    OUTPUT_TOOLTIPS = ("The latent of the best sample of each input latent (decode it with any VAE Decode).",
                       "The best sample of each input latent, decoded with the given VAE.",
                       "The final population of each input latent, best first, as one grid image.",
                       "The search record as JSON: best_reward, complete, settings, stats (nfe, planned_nfe, "
                       "reward_calls, decode_calls, seconds), lineage, rewards, judge, history (a batch: 'items').")
    DESCRIPTION = ("Searches over initial noises and intermediate states for the sample with the highest reward, "
                   "within an NFE budget (evosearch). Each latent of a batch is searched on its own.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model (image models; video models are refused)."}),
                "positive": ("CONDITIONING", {"tooltip": "The conditioning the samples should follow."}),
                "negative": ("CONDITIONING", {"tooltip": "The conditioning to steer away from (used with cfg)."}),
                "latent_image": ("LATENT", {"tooltip": "The latent(s) to sample. Each latent of a batch is searched "
                                                       "on its own (latent k with seed + k); an empty latent starts "
                                                       "from noise, another one is partly noised per denoise."}),
                "vae": ("VAE", {"tooltip": "Decodes candidates for the reward."}),
                "reward": (REWARD_TYPE, {"tooltip": "What the search maximises (an evosearch reward loader)."}),
                "reward_prompt": ("STRING", {"multiline": True, "default": "",
                                             "tooltip": "The text the reward scores against. Empty: the positive "
                                                        "prompt's text (from the CLIP Text Encode node feeding "
                                                        "positive). 'digit 3' for the digit classifier. Checked "
                                                        "with the reward before sampling."}),
                "method": (list(method_choices()), {"default": "evosearch", "tooltip": method_tooltip()}),
                "nfe_budget": ("INT", {"default": 200, "min": 1, "max": 1_000_000,
                                       "tooltip": "Denoiser evaluations to spend per latent (samples x steps); "
                                                  "never exceeded."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "KSampler's noise seed: the first candidate starts from the noise KSampler "
                                            "draws for it (population 1 at eta 0 gives KSampler's euler image); "
                                            "it also fixes every other random number of the search (latent k of "
                                            "a batch: seed + k)."}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000,
                                  "tooltip": "Denoising steps of each candidate (as KSampler's steps)."}),
                "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Classifier-free guidance scale (as KSampler's cfg)."}),
                "scheduler": (scheduler_names(), {"default": "normal",
                                                  "tooltip": "ComfyUI scheduler that sets the sigmas (as KSampler's)."}),
                "eta": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                  "tooltip": "Noise of each step: 1 ancestral (euler_ancestral), 0 deterministic "
                                             "(euler). EvoSearch and particles need > 0."}),
            },
            "optional": {
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                                      "tooltip": "As KSampler's denoise: 1 samples from pure noise; below 1 the "
                                                 "search starts from the input latent noised to the matching "
                                                 "level (image to image)."}),
                "population": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": population_tooltip()}),
                "mutation_rate": ("FLOAT", {"default": 0.2, "min": 0.01, "max": 1.0, "step": 0.01,
                                            "tooltip": "EvoSearch's mutation strength of initial noises (other "
                                                       "methods: unused)."}),
                "max_batch_size": ("INT", {"default": 8, "min": 1, "max": 1024,
                                           "tooltip": "Samples per model call (bounds memory). Progress and Cancel "
                                                      "are checked after each such call."}),
                "on_interrupt": (list(ON_INTERRUPT), {"default": ON_INTERRUPT[0],
                                                      "tooltip": "What Cancel does: keep the best sample so far and "
                                                                 "let the workflow finish, or abort the prompt."}),
                "judge": (REWARD_TYPE, {"tooltip": "Optional: a held-out reward the search does not optimise; its "
                                                   "verdict on the best and on plain samples goes into the record "
                                                   "(and warns when the reward rose but the judge's score fell)."}),
            },
            "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"},
        }

    def sample(self, model, positive, negative, latent_image, vae, reward, reward_prompt, method, nfe_budget, seed,
               steps, cfg, scheduler, eta, denoise=1.0, population=0, mutation_rate=0.2, max_batch_size=8,
               on_interrupt=ON_INTERRUPT[0], judge=None, prompt=None, unique_id=None):
        reward_prompt, source = resolve_reward_prompt(reward_prompt, prompt, unique_id)
        outs, latents, info = run_search(model, positive, negative, latent_image, vae, reward, reward_prompt,
                                         method=method, nfe_budget=nfe_budget, seed=seed, steps=steps, cfg=cfg,
                                         scheduler=scheduler, eta=eta, denoise=denoise, population=population,
                                         mutation_rate=mutation_rate, max_batch_size=max_batch_size,
                                         on_interrupt=on_interrupt, judge=judge)
        info["reward_prompt_from"] = source
        if len(outs) == 1 and info["batch_size"] == 1:
            record = outs[0].to_record()
        else:
            record = {"complete": len(outs) == info["batch_size"] and all(o.complete for o in outs),
                      "batch_size": info["batch_size"], "items": [o.to_record() for o in outs]}
        record["comfyui"] = info
        best = bchw_to_comfy(torch.stack([best_image(o) for o in outs]))
        grids = bchw_to_comfy(stack_padded([image_grid(o.images if o.best else best_image(o)[None]) for o in outs]))
        return ({"samples": latents}, best, grids, record_json(record))


def best_image(out) -> torch.Tensor:
    """The best sample of a search, or its best x0 preview when Cancel came before any sample was scored."""
    return out.best.image if out.best is not None else out.preview.image


def model_name_of(model) -> str:
    base = getattr(model, "model", model)
    config = getattr(base, "model_config", None)
    return type(base).__name__ + ("" if config is None else f"/{type(config).__name__}")


def run_search(model, positive, negative, latent_image, vae, reward, reward_prompt, *, method="evosearch",
               nfe_budget=200, seed=0, steps=20, cfg=8.0, scheduler="normal", eta=1.0, denoise=1.0, population=0,
               mutation_rate=0.2, max_batch_size=8, on_interrupt=ON_INTERRUPT[0], judge=None):
    """Search each latent of ``latent_image`` with ComfyUI's guided model call. Returns (one
    SearchPipelineOutput per searched latent, with ``output_type="pt"``; their best latents stacked as
    ComfyUI latents; a dict for the record). Every input is checked before the model loads."""
    from evosearch import SearchPipeline
    from evosearch.core.stepper import check_capabilities
    from evosearch.pipelines.kdiffusion import KDiffusionStepper
    from evosearch.rewards.base import Reward

    cm = comfy_modules()
    mm = cm.model_management
    # -- every check before the model loads ------------------------------------------------------
    for name, r in (("reward", reward), ("judge", judge)):
        if not isinstance(r, Reward) and not (name == "judge" and r is None):
            raise ParameterError(f"{name}: expected an evosearch REWARD (from an evosearch reward loader node), "
                                 f"got {describe(r)}")
    check_choice("on_interrupt", on_interrupt, ON_INTERRUPT)
    nfe_budget, seed = check_int("nfe_budget", nfe_budget, lo=1), check_int("seed", seed, lo=0)
    cfg, eta = check_number("cfg", cfg, lo=0.0), check_number("eta", eta, 0.0, 1.0)
    max_batch_size = check_int("max_batch_size", max_batch_size, lo=1)
    method_obj = search_method(method, population, mutation_rate)
    samples = check_latent(latent_image)
    samples = check_latent({"samples": cm.sample.fix_empty_latent_channels(model, samples)})
    model_sampling = model.get_model_object("model_sampling")
    flow = isinstance(model_sampling, cm.model_sampling.CONST)
    sigmas = search_sigmas(cm.samplers, model, scheduler, steps, denoise)
    check_sigmas(sigmas, flow, eta, scheduler, steps, denoise)
    start_max = max_denoise(model_sampling, sigmas, flow)
    latent_format = model.get_model_object("latent_format")
    name = model_name_of(model)
    guider = cm.samplers.CFGGuider(model)
    call = {}  # the model call of the sampler function now running

    def denoise_fn(x, sigma):
        return call["model"](x, sigma, **call["extra_args"])

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

    stepper = KDiffusionStepper(denoise_fn, sigmas, tuple(samples.shape[1:]), decode,
                                parameterization="flow" if flow else "ve", max_batch_size=max_batch_size, eta=eta,
                                device=getattr(model, "load_device", None), dtype=torch.float32,
                                max_denoise=start_max, guidance_scale=cfg, name=name)
    search = SearchPipeline.from_stepper(stepper, reward, method_obj, judge=judge)
    plan = method_obj.plan(nfe_budget, stepper.default_num_inference_steps)
    check_capabilities(method_obj.name, method_obj.requirements(plan), stepper)
    check_reward_prompt(reward, reward_prompt)

    # -- one search per latent -------------------------------------------------------------------
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    progress = ComfyProgress(cm.utils, mm, plan.nfe, items=samples.shape[0])
    batch = max(1, min(max_batch_size, plan.nfe))  # what the memory estimate of model loading sees
    outs, latents, unscored_nfe = [], [], 0
    for k in range(samples.shape[0]):
        item, done = samples[k:k + 1], {}
        tracker = BestLatentTracker(stepper)
        progress.start_item(k, tracker)

        def search_function(k_model, x, k_sigmas, extra_args=None, callback=None, disable=None):
            """KSAMPLER's sampler function: k_model(x, sigma, **extra_args) -> denoised."""
            call.update(model=k_model, extra_args=extra_args or {})
            stepper.pipe.device = x.device
            init = None  # x is the noise-free start: latent (VE) or (1 - sigma_0) * latent (flow), as model latents
            if bool(torch.count_nonzero(item)):
                a0 = 1.0 - float(k_sigmas[0]) if flow else 1.0
                init = x[:1] / a0 if a0 > 0 else None
            stepper.set_init_latent(init)
            out = search(reward_prompt, seed=seed + k, first_noise_seed=seed + k,
                         num_inference_steps=stepper.default_num_inference_steps, guidance_scale=cfg,
                         nfe_budget=nfe_budget, output_type="pt", callback=progress.callback, stop=progress.stop,
                         progress=False, scheduler=scheduler, sampling="flow" if flow else "ve", model=name,
                         denoise=float(denoise))
            done["out"] = out
            if out.best is None or tracker.latent is None:
                if out.preview is None or on_interrupt == "abort":
                    raise _NothingScored()
                return out.preview.latent.to(x.device, x.dtype)  # the best x0 preview of the rows in hand
            return tracker.latent.to(x.device, x.dtype)

        noise = torch.zeros((batch, *item.shape[1:]), dtype=torch.float32)
        try:
            best = guider.sample(noise, item.float().expand(batch, *item.shape[1:]),
                                 cm.samplers.KSAMPLER(search_function), sigmas, denoise_mask=None, callback=None,
                                 disable_pbar=True, seed=seed + k)
        except _NothingScored:
            best = None
            unscored_nfe = int(done["out"].stats.nfe)  # spent on candidates that were not scored yet
        progress.finish_item()
        if best is not None:
            outs.append(done["out"])
            latents.append(best.to(mm.intermediate_device()))
        if best is None or not done["out"].complete:
            break  # interrupted: the later latents are not searched
    if len(outs) < samples.shape[0] or not outs[-1].complete:
        spent = sum(o.stats.nfe for o in outs) + unscored_nfe
        previews = [f"latent {k}: an x0 preview at step {o.preview.step + 1}" for k, o in enumerate(outs)
                    if o.best is None]
        logging.info("[evosearch] interrupted after %d NFE (%d of %d latents with a result): %s", spent, len(outs),
                     samples.shape[0], "aborting" if on_interrupt == "abort" or not outs else
                     "returning the best samples so far" + (f" ({'; '.join(previews)})" if previews else ""))
        if on_interrupt == "abort" or not outs:
            mm.interrupt_current_processing(True)
            mm.throw_exception_if_processing_interrupted()
        mm.interrupt_current_processing(False)  # keep the best so far: let the rest of the workflow run
    info = {"scheduler": scheduler, "sigmas": [float(s) for s in sigmas], "denoise": float(denoise),
            "sampling": "flow" if flow else "ve", "model": name, "latent_shape": list(samples.shape[1:]),
            "batch_size": int(samples.shape[0]), "seeds": [seed + k for k in range(len(outs))], "cfg": cfg,
            "max_denoise": start_max, "on_interrupt": on_interrupt}
    return outs, torch.cat(latents), info


__all__ = ["EvoSearchSampler", "run_search", "comfy_modules", "image_grid", "bchw_to_comfy", "ON_INTERRUPT",
           "REWARD_TYPE", "CATEGORY"]
