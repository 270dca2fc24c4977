"""The ComfyUI node pack (``comfyui/``) and the k-diffusion Stepper it runs on.

* :class:`KDiffusionStepper` on an analytic denoiser (the Gaussian-mixture posterior mean):
  it reproduces the ``diffusion`` / ``flow`` Steppers step by step, counts NFE, uses the
  noise it is given, is deterministic, and a search winner replays from its lineage.
* The nodes' ComfyUI interface (INPUT_TYPES / RETURN_TYPES / FUNCTION, the pyproject metadata).
* EvoSearchSampler's function on a fake ComfyUI: stand-ins for ``comfy.samplers`` (CFGGuider,
  KSAMPLER, calculate_sigmas), ``comfy.sample``, ``comfy.model_management`` (interrupts),
  ``comfy.utils.ProgressBar`` and ``folder_paths`` that call the node back exactly as
  ComfyUI does, around a MODEL whose guided denoiser is analytic.
* End to end, only when ``COMFYUI_DIR`` points at a ComfyUI checkout (run with a Python that
  has ComfyUI's requirements and evosearch installed): a tiny SD1.5-layout checkpoint, a
  ComfyUI server on 127.0.0.1 with the node pack linked into a temporary base directory, a
  workflow posted to ``/prompt``, and the saved PNGs and JSON record checked.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from evosearch import SearchPipeline
from evosearch.pipelines import stepper_for
from evosearch.pipelines.kdiffusion import KDiffusionStepper, kdiffusion_schedule
from evosearch.rewards.base import FunctionReward
from evosearch.search import BestOfN, EvoSearch
from evosearch.testbed import GaussianMixture, gaussian_mixture_pipeline

REPO = Path(__file__).resolve().parent.parent
PACK_DIR = REPO / "comfyui"

GM = GaussianMixture(weights=[0.5, 0.3, 0.2], means=[[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]], variances=0.25)


def load_pack():
    """Import the node pack as ComfyUI does: a package from its folder's __init__.py."""
    name = "evosearch_comfyui_pack"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PACK_DIR / "__init__.py",
                                                  submodule_search_locations=[str(PACK_DIR)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- KDiffusionStepper
def gm_denoiser(parameterization="ve", calls=None):
    """The exact posterior mean of GM in the k-diffusion convention; states (N, 1, 1, 2)."""

    def denoise(x, sigma):
        assert sigma.shape == (x.shape[0],), "sigma: one value per row"
        if calls is not None:
            calls.append(x.shape[0])
        sig = sigma.double()
        if parameterization == "ve":
            a = 1.0 / torch.sqrt(1.0 + sig * sig)
            s, xv = sig * a, x.double().reshape(x.shape[0], -1) * a[:, None]
        else:
            a, s, xv = 1.0 - sig, sig, x.double().reshape(x.shape[0], -1)
        return GM.posterior_mean(xv, a, s).reshape(x.shape).to(x.dtype)

    return denoise


def raw_decode(x0):
    return x0.expand(-1, 3, -1, -1)


def first_coordinate(images, prompts):
    return images[:, 0, 0, 0]


def gm_stepper(parameterization="ve", steps=10, eta=1.0, max_batch_size=64, calls=None, **kw):
    family = "diffusion" if parameterization == "ve" else "flow"
    ref = stepper_for(gaussian_mixture_pipeline(GM, family=family), max_batch_size=max_batch_size, eta=eta)
    ref.prepare(None, num_inference_steps=steps)
    sched = ref.schedule
    sigmas = (sched.s / sched.a if parameterization == "ve" else sched.s).clone()
    sigmas[-1] = 0.0  # DDIM's last step ends at alpha_bar[0] for some step counts; k-diffusion ends at 0
    st = KDiffusionStepper(gm_denoiser(parameterization, calls), sigmas, (1, 1, 2), raw_decode,
                           parameterization=parameterization, max_batch_size=max_batch_size, eta=eta, **kw)
    return st, ref


@pytest.mark.parametrize("parameterization", ["ve", "flow"])
def test_kdiffusion_stepper_reproduces_the_family_stepper(parameterization):
    st, ref = gm_stepper(parameterization, steps=8)
    st.prepare("x", num_inference_steps=8)
    assert torch.allclose(st.schedule.a, ref.schedule.a, atol=1e-12)
    assert torch.allclose(st.schedule.s, ref.schedule.s, atol=1e-12)
    seeds = [1, 2, 3, 4]
    x1, x2 = ref.start(seeds), st.start(seeds)
    assert torch.equal(x1, x2)  # ComfyUI's max-denoise start is the VP prior N(0, 1); flow starts at sigma = 1
    for i in range(8):
        assert st.noise_scale(i) == pytest.approx(ref.noise_scale(i), abs=1e-12)
        z = ref.sample_noise([100 + i + k for k in range(4)]) if ref.noise_scale(i) > 0 else None
        x1, x2 = ref.step(x1, i, z), st.step(x2, i, z)
        assert torch.allclose(x1, x2, atol=1e-5), (i, (x1 - x2).abs().max())
    assert torch.equal(st.finish(x2), raw_decode(x2))


@pytest.mark.parametrize("eta", [1.0, 0.5, 0.0])
def test_kdiffusion_step_is_k_diffusions_euler_ancestral(eta):
    """In VE units the step is k-diffusion's (and ComfyUI's) Euler-ancestral step with this eta:
    x' = denoised + sigma_down * d + sigma_up * z, d = (x - denoised) / sigma."""
    sigmas = [14.6, 4.0, 1.2, 0.3, 0.0]
    st = KDiffusionStepper(gm_denoiser(), sigmas, (1, 1, 2), raw_decode, eta=eta)
    st.prepare("p")
    x = st.start([0, 1, 2])
    for i in range(4):
        s_from, s_to = sigmas[i], sigmas[i + 1]
        z = st.sample_noise([10 + i, 11 + i, 12 + i])
        x_ve = st.model_input(x, i)
        denoised = gm_denoiser()(x_ve, torch.full((3,), s_from))
        sigma_up = min(s_to, eta * (s_to ** 2 * (s_from ** 2 - s_to ** 2) / s_from ** 2) ** 0.5)
        sigma_down = (s_to ** 2 - sigma_up ** 2) ** 0.5
        expected = denoised + sigma_down * (x_ve - denoised) / s_from + sigma_up * z
        x = st.step(x, i, z)
        assert st.noise_scale(i) * math.sqrt(1 + s_to ** 2) == pytest.approx(sigma_up, rel=1e-9, abs=1e-12)
        assert torch.allclose(x * math.sqrt(1 + s_to ** 2), expected, atol=1e-5)


def test_kdiffusion_schedule_coefficients_and_validation():
    sched = kdiffusion_schedule([14.6, 3.0, 0.5, 0.0], "ve", eta=1.0)
    assert torch.allclose(sched.a * torch.sqrt(1 + sched.timesteps.new_tensor([14.6, 3.0, 0.5, 0.0]) ** 2),
                          torch.ones(4, dtype=torch.float64))
    assert torch.allclose(sched.s / sched.a, torch.tensor([14.6, 3.0, 0.5, 0.0], dtype=torch.float64))
    assert sched.a[-1] == 1 and sched.s[-1] == 0
    flow = kdiffusion_schedule([1.0, 0.5, 0.0], "flow")
    assert flow.a.tolist() == [0.0, 0.5, 1.0] and flow.s.tolist() == [1.0, 0.5, 0.0]
    for bad, match in [([1.0, 0.5], "last sigma must be 0"), ([0.5, 1.0, 0.0], "non-increasing"),
                       ([1.0, 0.0, 0.0], "must be > 0"), ([0.0], "at least 2"), ([1.0, float("nan"), 0.0], "finite")]:
        with pytest.raises(ValueError, match=match):
            kdiffusion_schedule(bad)
    with pytest.raises(ValueError, match="flow sigmas"):
        kdiffusion_schedule([2.0, 0.0], "flow")
    with pytest.raises(ValueError, match="parameterization"):
        kdiffusion_schedule([1.0, 0.0], "vp")


def test_kdiffusion_stepper_request_validation():
    st, _ = gm_stepper(steps=5, guidance_scale=3.0)
    assert st.default_num_inference_steps == 5 and st.default_guidance_scale == 3.0
    req = st.prepare("p")
    assert req.num_inference_steps == 5 and req.guidance_scale == 3.0
    with pytest.raises(ValueError, match="num_inference_steps"):
        st.prepare("p", num_inference_steps=6)
    with pytest.raises(ValueError, match="guidance_scale"):
        st.prepare("p", guidance_scale=7.0)
    with pytest.raises(TypeError, match="denoise"):
        KDiffusionStepper(None, [1.0, 0.0], (1,), raw_decode)
    with pytest.raises(ValueError, match="latent_shape"):
        KDiffusionStepper(gm_denoiser(), [1.0, 0.0], (0, 2), raw_decode)
    with pytest.raises(ValueError, match="init_latent"):
        KDiffusionStepper(gm_denoiser(), [1.0, 0.0], (1, 1, 2), raw_decode, init_latent=torch.ones(3))
    bad = KDiffusionStepper(lambda x, s: x[:, :, :, :1], [1.0, 0.0], (1, 1, 2), raw_decode)
    bad.prepare("p")
    with pytest.raises(ValueError, match="denoise: must return x0"):
        bad.step(bad.start([0]), 0, bad.sample_noise([1]))
    bad = KDiffusionStepper(gm_denoiser(), [1.0, 0.0], (1, 1, 2), lambda x: x[:, 0])
    bad.prepare("p")
    with pytest.raises(ValueError, match="decode: must return images"):
        bad.finish(bad.start([0]))


def test_kdiffusion_stepper_counts_nfe_and_micro_batches():
    calls = []
    st, _ = gm_stepper(steps=4, max_batch_size=3, calls=calls)
    st.prepare("p")
    x = st.start(list(range(7)))
    for i in range(4):
        x = st.step(x, i, st.sample_noise(list(range(10 * i, 10 * i + 7))) if st.noise_scale(i) > 0 else None)
    assert st.nfe == 28 and calls == [3, 3, 1] * 4  # micro-batches of max_batch_size rows
    st.predict(x[:2], 1)
    assert st.nfe == 30
    st.finish(x)
    assert st.decode_calls == 7 and torch.equal(st.last_finished, x.float())


def test_kdiffusion_stepper_uses_the_given_noise_only():
    st, _ = gm_stepper(steps=6)
    st.prepare("p")
    x = st.start([0, 1])
    assert st.noise_scale(2) > 0
    z1, z2 = st.sample_noise([5, 6]), st.sample_noise([7, 8])
    a, b, c = st.step(x, 2, z1), st.step(x, 2, z1), st.step(x, 2, z2)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.allclose(c - a, st.noise_scale(2) * (z2 - z1), atol=1e-5)  # the noise enters as c * z
    with pytest.raises(ValueError, match="pass the noise explicitly"):
        st.step(x, 2, None)
    det, _ = gm_stepper(steps=6, eta=0.0)
    det.prepare("p")
    assert all(det.noise_scale(i) == 0 for i in range(6))
    assert torch.equal(det.step(x, 2, None), det.step(x, 2, z2))  # eta = 0: deterministic, noise ignored


def test_kdiffusion_stepper_start_init_latent_and_max_denoise():
    sigmas = [10.0, 1.0, 0.0]
    init = torch.full((1, 1, 1, 2), 2.0)
    st = KDiffusionStepper(gm_denoiser(), sigmas, (1, 1, 2), raw_decode, init_latent=init)
    st.prepare("p")
    noise = st.sample_noise([3])
    a0, s0 = float(st.schedule.a[0]), float(st.schedule.s[0])
    assert torch.allclose(st.start([3]), a0 * init + noise)  # ComfyUI's max_denoise: unit-variance noise
    st = KDiffusionStepper(gm_denoiser(), sigmas, (1, 1, 2), raw_decode, init_latent=init, max_denoise=False)
    st.prepare("p")
    assert torch.allclose(st.start([3]), a0 * init + s0 * noise)  # the forward marginal at sigma_0
    # the denoiser sees the VE latent: x_ve = x_vp * sqrt(1 + sigma^2)
    seen = []
    st = KDiffusionStepper(lambda x, s: seen.append((x.clone(), s.clone())) or torch.zeros_like(x), sigmas, (1, 1, 2),
                           raw_decode)
    st.prepare("p")
    x = st.start([3])
    st.predict(x, 0)
    assert torch.allclose(seen[0][0], x * math.sqrt(1 + 100.0)) and seen[0][1].tolist() == [10.0]
    empty = KDiffusionStepper(gm_denoiser(), sigmas, (1, 1, 2), raw_decode, init_latent=torch.zeros(1, 1, 1, 2))
    assert empty.init_latent is None


def test_kdiffusion_stepper_is_deterministic_and_batch_independent():
    st, _ = gm_stepper(steps=5)
    st.prepare("p")

    def run(seeds):
        x = st.start(seeds)
        for i in range(5):
            x = st.step(x, i, st.sample_noise([s * 31 + i for s in seeds]) if st.noise_scale(i) > 0 else None)
        return x

    a, b = run([1, 2, 3]), run([1, 2, 3])
    assert torch.equal(a, b)
    assert torch.allclose(run([2])[0], a[1], atol=1e-6)  # a row does not depend on its batch


@pytest.mark.parametrize("method", [EvoSearch(evolution_schedule=[0, 3], population_schedule=[6, 4, 4], elite_size=1),
                                    BestOfN(n=5)])
def test_search_from_stepper_replays_the_winner(method):
    st, _ = gm_stepper(steps=6, max_batch_size=4)
    reward = FunctionReward(first_coordinate, name="x0")
    search = SearchPipeline.from_stepper(st, reward, method)
    pack = load_pack()
    tracker = pack.sampler.BestLatentTracker(st)
    out = search("p", seed=3, nfe_budget=200, output_type="pt", callback=tracker, progress=False)
    assert out.complete and out.stats.nfe == method.cost(200, 6) <= 200
    assert out.settings["family"] == "kdiffusion"
    assert out.settings["pipeline"] == "KDiffusionModel"
    assert out.best.reward == max(out.rewards) == pytest.approx(tracker.reward)
    replayed = search.replay_states(out.best.lineage)
    assert torch.equal(replayed, tracker.latent)  # bit-identical on CPU
    assert float(replayed[0, 0, 0, 0]) == pytest.approx(out.best.reward, abs=1e-6)
    record = out.to_record()
    json.dumps(record)
    assert record["stats"]["nfe"] == out.stats.nfe


def test_from_stepper_rejects_non_steppers():
    with pytest.raises(TypeError, match="stepper"):
        SearchPipeline.from_stepper(object(), FunctionReward(first_coordinate))


# ---------------------------------------------------------------------------- node interface
def test_node_mappings_and_interfaces():
    pack = load_pack()
    assert set(pack.NODE_CLASS_MAPPINGS) == set(pack.NODE_DISPLAY_NAME_MAPPINGS)
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        assert set(spec) <= {"required", "optional", "hidden"} and spec["required"], name
        for section in spec.values():
            for key, entry in section.items():
                assert isinstance(entry, tuple) and 1 <= len(entry) <= 2, (name, key)
                assert isinstance(entry[0], (str, list)), (name, key)
                if len(entry) == 2:
                    assert isinstance(entry[1], dict), (name, key)
        assert isinstance(cls.RETURN_TYPES, tuple) and callable(getattr(cls, cls.FUNCTION)), name
        assert cls.CATEGORY.startswith("sampling/evosearch"), name
        if hasattr(cls, "RETURN_NAMES"):
            assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES), name
        # the function takes every required and optional input by name
        import inspect

        params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
        has_kwargs = any(p.kind == p.VAR_KEYWORD for p in params.values())
        for key in list(spec["required"]) + list(spec.get("optional", {})):
            assert key in params or has_kwargs, (name, key)

    sampler = pack.NODE_CLASS_MAPPINGS["EvoSearchSampler"]
    req = sampler.INPUT_TYPES()["required"]
    assert [req[k][0] for k in ("model", "positive", "negative", "latent_image", "vae", "reward")] == [
        "MODEL", "CONDITIONING", "CONDITIONING", "LATENT", "VAE", "REWARD"]
    assert req["method"][0] == ["evosearch", "best-of-n", "zero-order", "paths", "particles"]
    assert {"nfe_budget", "seed", "steps", "cfg", "scheduler", "eta"} <= set(req)
    assert "karras" in req["scheduler"][0] and "normal" in req["scheduler"][0]
    assert sampler.RETURN_TYPES == ("LATENT", "IMAGE", "IMAGE", "STRING")
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        if name.endswith("Reward"):
            assert cls.RETURN_TYPES == ("REWARD",), name
    ens = pack.NODE_CLASS_MAPPINGS["EvoSearchEnsembleReward"].INPUT_TYPES()
    assert ens["required"]["reward_1"] == ("REWARD",) and ens["required"]["normalize"][0] == ["rank", "zscore", "none"]
    save = pack.NODE_CLASS_MAPPINGS["EvoSearchSaveRecord"]
    assert save.OUTPUT_NODE and save.INPUT_TYPES()["required"]["record_json"][0] == "STRING"


def test_pyproject_metadata():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")

    meta = tomllib.loads((PACK_DIR / "pyproject.toml").read_text())
    comfy = meta["tool"]["comfy"]
    assert {"PublisherId", "DisplayName", "Icon"} <= set(comfy) and comfy["PublisherId"] and comfy["DisplayName"]
    assert meta["project"]["name"] and meta["project"]["version"]
    assert meta["project"]["dependencies"] == ["evosearch"]


# ---------------------------------------------------------------------------- a fake ComfyUI
class FakeEPS:
    """k-diffusion latents: x = x0 + sigma * eps (comfy.model_sampling.EPS)."""

    sigma_max, sigma_min = 14.6, 0.03

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        noise = noise * (math.sqrt(1.0 + float(sigma) ** 2) if max_denoise else float(sigma))
        return noise + latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent


class FakeCONST:
    """Flow latents: x = (1 - sigma) x0 + sigma * eps (comfy.model_sampling.CONST)."""

    sigma_max, sigma_min = 1.0, 0.0

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        return float(sigma) * noise + (1.0 - float(sigma)) * latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent / (1.0 - float(sigma))


class FakeLatentFormat:
    scale_factor = 0.5

    def process_in(self, latent):
        return latent * self.scale_factor

    def process_out(self, latent):
        return latent / self.scale_factor


class FakeModel:
    """A MODEL (ModelPatcher) stand-in. Its guided denoiser is analytic: each latent pixel is
    N(mu_c, v) a priori under conditioning c, so E[x0 | x] = mu + v / (v + sigma^2) (x - mu)
    (VE) — CFG mixes the two posterior means."""

    def __init__(self, sampling="eps", interrupt_after=None, mm=None):
        self.model_sampling = FakeEPS() if sampling == "eps" else FakeCONST()
        self.latent_format = FakeLatentFormat()
        self.model = types.SimpleNamespace()  # the BaseModel; its class name goes into the record
        self.load_device = torch.device("cpu")
        self.calls = 0
        self.interrupt_after = interrupt_after
        self.mm = mm

    def get_model_object(self, name):
        return {"model_sampling": self.model_sampling, "latent_format": self.latent_format}[name]

    def posterior_mean(self, x, sigma, mu, v=0.3):
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        if isinstance(self.model_sampling, FakeCONST):
            a, var = 1.0 - s, v * (1.0 - s) ** 2 + s * s
            return mu + a * v / var * (x - a * mu)
        return mu + v / (v + s * s) * (x - mu)

    def denoise(self, x, sigma, conds, cfg):
        self.calls += 1
        if self.interrupt_after is not None and self.calls == self.interrupt_after:
            self.mm.interrupt_current_processing(True)  # as if Cancel was pressed now
        cond = self.posterior_mean(x, sigma, conds["positive"][0][0])
        uncond = self.posterior_mean(x, sigma, conds["negative"][0][0])
        return uncond + cfg * (cond - uncond)


class FakeVAE:
    """decode: ComfyUI latents (N, 4, h, w) -> images (N, 2h, 2w, 3) in [0, 1]. With ``evict``, loading
    it unloads every other model, as ComfyUI's free_memory does when VRAM is short."""

    def __init__(self, evict=None):
        self.calls = 0
        self.evict = evict

    def decode(self, latent):
        self.calls += latent.shape[0]
        if self.evict is not None:
            self.evict.state["loaded"].clear()
        img = torch.sigmoid(latent[:, :3])
        return torch.nn.functional.interpolate(img, scale_factor=2, mode="nearest").movedim(1, -1)


def make_fake_comfy(tmp_path):
    """Modules comfy.{samplers, sample, model_management, utils, model_sampling} and folder_paths
    with the entry points the node pack calls, behaving as ComfyUI's do."""
    mm = types.ModuleType("comfy.model_management")
    mm.state = {"interrupted": False, "load_models_gpu": 0}

    class InterruptProcessingException(Exception):
        pass

    mm.InterruptProcessingException = InterruptProcessingException
    mm.processing_interrupted = lambda: mm.state["interrupted"]

    def interrupt_current_processing(value=True):
        mm.state["interrupted"] = value

    def throw_exception_if_processing_interrupted():
        if mm.state["interrupted"]:
            mm.state["interrupted"] = False
            raise InterruptProcessingException()

    mm.interrupt_current_processing = interrupt_current_processing
    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    mm.intermediate_device = lambda: torch.device("cpu")
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.state["loaded"] = []  # the ModelPatchers ComfyUI holds loaded (comfy.model_management.loaded_models)
    mm.loaded_models = lambda only_currently_used=False: list(mm.state["loaded"])

    def load_models_gpu(models, **kw):
        mm.state["load_models_gpu"] += 1
        mm.state["loaded"].extend(m for m in models if m not in mm.state["loaded"])

    mm.load_models_gpu = load_models_gpu

    utils = types.ModuleType("comfy.utils")

    class ProgressBar:  # with the server's hook, which checks for an interrupt on every update
        updates = []

        def __init__(self, total, node_id=None):
            self.total, self.current = total, 0

        def update_absolute(self, value, total=None, preview=None):
            if total is not None:
                self.total = total
            self.current = min(value, self.total)
            ProgressBar.updates.append((self.current, self.total, preview))
            throw_exception_if_processing_interrupted()

    utils.ProgressBar = ProgressBar

    ms = types.ModuleType("comfy.model_sampling")
    ms.EPS, ms.CONST = FakeEPS, FakeCONST

    samplers = types.ModuleType("comfy.samplers")

    def calculate_sigmas(model_sampling, scheduler_name, steps):
        if scheduler_name not in ("normal", "karras"):
            raise ValueError(f"error invalid scheduler {scheduler_name}")
        if isinstance(model_sampling, FakeCONST):
            sig = torch.linspace(1.0, 1.0 / steps, steps)
        else:
            lo, hi = math.log(model_sampling.sigma_min), math.log(model_sampling.sigma_max)
            sig = torch.exp(torch.linspace(hi, lo, steps))
        return torch.cat([sig, torch.zeros(1)])

    class Sampler:
        def max_denoise(self, model_wrap, sigmas):
            max_sigma = float(model_wrap.inner_model.model_sampling.sigma_max)
            sigma = float(sigmas[0])
            return math.isclose(max_sigma, sigma, rel_tol=1e-05) or sigma > max_sigma

    class KSAMPLER(Sampler):  # comfy.samplers.KSAMPLER.sample, minus inpainting
        def __init__(self, sampler_function, extra_options={}, inpaint_options={}):
            self.sampler_function = sampler_function

        def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
                   disable_pbar=False):
            extra_args["denoise_mask"] = denoise_mask

            def model_k(x, sigma, denoise_mask=None, model_options={}, seed=None):
                return model_wrap(x, sigma, model_options=model_options, seed=seed)

            ms_ = model_wrap.inner_model.model_sampling
            noise = ms_.noise_scaling(sigmas[0], noise, latent_image, self.max_denoise(model_wrap, sigmas))
            samples = self.sampler_function(model_k, noise, sigmas, extra_args=extra_args, callback=None,
                                            disable=disable_pbar)
            return ms_.inverse_noise_scaling(sigmas[-1], samples)

    class CFGGuider:  # comfy.samplers.CFGGuider: set_conds / set_cfg / sample
        def __init__(self, model_patcher):
            self.model_patcher = model_patcher
            self.cfg = 1.0

        def set_conds(self, positive, negative):
            self.conds = {"positive": positive, "negative": negative}

        def set_cfg(self, cfg):
            self.cfg = cfg

        def __call__(self, x, timestep, model_options={}, seed=None):
            assert timestep.shape == (x.shape[0],)
            return self.model_patcher.denoise(x, timestep, self.conds, self.cfg)

        def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
                   seed=None):
            mm.load_models_gpu([self.model_patcher])  # as comfy.sampler_helpers.prepare_sampling
            self.loaded_models = [self.model_patcher]
            fmt = self.model_patcher.latent_format
            self.inner_model = types.SimpleNamespace(model_sampling=self.model_patcher.model_sampling,
                                                     process_latent_out=fmt.process_out)
            if torch.count_nonzero(latent_image) > 0:
                latent_image = fmt.process_in(latent_image)
            samples = sampler.sample(self, sigmas, {"model_options": {}, "seed": seed}, callback, noise, latent_image,
                                     denoise_mask, disable_pbar)
            return fmt.process_out(samples.to(torch.float32))

    samplers.calculate_sigmas = calculate_sigmas
    samplers.Sampler, samplers.KSAMPLER, samplers.CFGGuider = Sampler, KSAMPLER, CFGGuider
    samplers.KSampler = types.SimpleNamespace(SCHEDULERS=["normal", "karras"])

    sample = types.ModuleType("comfy.sample")
    sample.fix_empty_latent_channels = lambda model, latent: latent

    comfy = types.ModuleType("comfy")
    comfy.samplers, comfy.sample, comfy.model_management, comfy.utils = samplers, sample, mm, utils
    comfy.model_sampling = ms

    folder_paths = types.ModuleType("folder_paths")
    out_dir = tmp_path / "output"
    out_dir.mkdir(exist_ok=True)
    folder_paths.models_dir = str(tmp_path / "models")
    folder_paths.get_output_directory = lambda: str(out_dir)

    def get_save_image_path(filename_prefix, output_dir, image_width=0, image_height=0):
        subfolder, filename = os.path.dirname(filename_prefix), os.path.basename(filename_prefix)
        folder = os.path.join(output_dir, subfolder)
        os.makedirs(folder, exist_ok=True)
        counter = 1 + sum(1 for f in os.listdir(folder) if f.startswith(filename + "_"))
        return folder, filename, counter, subfolder, filename_prefix

    folder_paths.get_save_image_path = get_save_image_path
    return {"comfy": comfy, "comfy.samplers": samplers, "comfy.sample": sample, "comfy.model_management": mm,
            "comfy.utils": utils, "comfy.model_sampling": ms, "folder_paths": folder_paths}


@pytest.fixture
def fake_comfy(tmp_path, monkeypatch):
    modules = make_fake_comfy(tmp_path)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    modules["comfy.utils"].ProgressBar.updates = []
    return types.SimpleNamespace(mm=modules["comfy.model_management"], pbar=modules["comfy.utils"].ProgressBar,
                                 out_dir=tmp_path / "output")


def conditioning(value, shape=(4, 4, 4)):
    return [[torch.full((1, *shape), float(value)), {"pooled_output": None}]]


def red(images, prompts):
    return images[:, 0].mean(dim=(1, 2))


def run_node(model, latent_shape=(1, 4, 4, 4), latent=None, reward=None, vae=None, **kw):
    pack = load_pack()
    args = dict(reward_prompt="red", method="evosearch", nfe_budget=120, seed=5, steps=6, cfg=2.0,
                scheduler="karras", eta=1.0)
    args.update(kw)
    latent = {"samples": torch.zeros(latent_shape) if latent is None else latent}
    vae = vae or FakeVAE()
    out = pack.NODE_CLASS_MAPPINGS["EvoSearchSampler"]().sample(
        model, conditioning(1.5), conditioning(-0.5), latent, vae, reward or FunctionReward(red, name="red"), **args)
    return out, vae


def test_sampler_node_outputs(fake_comfy):
    model = FakeModel()
    (latent, best, grid, record_json), vae = run_node(model)
    rec = json.loads(record_json)
    assert rec["complete"]
    plan = rec["settings"]["plan"]
    evo, pop = plan["evolution_schedule"], plan["population_schedule"]
    nfe = pop[0] * 6 + sum(p * (6 - e) for e, p in zip(evo, pop[1:]))
    assert rec["stats"]["nfe"] == nfe <= 120
    assert rec["stats"]["reward_calls"] == sum(pop) == rec["stats"]["decode_calls"] == vae.calls
    assert rec["comfyui"]["sampling"] == "ve" and rec["comfyui"]["scheduler"] == "karras"
    assert rec["comfyui"]["max_denoise"] is True and len(rec["comfyui"]["sigmas"]) == 7
    assert rec["settings"]["request"]["guidance_scale"] == 2.0 and rec["settings"]["request"]["prompt"] == "red"
    assert rec["settings"]["request"]["extra"] == {"scheduler": "karras", "sampling": "ve",
                                                   "model": "SimpleNamespace"}
    assert rec["settings"]["family"] == "kdiffusion" and rec["settings"]["method"]["method"] == "evosearch"
    assert rec["best_reward"] == max(rec["rewards"])
    assert set(latent) == {"samples"} and latent["samples"].shape == (1, 4, 4, 4)
    assert best.shape == (1, 8, 8, 3) and best.dtype == torch.float32 and 0 <= best.min() <= best.max() <= 1
    n = len(rec["rewards"])
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    assert grid.shape == (1, rows * 8 + (rows - 1) * 2, cols * 8 + (cols - 1) * 2, 3)
    assert torch.allclose(grid[0, :8, :8], best[0])  # the grid is best first
    # the LATENT output is the winner: decoding it gives the best image (up to uint8 storage) and its reward
    decoded = FakeVAE().decode(latent["samples"])
    assert (decoded - best).abs().max() <= 0.5 / 255 + 1e-6
    assert float(red(decoded.movedim(-1, 1), None)[0]) == pytest.approx(rec["best_reward"], abs=1e-6)
    # progress in NFE of the budget, with previews of improvements
    values = [u[0] for u in fake_comfy.pbar.updates]
    assert values == sorted(values) and values[-1] == rec["stats"]["nfe"]
    assert all(u[1] == 120 for u in fake_comfy.pbar.updates)
    previews = [u[2] for u in fake_comfy.pbar.updates if u[2] is not None]
    assert previews and previews[0][0] == "JPEG" and previews[0][1].size == (8, 8)


def test_sampler_node_reloads_models_a_vae_decode_unloaded(fake_comfy):
    (_, _, _, rec), _ = run_node(FakeModel(), method="best-of-n", nfe_budget=24, steps=6, max_batch_size=2)
    assert fake_comfy.mm.state["load_models_gpu"] == 1  # only the guider's own load: nothing was unloaded
    fake_comfy.mm.state["load_models_gpu"] = 0
    model = FakeModel()
    (_, _, _, rec), vae = run_node(model, vae=FakeVAE(evict=fake_comfy.mm), method="best-of-n", nfe_budget=24,
                                   steps=6, max_batch_size=2)
    decodes = json.loads(rec)["stats"]["decode_calls"] // 2  # one VAE call per micro-batch of 2
    assert fake_comfy.mm.state["load_models_gpu"] == 1 + decodes and model in fake_comfy.mm.state["loaded"]


def test_sampler_node_is_deterministic_in_the_seed(fake_comfy):
    def run(seed):
        (latent, best, _, rec), _ = run_node(FakeModel(), seed=seed, method="best-of-n", nfe_budget=24, steps=6)
        return latent["samples"], best, json.loads(rec)

    a, b, c = run(11), run(11), run(12)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2]["rewards"] == b[2]["rewards"]
    assert a[2]["lineage"] == b[2]["lineage"]
    assert a[2]["rewards"] != c[2]["rewards"]


@pytest.mark.parametrize("method,population,budget", [("best-of-n", 3, 18), ("zero-order", 2, 30), ("paths", 0, 60),
                                                      ("particles", 3, 30), ("evosearch", 0, 60)])
def test_sampler_node_runs_every_method(fake_comfy, method, population, budget):
    model = FakeModel()
    (latent, best, grid, rec), _ = run_node(model, method=method, population=population, nfe_budget=budget, steps=6,
                                            max_batch_size=4)
    rec = json.loads(rec)
    assert rec["complete"] and 0 < rec["stats"]["nfe"] <= budget and rec["settings"]["method"]["method"] == method
    assert math.isfinite(rec["best_reward"]) and latent["samples"].shape == (1, 4, 4, 4)


def test_sampler_node_flow_models_and_init_latents(fake_comfy):
    model = FakeModel(sampling="const")
    (latent, best, _, rec), _ = run_node(model, method="best-of-n", nfe_budget=18, steps=6)
    rec = json.loads(rec)
    assert rec["comfyui"]["sampling"] == "flow" and rec["comfyui"]["max_denoise"] is False
    assert rec["comfyui"]["sigmas"][0] == 1.0 and latent["samples"].shape == (1, 4, 4, 4)
    # a non-empty latent enters the start state as a_0 * latent (model latents: process_in applied)
    from evosearch.pipelines import kdiffusion

    seen = {}
    original = kdiffusion.KDiffusionStepper.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen["init"] = self.init_latent

    kdiffusion.KDiffusionStepper.__init__ = spy
    try:
        init = torch.full((1, 4, 4, 4), 0.8)
        run_node(FakeModel(), latent=init, method="best-of-n", nfe_budget=12, steps=6)
    finally:
        kdiffusion.KDiffusionStepper.__init__ = original
    assert torch.allclose(seen["init"], init * FakeLatentFormat.scale_factor)


def test_sampler_node_interrupt_returns_best_so_far(fake_comfy):
    # Cancel during the second generation: the best of the first one comes back, marked incomplete
    model = FakeModel(interrupt_after=9, mm=fake_comfy.mm)
    (latent, best, grid, rec), _ = run_node(model, method="best-of-n", nfe_budget=60, steps=6, population=10,
                                            max_batch_size=4)
    rec = json.loads(rec)
    assert rec["complete"] is False and rec["stats"]["nfe"] < 60 and len(rec["rewards"]) >= 1
    assert fake_comfy.mm.state["interrupted"] is False  # cleared: the rest of the workflow runs
    assert best.shape == (1, 8, 8, 3)
    # with on_interrupt="abort" the prompt is interrupted as ComfyUI's samplers do
    model = FakeModel(interrupt_after=9, mm=fake_comfy.mm)
    with pytest.raises(fake_comfy.mm.InterruptProcessingException):
        run_node(model, method="best-of-n", nfe_budget=60, steps=6, population=10, max_batch_size=4,
                 on_interrupt="abort")
    # interrupted before anything was scored: nothing to return, the prompt is interrupted
    model = FakeModel(interrupt_after=2, mm=fake_comfy.mm)
    with pytest.raises(fake_comfy.mm.InterruptProcessingException):
        run_node(model, method="best-of-n", nfe_budget=60, steps=6, population=10, max_batch_size=4)


def test_sampler_node_errors(fake_comfy):
    model = FakeModel()
    with pytest.raises(ValueError, match="nfe_budget"):
        run_node(model, method="best-of-n", nfe_budget=5, steps=6)
    assert model.calls == 0  # validated before any model call
    with pytest.raises(ValueError, match="method"):
        run_node(model, method="tts-var")
    with pytest.raises(ValueError, match="noise mask"):
        pack = load_pack()
        pack.NODE_CLASS_MAPPINGS["EvoSearchSampler"]().sample(
            model, conditioning(1), conditioning(0), {"samples": torch.zeros(1, 4, 4, 4), "noise_mask": torch.ones(1)},
            FakeVAE(), FunctionReward(red), "p", "best-of-n", 12, 0, 6, 1.0, "karras", 1.0)
    with pytest.raises(TypeError, match="reward"):
        run_node(model, reward=lambda images, prompts: images.mean())
    with pytest.raises(ValueError, match="scheduler"):
        run_node(model, scheduler="no-such-scheduler")
    cm = sys.modules["comfy.samplers"]
    real = cm.calculate_sigmas
    cm.calculate_sigmas = lambda ms, name, steps: torch.tensor([float("nan"), 0.0])  # kl_optimal at 1 step
    try:
        with pytest.raises(ValueError, match="scheduler: 'karras' at 6 steps gives sigmas"):
            run_node(model)
    finally:
        cm.calculate_sigmas = real
    assert model.calls == 0
    with pytest.raises(ValueError, match="eta"):
        run_node(model, eta=0.0)  # EvoSearch mutates with the sampler's noise


def test_save_record_node(fake_comfy):
    pack = load_pack()
    node = pack.NODE_CLASS_MAPPINGS["EvoSearchSaveRecord"]()
    ui = node.save(json.dumps({"best_reward": 1.5, "stats": {"nfe": 10}}), "runs/rec")
    (entry,) = ui["ui"]["evosearch_records"]
    path = fake_comfy.out_dir / entry["subfolder"] / entry["filename"]
    assert entry["subfolder"] == "runs" and json.loads(path.read_text())["stats"]["nfe"] == 10
    ui2 = node.save("{}", "runs/rec")
    assert ui2["ui"]["evosearch_records"][0]["filename"] != entry["filename"]
    with pytest.raises(ValueError, match="record_json"):
        node.save("not json", "runs/rec")


# ---------------------------------------------------------------------------- reward loader nodes
def test_image_stat_and_ensemble_reward_nodes():
    pack = load_pack()
    m = pack.NODE_CLASS_MAPPINGS
    imgs = torch.stack([torch.full((3, 4, 4), 0.2), torch.full((3, 4, 4), 0.8)])
    imgs[1, :, :2] = 0.0  # image 1: brighter on average, and with contrast
    (bright,) = m["EvoSearchImageStatReward"]().load("brightness", "maximize")
    (dark,) = m["EvoSearchImageStatReward"]().load("brightness", "minimize")
    (contrast,) = m["EvoSearchImageStatReward"]().load("contrast", "maximize")
    assert bright(imgs).tolist() == pytest.approx([0.2, 0.4]) and dark(imgs).tolist() == pytest.approx([-0.2, -0.4])
    assert contrast(imgs)[0] == 0 and contrast(imgs)[1] > 0
    (sat,) = m["EvoSearchImageStatReward"]().load("saturation", "maximize")
    assert sat(imgs).tolist() == [0.0, 0.0]
    (ens,) = m["EvoSearchEnsembleReward"]().load(bright, 1.0, contrast, 2.0, "none")
    assert ens(imgs).tolist() == pytest.approx((bright(imgs) + 2 * contrast(imgs)).tolist())
    (ens3,) = m["EvoSearchEnsembleReward"]().load(bright, 1.0, dark, 1.0, "rank", reward_3=contrast, weight_3=0.5)
    assert len(ens3.rewards) == 3 and ens3.weights == [1.0, 1.0, 0.5]
    with pytest.raises(ValueError, match="weights"):
        m["EvoSearchEnsembleReward"]().load(bright, 0.0, dark, 0.0, "rank")


def test_model_reward_loader_nodes_name_missing_checkpoints(tmp_path):
    pack = load_pack()
    m = pack.NODE_CLASS_MAPPINGS
    missing = str(tmp_path / "absent.pt")
    pytest.importorskip("open_clip")
    with pytest.raises(FileNotFoundError, match="mlp_path"):
        m["EvoSearchAestheticReward"]().load("ViT-L-14", "openai", missing, "cpu")
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        m["EvoSearchImageRewardReward"]().load(missing, "cpu")
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        m["EvoSearchHPSReward"]().load(missing, "ViT-H-14", "v2.1", "cpu")
    with pytest.raises((FileNotFoundError, ValueError, OSError)):
        m["EvoSearchPickScoreReward"]().load(str(tmp_path / "no-model"), str(tmp_path / "no-proc"), "cpu")
    with pytest.raises(ValueError, match="model_name"):
        m["EvoSearchCLIPScoreReward"]().load("no-such-clip", "openai", "cpu", 8)


def test_clip_score_reward_node_loads_a_checkpoint(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    name = "evosearch-comfyui-tiny"
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    (cfg_dir / f"{name}.json").write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}))
    open_clip.add_model_config(cfg_dir)
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pt"
    torch.save(open_clip.create_model(name).state_dict(), ckpt)
    pack = load_pack()
    (reward,) = pack.NODE_CLASS_MAPPINGS["EvoSearchCLIPScoreReward"]().load(name, str(ckpt), "cpu", 4)
    scores = reward(torch.rand(3, 3, 32, 32), "a cat")
    assert scores.shape == (3,) and torch.isfinite(scores).all()


def test_digit_reward_node():
    from evosearch.bundled.paths import asset_path

    if not (asset_path("digits", "classifier") / "config.json").is_file():
        pytest.skip("the bundled digit classifier is not in this checkout")
    pack = load_pack()
    (reward,) = pack.NODE_CLASS_MAPPINGS["EvoSearchDigitReward"]().load(3, "prob", "")
    scores = reward(torch.rand(2, 3, 16, 16), "anything")
    assert scores.shape == (2,) and ((scores >= 0) & (scores <= 1)).all()
    (reward,) = pack.NODE_CLASS_MAPPINGS["EvoSearchDigitReward"]().load(-1, "logprob")
    assert (reward(torch.rand(2, 3, 16, 16), "digit 7") <= 0).all()


# ---------------------------------------------------------------------------- end to end with ComfyUI
def tiny_sd15_state_dict(seed: int = 0, dtype=torch.float16) -> dict[str, torch.Tensor]:
    """A random-weight checkpoint in the original (LDM) SD1.5 key layout that ComfyUI's
    CheckpointLoaderSimple detects as SD15: a UNet at the smallest size its detection allows
    (model_channels 320 and context 768 are what identify SD1.5; one resolution level, one res
    block and transformer per level), the SD VAE (AutoencoderKL, whose layout ComfyUI fixes) and
    the CLIP ViT-L/14 text encoder (12 layers; ComfyUI builds it from a fixed config)."""
    shapes: dict[str, tuple] = {}

    def lin(p, out, inp, bias=True):
        shapes[p + ".weight"] = (out, inp)
        if bias:
            shapes[p + ".bias"] = (out,)

    def conv(p, out, inp, k):
        shapes[p + ".weight"] = (out, inp, k, k)
        shapes[p + ".bias"] = (out,)

    def norm(p, c):
        shapes[p + ".weight"] = (c,)
        shapes[p + ".bias"] = (c,)

    # UNet (openaimodel.UNetModel), channel_mult [1], num_res_blocks [1], transformer depth 1
    U, C, E, CTX = "model.diffusion_model.", 320, 1280, 768

    def res(p, cin, cout):
        norm(p + "in_layers.0", cin)
        conv(p + "in_layers.2", cout, cin, 3)
        lin(p + "emb_layers.1", cout, E)
        norm(p + "out_layers.0", cout)
        conv(p + "out_layers.3", cout, cout, 3)
        if cin != cout:
            conv(p + "skip_connection", cout, cin, 1)

    def attn(p, c, ctx):
        lin(p + "to_q", c, c, bias=False)
        lin(p + "to_k", c, ctx, bias=False)
        lin(p + "to_v", c, ctx, bias=False)
        lin(p + "to_out.0", c, c)

    def transformer(p, c):
        norm(p + "norm", c)
        conv(p + "proj_in", c, c, 1)
        b = p + "transformer_blocks.0."
        attn(b + "attn1.", c, c)
        attn(b + "attn2.", c, CTX)
        lin(b + "ff.net.0.proj", 8 * c, c)  # GEGLU: 2 x 4c
        lin(b + "ff.net.2", c, 4 * c)
        for n in ("norm1", "norm2", "norm3"):
            norm(b + n, c)
        conv(p + "proj_out", c, c, 1)

    lin(U + "time_embed.0", E, C)
    lin(U + "time_embed.2", E, E)
    conv(U + "input_blocks.0.0", C, 4, 3)
    res(U + "input_blocks.1.0.", C, C)
    transformer(U + "input_blocks.1.1.", C)
    res(U + "middle_block.0.", C, C)
    transformer(U + "middle_block.1.", C)
    res(U + "middle_block.2.", C, C)
    for j in (0, 1):
        res(U + f"output_blocks.{j}.0.", 2 * C, C)
        transformer(U + f"output_blocks.{j}.1.", C)
    norm(U + "out.0", C)
    conv(U + "out.2", 4, C, 3)

    # VAE (AutoencoderKL: ch 128, ch_mult 1,2,4,4, 2 res blocks, z 4)
    V, mult = "first_stage_model.", (1, 2, 4, 4)

    def vres(p, cin, cout):
        norm(p + "norm1", cin)
        conv(p + "conv1", cout, cin, 3)
        norm(p + "norm2", cout)
        conv(p + "conv2", cout, cout, 3)
        if cin != cout:
            conv(p + "nin_shortcut", cout, cin, 1)

    def vmid(p, c):
        vres(p + "mid.block_1.", c, c)
        norm(p + "mid.attn_1.norm", c)
        for q in ("q", "k", "v", "proj_out"):
            conv(p + "mid.attn_1." + q, c, c, 1)
        vres(p + "mid.block_2.", c, c)

    conv(V + "encoder.conv_in", 128, 3, 3)
    cin = 128
    for i, m in enumerate(mult):
        for j in range(2):
            vres(V + f"encoder.down.{i}.block.{j}.", cin, 128 * m)
            cin = 128 * m
        if i != len(mult) - 1:
            conv(V + f"encoder.down.{i}.downsample.conv", cin, cin, 3)
    vmid(V + "encoder.", cin)
    norm(V + "encoder.norm_out", cin)
    conv(V + "encoder.conv_out", 8, cin, 3)
    conv(V + "quant_conv", 8, 8, 1)
    conv(V + "post_quant_conv", 4, 4, 1)
    conv(V + "decoder.conv_in", 512, 4, 3)
    vmid(V + "decoder.", 512)
    cin = 512
    for i in reversed(range(len(mult))):
        for j in range(3):
            vres(V + f"decoder.up.{i}.block.{j}.", cin, 128 * mult[i])
            cin = 128 * mult[i]
        if i != 0:
            conv(V + f"decoder.up.{i}.upsample.conv", cin, cin, 3)
    norm(V + "decoder.norm_out", cin)
    conv(V + "decoder.conv_out", 3, cin, 3)

    # CLIP ViT-L/14 text encoder (transformers' CLIPTextModel names)
    T, D = "cond_stage_model.transformer.text_model.", 768
    shapes[T + "embeddings.token_embedding.weight"] = (49408, D)
    shapes[T + "embeddings.position_embedding.weight"] = (77, D)
    for layer in range(12):
        p = T + f"encoder.layers.{layer}."
        for q in ("q_proj", "k_proj", "v_proj", "out_proj"):
            lin(p + "self_attn." + q, D, D)
        norm(p + "layer_norm1", D)
        norm(p + "layer_norm2", D)
        lin(p + "mlp.fc1", 4 * D, D)
        lin(p + "mlp.fc2", D, 4 * D)
    norm(T + "final_layer_norm", D)

    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in shapes.items():
        is_norm = any(t in key for t in ("norm", "in_layers.0", "out_layers.0", "out.0.")) and len(shape) == 1
        if key.endswith(".bias"):
            t = torch.zeros(shape)
        elif is_norm:
            t = torch.ones(shape)
        elif "embedding" in key:
            t = 0.02 * torch.randn(shape, generator=gen)
        else:
            fan_in = int(np.prod(shape[1:]))
            t = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
        sd[key] = t.to(dtype)
    return sd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


COMFYUI_DIR = os.environ.get("COMFYUI_DIR")


@pytest.mark.skipif(not COMFYUI_DIR, reason="COMFYUI_DIR does not point at a ComfyUI checkout")
def test_end_to_end_in_a_real_comfyui_server(tmp_path):
    requests = pytest.importorskip("requests")
    comfy_dir = Path(COMFYUI_DIR).resolve()
    assert (comfy_dir / "main.py").is_file(), f"COMFYUI_DIR={COMFYUI_DIR} has no main.py"
    from safetensors.torch import save_file

    # a base directory of our own: models, custom_nodes, input, output, temp, user (the checkout stays clean)
    base = tmp_path / "comfy-base"
    (base / "models" / "checkpoints").mkdir(parents=True)
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "evosearch").symlink_to(PACK_DIR, target_is_directory=True)
    ckpt = base / "models" / "checkpoints" / "tiny-sd15.safetensors"
    save_file(tiny_sd15_state_dict(), str(ckpt))
    port = free_port()
    log = tmp_path / "server.log"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               HF_HUB_OFFLINE="1")
    cmd = [sys.executable, str(comfy_dir / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(base), "--database-url", f"sqlite:///{tmp_path / 'comfyui.db'}",
           "--disable-auto-launch",
           "--disable-api-nodes"]
    with open(log, "wb") as log_file:
        server = subprocess.Popen(cmd, cwd=str(tmp_path), stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        info = None
        while time.monotonic() < deadline:
            assert server.poll() is None, f"ComfyUI exited:\n{log.read_text()[-4000:]}"
            try:
                r = requests.get(f"{url}/object_info/EvoSearchSampler", timeout=5)
                if r.status_code == 200:
                    info = r.json()
                    break
            except requests.ConnectionError:
                pass
            time.sleep(1)
        assert info, f"ComfyUI did not start in time:\n{log.read_text()[-4000:]}"
        assert "EvoSearchSampler" in info, f"the node pack did not load:\n{log.read_text()[-4000:]}"
        assert info["EvoSearchSampler"]["output"] == ["LATENT", "IMAGE", "IMAGE", "STRING"]

        budget, steps = 96, 6  # EvoSearch at this budget: populations [7, 4, 4, 4, 4], evolution at steps 0, 2, 4, 5
        workflow = {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt.name}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a bright white square", "clip": ["1", 1]}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "dark", "clip": ["1", 1]}},
            "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
            "5": {"class_type": "EvoSearchImageStatReward", "inputs": {"statistic": "brightness",
                                                                     "direction": "maximize"}},
            "6": {"class_type": "EvoSearchImageStatReward", "inputs": {"statistic": "contrast",
                                                                     "direction": "maximize"}},
            "7": {"class_type": "EvoSearchEnsembleReward", "inputs": {"reward_1": ["5", 0], "weight_1": 1.0,
                                                                    "reward_2": ["6", 0], "weight_2": 0.5,
                                                                    "normalize": "none"}},
            "8": {"class_type": "EvoSearchSampler", "inputs": {
                "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
                "vae": ["1", 2], "reward": ["7", 0], "reward_prompt": "a bright white square", "method": "evosearch",
                "nfe_budget": budget, "seed": 7, "steps": steps, "cfg": 4.0, "scheduler": "karras", "eta": 1.0,
                "max_batch_size": 8}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 1], "filename_prefix": "evosearch_e2e/best"}},
            "10": {"class_type": "SaveImage", "inputs": {"images": ["8", 2], "filename_prefix": "evosearch_e2e/grid"}},
            "11": {"class_type": "EvoSearchSaveRecord", "inputs": {"record_json": ["8", 3],
                                                                 "filename_prefix": "evosearch_e2e/record"}},
            "12": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
            "13": {"class_type": "SaveImage", "inputs": {"images": ["12", 0],
                                                        "filename_prefix": "evosearch_e2e/latent"}},
        }
        def submit(wf):
            r = requests.post(f"{url}/prompt", json={"prompt": wf, "client_id": "evosearch-e2e"}, timeout=30)
            assert r.status_code == 200, r.text
            return r.json()["prompt_id"]

        def wait(prompt_id, during=None):
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                assert server.poll() is None, f"ComfyUI exited:\n{log.read_text()[-4000:]}"
                if during is not None:
                    during()
                h = requests.get(f"{url}/history/{prompt_id}", timeout=10).json()
                status = h.get(prompt_id, {}).get("status", {})
                if status.get("completed") or status.get("status_str") == "error":
                    return h[prompt_id]
                time.sleep(0.5)
            raise AssertionError(f"no result for prompt {prompt_id}:\n{log.read_text()[-4000:]}")

        prompt_id = submit(workflow)
        entry = wait(prompt_id)
        assert entry["status"]["status_str"] == "success", (json.dumps(entry["status"], indent=1),
                                                            log.read_text()[-4000:])
        out_dir = base / "output"
        from PIL import Image

        def saved(node, key="images", outputs=entry["outputs"]):
            (item,) = outputs[node][key]
            return out_dir / item["subfolder"] / item["filename"]

        best_png, grid_png, latent_png, record_path = saved("9"), saved("10"), saved("13"), saved("11",
                                                                                                 "evosearch_records")
        best = np.asarray(Image.open(best_png).convert("RGB"), dtype=np.int16)
        assert best.shape == (32, 32, 3)
        decoded = np.asarray(Image.open(latent_png).convert("RGB"), dtype=np.int16)
        assert np.abs(decoded - best).max() <= 2  # the LATENT output decodes to the best image
        grid = Image.open(grid_png)
        record = json.loads(record_path.read_text())
        assert record["complete"] is True and math.isfinite(record["best_reward"])
        assert record["best_reward"] == max(record["rewards"])
        assert 0 < record["stats"]["nfe"] <= budget and record["stats"]["nfe_budget"] == budget
        assert record["stats"]["reward_calls"] == record["stats"]["decode_calls"] >= 4
        assert record["comfyui"]["sampling"] == "ve" and record["comfyui"]["scheduler"] == "karras"
        assert record["comfyui"]["model"] == "BaseModel/SD15"  # ComfyUI detected the checkpoint as SD1.5
        assert record["settings"]["method"]["method"] == "evosearch"
        assert record["settings"]["request"]["guidance_scale"] == 4.0
        report = {"prompt_id": prompt_id, "best_png": str(best_png), "grid_png": str(grid_png),
                  "grid_size": grid.size, "latent_png": str(latent_png), "record": str(record_path),
                  "best_reward": record["best_reward"], "nfe": record["stats"]["nfe"],
                  "reward_calls": record["stats"]["reward_calls"], "model": record["comfyui"]["model"],
                  "seconds": record["stats"]["seconds"]}

        # With eta = 0 the Stepper's step is ComfyUI's own Euler step (and its start ComfyUI's max-denoise
        # noise): a candidate re-sampled by the stock KSampler (euler, same scheduler, cfg, and the
        # candidate's initial seed as the noise seed) gives the same image.
        parity = json.loads(json.dumps(workflow))
        parity["8"]["inputs"].update(method="best-of-n", nfe_budget=2 * steps, seed=21, eta=0.0)
        for node in ("9", "10", "11", "13"):
            parity[node]["inputs"]["filename_prefix"] += "_eta0"
        entry3 = wait(submit(parity))
        assert entry3["status"]["status_str"] == "success", log.read_text()[-4000:]
        record3 = json.loads(saved("11", "evosearch_records", entry3["outputs"]).read_text())
        init_seed = record3["lineage"]["events"][0]["seed"]
        assert [e["kind"] for e in record3["lineage"]["events"]] == ["init"]
        ksampler = {k: workflow[k] for k in ("1", "2", "3", "4")}
        ksampler["20"] = {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": init_seed, "steps": steps, "cfg": 4.0, "sampler_name": "euler",
            "scheduler": "karras", "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "denoise": 1.0}}
        ksampler["21"] = {"class_type": "VAEDecode", "inputs": {"samples": ["20", 0], "vae": ["1", 2]}}
        ksampler["22"] = {"class_type": "SaveImage", "inputs": {"images": ["21", 0],
                                                               "filename_prefix": "evosearch_e2e/ksampler"}}
        entry4 = wait(submit(ksampler))
        assert entry4["status"]["status_str"] == "success", log.read_text()[-4000:]
        ours = np.asarray(Image.open(saved("9", outputs=entry3["outputs"])).convert("RGB"), dtype=np.int16)
        stock = np.asarray(Image.open(saved("22", outputs=entry4["outputs"])).convert("RGB"), dtype=np.int16)
        assert np.abs(ours - stock).max() <= 2, np.abs(ours - stock).max()
        report["ksampler_parity"] = {"init_seed": init_seed, "max_abs_pixel_diff": int(np.abs(ours - stock).max())}

        # Cancel (POST /interrupt) during a long search: the best so far is saved, marked incomplete
        big = 3000
        workflow["8"]["inputs"].update(method="best-of-n", nfe_budget=big, seed=8)
        for node in ("9", "10", "11", "13"):
            workflow[node]["inputs"]["filename_prefix"] = workflow[node]["inputs"]["filename_prefix"] + "_cancel"
        log_start = len(log.read_bytes())
        prompt_id2 = submit(workflow)
        sent = []

        def interrupt_after_first_wave():
            if not sent and b"[evosearch] generation 0" in log.read_bytes()[log_start:]:
                sent.append(requests.post(f"{url}/interrupt", json={}, timeout=10).status_code)

        entry2 = wait(prompt_id2, during=interrupt_after_first_wave)
        assert sent == [200], log.read_text()[-4000:]
        assert entry2["status"]["status_str"] == "success", (json.dumps(entry2["status"], indent=1),
                                                             log.read_text()[-4000:])
        record2 = json.loads(saved("11", "evosearch_records", entry2["outputs"]).read_text())
        assert record2["complete"] is False and 0 < record2["stats"]["nfe"] < big
        assert record2["stats"]["reward_calls"] >= 8 and record2["best_reward"] == max(record2["rewards"])
        best2 = np.asarray(Image.open(saved("9", outputs=entry2["outputs"])).convert("RGB"), dtype=np.int16)
        decoded2 = np.asarray(Image.open(saved("13", outputs=entry2["outputs"])).convert("RGB"), dtype=np.int16)
        assert np.abs(decoded2 - best2).max() <= 2
        report["interrupted"] = {"prompt_id": prompt_id2, "nfe": record2["stats"]["nfe"], "nfe_budget": big,
                                 "reward_calls": record2["stats"]["reward_calls"],
                                 "best_reward": record2["best_reward"], "complete": record2["complete"]}
        print("EVOSEARCH_E2E " + json.dumps(report))
        report_path = os.environ.get("EVOSEARCH_E2E_REPORT")
        if report_path:  # keep the server log and the result for a human to look at
            Path(report_path).write_text(json.dumps(report, indent=2) + "\n")
            Path(report_path).with_suffix(".log").write_text(log.read_text())
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
