"""Steppers on tiny offline SD, SDXL, SD3 and FLUX pipelines: explicit noise, NFE,
micro-batch invariance, seed determinism and replay of the winner."""

import pytest
import torch

from evosearch import BestOfN, EvoSearch, FunctionReward, SearchPipeline
from evosearch.pipelines import DiffusionStepper, FlowStepper, stepper_for
from evosearch import testing

FACTORIES = {
    "sd": (testing.tiny_sd, DiffusionStepper, 5.0),
    "sdxl": (testing.tiny_sdxl, DiffusionStepper, 5.0),
    "sd3": (testing.tiny_sd3, FlowStepper, 5.0),
    "flux": (testing.tiny_flux, FlowStepper, 3.5),
}
STEPS = 4
PROMPT = "a photo of a cat"


@pytest.fixture(scope="module", params=list(FACTORIES))
def family(request):
    factory, cls, guidance = FACTORIES[request.param]
    return request.param, factory(seed=0), cls, guidance


def contrast(images, prompts):
    return images.std(dim=(1, 2, 3))


def prepared(pipe, guidance, max_batch_size=8):
    stepper = stepper_for(pipe, max_batch_size=max_batch_size, eta=1.0)
    stepper.prepare(PROMPT, num_inference_steps=STEPS, guidance_scale=guidance)
    return stepper


def test_stepper_family_and_shapes(family):
    name, pipe, cls, guidance = family
    stepper = prepared(pipe, guidance)
    assert isinstance(stepper, cls)
    x = stepper.start([1, 2, 3])
    assert x.shape == (3, *stepper.state_shape)
    images = stepper.finish(x)
    assert images.shape == (3, 3, 64, 64) and images.min() >= 0 and images.max() <= 1
    assert all(stepper.noise_scale(i) > 0 for i in range(STEPS - 1))
    if cls is FlowStepper:
        assert stepper.noise_scale(STEPS - 1) == 0.0  # the last flow step lands on x0_hat


def test_explicit_noise_is_respected(family):
    name, pipe, cls, guidance = family
    stepper = prepared(pipe, guidance)
    x = stepper.start([7, 8])
    z1, z2 = stepper.sample_noise([1, 2]), stepper.sample_noise([3, 4])
    a, b, c = stepper.step(x, 0, z1), stepper.step(x, 0, z1), stepper.step(x, 0, z2)
    assert torch.equal(a, b)
    assert (a - c).abs().min() > 0  # every row changes with its noise
    with pytest.raises(ValueError, match="noise"):
        stepper.step(x, 0, None)  # a stochastic step never draws its own noise
    # same seed, same row, whatever the batch it is drawn in
    assert torch.equal(stepper.sample_noise([5, 9])[1], stepper.sample_noise([9])[0])


def test_nfe_counted_exactly(family):
    name, pipe, cls, guidance = family
    stepper = prepared(pipe, guidance, max_batch_size=2)
    x = stepper.start([1, 2, 3])
    n0 = stepper.nfe
    for i in range(STEPS):
        x = stepper.step(x, i, stepper.sample_noise([10 + i, 20 + i, 30 + i]) if stepper.noise_scale(i) else None)
    assert stepper.nfe - n0 == 3 * STEPS
    calls = []
    hook = stepper.denoiser.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        out = SearchPipeline.from_pipe(pipe, reward=contrast, method=BestOfN(n=3), max_batch_size=2)(
            PROMPT, seed=0, num_inference_steps=STEPS, guidance_scale=guidance, progress=False)
    finally:
        hook.remove()
    assert out.stats.nfe == 3 * STEPS
    assert len(calls) == 2 * STEPS  # micro-batches of 2 and 1 rows, one (CFG-batched) call each


def test_micro_batch_invariance(family):
    name, pipe, cls, guidance = family
    outs = []
    for mb in (1, 2, 8):
        stepper = prepared(pipe, guidance, max_batch_size=mb)
        x = stepper.start([1, 2, 3, 4, 5])
        for i in range(STEPS):
            x = stepper.step(x, i, stepper.sample_noise([i * 10 + k for k in range(5)]))
        outs.append((x, stepper.finish(x)))
    for x, img in outs[1:]:
        torch.testing.assert_close(x, outs[0][0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(img, outs[0][1], rtol=1e-4, atol=1e-4)


def test_seed_determinism_and_replay(family):
    name, pipe, cls, guidance = family
    search = SearchPipeline.from_pipe(pipe, reward=FunctionReward(contrast),
                                      method=EvoSearch(evolution_schedule=[0, 2], population_schedule=[3, 3, 3],
                                                       elite_size=1), max_batch_size=2)
    kw = dict(seed=11, num_inference_steps=STEPS, guidance_scale=guidance, output_type="pt", progress=False)
    a, b = search(PROMPT, **kw), search(PROMPT, **kw)
    assert a.rewards == b.rewards and torch.equal(a.images, b.images)
    assert a.stats.nfe == 3 * STEPS + 3 * STEPS + 3 * (STEPS - 2)
    c = search(PROMPT, **{**kw, "seed": 12})
    assert c.rewards != a.rewards
    replayed = search.replay(a.best.lineage, output_type="pt")
    assert (replayed - a.best.image).abs().max() <= 1 / 255 + 1e-6
    assert float(contrast(replayed[None], None)) == pytest.approx(a.best.reward, abs=1e-4)


def test_guidance_changes_the_sample():
    pipe = testing.tiny_sd(seed=0)
    outs = []
    for g in (1.0, 6.0):
        stepper = prepared(pipe, g)
        x = stepper.start([3])
        for i in range(STEPS):
            x = stepper.step(x, i, stepper.sample_noise([i]))
        outs.append(x)
    assert not torch.allclose(outs[0], outs[1])


def test_bad_sizes_are_named():
    pipe = testing.tiny_sd3(seed=0)
    stepper = stepper_for(pipe)
    with pytest.raises(ValueError, match="height/width"):
        stepper.prepare(PROMPT, num_inference_steps=2, height=72, width=64)


def _with_ddim(pipe, **overrides):
    """``pipe`` rebuilt with a DDIM scheduler on its own noise schedule, through the pipeline class's
    constructor (StableDiffusionPipeline patches a DDIM config without steps_offset to steps_offset=1)."""
    from diffusers import DDIMScheduler

    from evosearch.testing.components import SD_BETAS

    scheduler = DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, **overrides)
    return type(pipe)(**{**pipe.components, "scheduler": scheduler})


@pytest.mark.parametrize("name", ["sd", "sd-patched", "sdxl", "sd3", "flux"])
def test_deterministic_step_reproduces_the_pipeline(name):
    """eta = 0 is the pipeline's own sampler: from the same initial latents, the same image, for the
    scheduler as the pipeline configured it."""
    import warnings

    factory, _, guidance = FACTORIES[name.split("-")[0]]
    pipe = factory(seed=0)
    if name == "sd-patched":  # a DDIM config without steps_offset: the pipeline patches it to 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe = _with_ddim(pipe)
        assert pipe.scheduler.config.steps_offset == 1
    elif name == "sdxl":
        pipe = _with_ddim(pipe, steps_offset=1)
    stepper = stepper_for(pipe, eta=0.0)
    stepper.prepare(PROMPT, num_inference_steps=STEPS, guidance_scale=guidance)
    x = stepper.start([3])
    latents = x.clone()
    for i in range(STEPS):
        x = stepper.step(x, i, None)
    ours = stepper.finish(x)
    kwargs = dict(prompt=PROMPT, num_inference_steps=STEPS, guidance_scale=guidance, output_type="pt", latents=latents)
    if name.startswith("sd") and name != "sd3":
        kwargs["eta"] = 0.0
    reference = pipe(**kwargs).images
    torch.testing.assert_close(ours, reference.float(), atol=2e-4, rtol=0)
