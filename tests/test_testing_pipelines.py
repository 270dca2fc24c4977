"""Checks for the tiny offline pipelines in ``evosearch.testing``."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from evosearch import testing

# diffusers' EulerDiscreteScheduler calls np.array() on a tensor (numpy 2 copy-keyword notice)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

PROMPT = "a photo of a cat"
TINY = ["tiny_sd", "tiny_sdxl", "tiny_sd3", "tiny_flux"]
_CACHE = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The models are tiny: intra-op threading only adds overhead, and on a busy 2-core box the
    # OpenMP spin-waits of a 2-thread pool can make a 0.03 s call take several seconds.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def get_pipe(name):
    if name not in _CACHE:
        _CACHE[name] = getattr(testing, name)(seed=0)
    return _CACHE[name]


def _call_kwargs(name):
    if name == "tiny_flux":  # distilled guidance (embedded) + optional "true" CFG with a negative prompt
        return dict(guidance_scale=3.5, true_cfg_scale=2.0, negative_prompt="blurry")
    return dict(guidance_scale=5.0)


def _run(pipe, name, seed, prompt=PROMPT, **kw):
    kwargs = dict(num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(seed))
    kwargs.update(_call_kwargs(name))
    kwargs.update(kw)
    return pipe(prompt, **kwargs).images


def test_tokenizers():
    clip = testing.clip_tokenizer()
    assert len(clip) == testing.CLIP_VOCAB_SIZE == 514
    assert clip.model_max_length == 77
    ids = clip(PROMPT, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and ids[0] == clip.bos_token_id == 512 and clip.eos_token_id == 513
    assert clip.eos_token_id in ids

    t5 = testing.t5_tokenizer()
    assert len(t5) == testing.T5_VOCAB_SIZE
    assert (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)
    ids = t5(PROMPT, padding="max_length", max_length=32, truncation=True).input_ids
    assert len(ids) == 32 and 1 in ids and ids[-1] == 0 and 2 not in ids
    assert t5([PROMPT, "x"], padding="longest", return_tensors="pt").input_ids.shape[0] == 2


@pytest.mark.parametrize("name", TINY)
def test_components_cpu_fp32_eval(name):
    pipe = get_pipe(name)
    assert pipe.vae_scale_factor == 8
    for comp in pipe.components.values():
        if isinstance(comp, torch.nn.Module):
            assert not any(m.training for m in comp.modules())
            for p in comp.parameters():
                assert p.dtype == torch.float32 and p.device.type == "cpu"


@pytest.mark.parametrize("name", TINY)
def test_deterministic_and_seed_dependent(name):
    pipe = get_pipe(name)
    a = _run(pipe, name, 0)
    b = _run(pipe, name, 0)
    c = _run(pipe, name, 1)
    assert a.shape == (1, 64, 64, 3)  # default resolution of every tiny pipeline
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4
    # text conditioning reaches the output
    d = _run(pipe, name, 0, prompt="a red sports car")
    assert np.abs(a - d).max() > 1e-5


@pytest.mark.parametrize("name", TINY)
def test_same_seed_same_weights(name):
    p1 = getattr(testing, name)(seed=0)
    p2 = get_pipe(name)
    p3 = getattr(testing, name)(seed=1)
    net = "unet" if hasattr(p1, "unet") else "transformer"
    w1, w2, w3 = (list(getattr(p, net).parameters()) for p in (p1, p2, p3))
    assert all(torch.equal(x, y) for x, y in zip(w1, w2))
    assert any(not torch.equal(x, y) for x, y in zip(w1, w3))


def test_factory_leaves_global_rng_alone():
    torch.manual_seed(123)
    a = torch.randn(4)
    torch.manual_seed(123)
    testing.tiny_sd(seed=7)
    b = torch.randn(4)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", TINY)
def test_non_square_latents(name):
    pipe = get_pipe(name)
    lat = _run(pipe, name, 0, height=64, width=96, output_type="latent")
    expected = {
        "tiny_sd": (1, 4, 8, 12),
        "tiny_sdxl": (1, 4, 8, 12),
        "tiny_sd3": (1, 16, 8, 12),
        "tiny_flux": (1, 4 * 6, 64),  # Flux returns *packed* latents: (B, (h/2)*(w/2), 16*4)
    }[name]
    assert tuple(lat.shape) == expected


@torch.no_grad()
def test_encode_prompt_sd():
    pipe = get_pipe("tiny_sd")
    pe, ne = pipe.encode_prompt(PROMPT, "cpu", 2, True)
    assert pe.shape == ne.shape == (2, 77, 32)
    pe, ne = pipe.encode_prompt([PROMPT, "a dog"], "cpu", 1, False)
    assert pe.shape == (2, 77, 32) and ne is None


@torch.no_grad()
def test_encode_prompt_sdxl():
    pipe = get_pipe("tiny_sdxl")
    pe, ne, pp, npp = pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=2)
    assert pe.shape == ne.shape == (2, 77, 64)
    assert pp.shape == npp.shape == (2, 32)
    assert float(ne.abs().max()) == 0.0  # force_zeros_for_empty_prompt
    pe, ne, pp, npp = pipe.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)
    assert pe.shape == (1, 77, 64) and ne is None and npp is None


@torch.no_grad()
def test_encode_prompt_sd3():
    pipe = get_pipe("tiny_sd3")
    pe, ne, pp, npp = pipe.encode_prompt(PROMPT, None, None, device="cpu", max_sequence_length=32)
    assert pe.shape == ne.shape == (1, 77 + 32, 64)
    assert pp.shape == npp.shape == (1, 64)
    out = _run(pipe, "tiny_sd3", 0, prompt=None, prompt_embeds=pe, negative_prompt_embeds=ne,
               pooled_prompt_embeds=pp, negative_pooled_prompt_embeds=npp, max_sequence_length=32)
    assert out.shape == (1, 64, 64, 3)


@torch.no_grad()
def test_encode_prompt_flux():
    pipe = get_pipe("tiny_flux")
    pe, pp, text_ids = pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=2, max_sequence_length=64)
    assert pe.shape == (2, 64, 32) and pp.shape == (2, 32) and text_ids.shape == (64, 3)
    assert pipe.default_sample_size == 8
    assert pipe.scheduler.config.use_dynamic_shifting


def test_sd_shaped():
    pipe = testing.sd_shaped(seed=0)
    assert tuple(pipe.unet.config.block_out_channels) == (128, 256, 256, 512)
    assert pipe.unet.config.sample_size == 32 and pipe.vae_scale_factor == 8
    assert sum(p.numel() for p in pipe.unet.parameters()) > 20 * sum(
        p.numel() for m in (pipe.vae, pipe.text_encoder) for p in m.parameters()
    )
    out = pipe(PROMPT, height=64, width=64, num_inference_steps=1, guidance_scale=1.0, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()
