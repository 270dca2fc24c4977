"""The generalised DDIM step: agreement with diffusers' DDIM, and its noise levels."""

import pytest
import torch
from diffusers import DDIMScheduler

from evosearch.pipelines.diffusion import vp_schedule
from evosearch.core.schedule import NoiseSchedule


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_vp_step_equals_diffusers_ddim(prediction_type, eta):
    config = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                           prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=False,
                           steps_offset=1).config
    steps = 10
    sched, ddim = vp_schedule(config, steps, eta)
    ref = DDIMScheduler.from_config(config)
    ref.set_timesteps(steps)
    assert torch.equal(sched.timesteps, ref.timesteps)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    for i, t in enumerate(ref.timesteps):
        out = torch.randn(x.shape, generator=g)
        z = torch.randn(x.shape, generator=g)
        expected = ref.step(out, t, x, eta=eta, variance_noise=z).prev_sample
        a, s = float(sched.a[i]), float(sched.s[i])
        if prediction_type == "epsilon":
            x0, eps = (x - s * out) / a, out
        else:
            x0, eps = a * x - s * out, s * x + a * out
        got = sched.step(x0, eps, i, z)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        x = expected


def test_noise_std_is_ddim_sigma_and_zero_when_deterministic():
    config = DDIMScheduler(set_alpha_to_one=False).config
    sched, ddim = vp_schedule(config, 20, 1.0)
    ddim.set_timesteps(20)
    for i, t in enumerate(ddim.timesteps):
        prev = int(t) - 1000 // 20
        var = ddim._get_variance(int(t), prev)
        assert sched.noise_std(i) == pytest.approx(float(var) ** 0.5, rel=1e-5)
    assert all(vp_schedule(config, 20, 0.0)[0].noise_std(i) == 0.0 for i in range(20))


def test_flow_step_keeps_marginal_and_ends_at_x0():
    sigmas = torch.linspace(1, 0, 6, dtype=torch.float64)
    sched = NoiseSchedule(a=1 - sigmas, s=sigmas, timesteps=sigmas[:-1] * 1000, eta=1.0)
    assert sched.noise_std(len(sigmas) - 2) == 0.0  # the last step lands on x0_hat exactly
    # x0 = 0 everywhere (a delta data distribution): x_t = t * eps; after a step the
    # marginal must be N(0, s_u^2) for any eta.
    g = torch.Generator().manual_seed(1)
    n = 200_000
    for i in range(len(sigmas) - 1):
        t = float(sigmas[i])
        x = t * torch.randn(n, generator=g, dtype=torch.float64)
        x0, eps = torch.zeros_like(x), (x / t if t > 0 else torch.randn(n, generator=g, dtype=torch.float64))
        u = sched.step(x0, eps, i, torch.randn(n, generator=g, dtype=torch.float64))
        assert float(u.std()) == pytest.approx(float(sigmas[i + 1]), abs=5e-3)
    last = sched.step(torch.full((3,), 0.25, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 4, None)
    assert torch.allclose(last, torch.full((3,), 0.25, dtype=torch.float64))


def test_stochastic_step_requires_noise_and_eta_range():
    sigmas = torch.linspace(1, 0, 4, dtype=torch.float64)
    sched = NoiseSchedule(a=1 - sigmas, s=sigmas, timesteps=sigmas[:-1], eta=0.5)
    with pytest.raises(ValueError, match="noise"):
        sched.step(torch.zeros(2), torch.zeros(2), 0, None)
    with pytest.raises(ValueError, match="eta"):
        NoiseSchedule(a=1 - sigmas, s=sigmas, timesteps=sigmas[:-1], eta=1.5)


def test_sd_at_1000_steps_is_the_full_schedule():
    """Issue 18: SD's steps_offset=1 at num_inference_steps=1000 gives DDIM timesteps 1000..1, past
    the 1000-entry schedule (IndexError, in diffusers' DDIM too). The schedule is then 999..0: every
    training timestep once, its coefficients those of alphas_cumprod, the last step to x0."""
    config = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                           set_alpha_to_one=False, steps_offset=1).config
    sched, ddim = vp_schedule(config, 1000, 1.0)
    assert sched.timesteps.tolist() == list(range(999, -1, -1))
    acp = ddim.alphas_cumprod.double()
    torch.testing.assert_close(sched.a[:-1].double() ** 2, acp.flip(0))
    assert float(sched.s[-1]) ** 2 == pytest.approx(1 - float(ddim.final_alpha_cumprod), abs=1e-12)
    assert all(0 <= sched.noise_std(i) < 1 for i in range(1000))
    # a step count that fits is left as diffusers makes it
    assert torch.equal(vp_schedule(config, 999, 1.0)[0].timesteps, torch.arange(999, 0, -1))
