"""The exact testbed (evosearch.testbed): an analytic Gaussian-mixture "model" wrapped as
diffusers models, driven by the REAL Steppers, checked against closed forms.

Statistics (all at fixed seeds, so every run is deterministic):

* mode weights: per component |p_hat - p| <= 4 SE with SE = sqrt(p (1 - p) / n), and a
  chi-square goodness-of-fit p-value > 1e-3; p = the mixture weights (components are > 6 std
  apart, so "mode_of" = the latent component for all but ~2e-4 of exact samples);
* per-mode mean: |mean_hat - mu| <= 4 sqrt(var / n_k) + MEAN_BIAS * std (per dimension);
* per-mode variance: |var_hat / var - 1| <= 4 sqrt(2 / (n_k - 1)) + VAR_BIAS (per dimension);
* exact log-likelihood: |mean log p(x_hat) - E_p[log p]| <= 4 SE + LOGP_BIAS.

The *_BIAS allowances are the samplers' own discretization error at STEPS steps, measured with
200k samples (largest seen: weights 0.0034, mean 0.034 std, variance -3.4 % for the ancestral
eta = 1 step; it shrinks ~ 1 / steps: at 30 steps the eta = 1 step loses 10-20 % of each
mode's variance, a property of the sampler, not a bug). The analytic model is cheap, so the
marginal tests use STEPS = 250 steps on N = 4000 samples (well under a second each).
"""

import math
import time

import numpy as np
import pytest
import torch
from scipy import stats

from evosearch import BestOfN, FunctionReward, ParticleSearch, SearchPipeline
from evosearch.pipelines import DiffusionStepper, FlowStepper, stepper_for
from evosearch.testbed import (GaussianMixture, GaussianMixtureDiffusionPipeline, GaussianMixtureFlowPipeline,
                               GaussianMixtureTransformer, GaussianMixtureUNet, best_of_n_mode_probs,
                               best_of_n_reward_cdf, gaussian_mixture_pipeline, samples_from, samples_to_states,
                               tilted_mixture)

# three diagonal-covariance components in 2-D, > 6 std apart
GM = GaussianMixture(weights=[0.5, 0.3, 0.2], means=[[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]],
                     variances=[[1.0, 0.6], [0.6, 1.0], [0.8, 0.8]])
N = 4000
STEPS = 250
MEAN_BIAS = 0.06   # in units of the component std
VAR_BIAS = 0.05    # relative
LOGP_BIAS = 0.05   # nats

_PIPES = {}


def pipe_of(family, prediction_type="epsilon"):
    key = (family, prediction_type)
    if key not in _PIPES:
        _PIPES[key] = gaussian_mixture_pipeline(GM, family=family, prediction_type=prediction_type)
    return _PIPES[key]


def sample_chain(stepper, n, seed, steps):
    """Run the stepper's own start/step/finish; the step noise is drawn in bulk (the stepper
    never draws noise itself), the initial states through ``stepper.start``."""
    stepper.prepare(None, num_inference_steps=steps)
    g = torch.Generator().manual_seed(seed)
    x = stepper.start(range(seed * 10**6, seed * 10**6 + n))
    for i in range(stepper.num_steps):
        z = torch.randn(x.shape, generator=g) if stepper.noise_scale(i) > 0 else None
        x = stepper.step(x, i, z)
    images = stepper.finish(x)
    assert images.shape == (n, 3, 1, GM.dim)
    return samples_from(images).double().numpy()


def check_marginal(x, gm=GM, label=""):
    """Assert mode weights, per-mode means and variances, and the mean log-likelihood; return a summary."""
    n = len(x)
    modes = gm.mode_of(x)
    counts = np.bincount(modes, minlength=gm.num_components)
    p_hat = counts / n
    se = np.sqrt(gm.weights * (1 - gm.weights) / n)
    assert (np.abs(p_hat - gm.weights) <= 4 * se).all(), f"{label}: mode weights {p_hat} vs {gm.weights} (SE {se})"
    chi2 = stats.chisquare(counts, gm.weights * n)
    assert chi2.pvalue > 1e-3, f"{label}: chi-square p={chi2.pvalue:.2g}, counts {counts}"
    for k in range(gm.num_components):
        xs = x[modes == k]
        nk = len(xs)
        sd = np.sqrt(gm.variances[k])
        dmean = np.abs(xs.mean(0) - gm.means[k])
        assert (dmean <= 4 * sd / math.sqrt(nk) + MEAN_BIAS * sd).all(), f"{label}: mode {k} mean {xs.mean(0)}"
        ratio = xs.var(0, ddof=1) / gm.variances[k]
        assert (np.abs(ratio - 1) <= 4 * math.sqrt(2 / (nk - 1)) + VAR_BIAS).all(), \
            f"{label}: mode {k} variance ratio {ratio}"
    logp = gm.log_prob(x)
    ref = gm.log_prob(gm.sample(200_000, 123)[0])
    assert abs(logp.mean() - ref.mean()) <= 4 * ref.std() / math.sqrt(n) + LOGP_BIAS, \
        f"{label}: mean log p {logp.mean():.4f} vs {ref.mean():.4f}"
    return {"weights": p_hat.round(4).tolist(), "chi2_p": round(float(chi2.pvalue), 3)}


# ---------------------------------------------------------------------------- the model is exact
def _quadrature_posterior_mean(gm, xt, a, s):
    """E[x0 | x_t] by brute-force quadrature on a fine 2-D grid (independent of the closed form)."""
    g0 = np.linspace(-10, 10, 801)
    g1 = np.linspace(-6, 11, 681)
    X0, X1 = np.meshgrid(g0, g1, indexing="ij")
    grid = np.stack([X0.ravel(), X1.ravel()], 1)
    logp = gm.log_prob(grid)
    out = []
    for x in xt:
        loglik = -0.5 * ((x - a * grid) ** 2).sum(1) / s**2
        w = np.exp(logp + loglik - (logp + loglik).max())
        out.append((w[:, None] * grid).sum(0) / w.sum())
    return np.stack(out)


def _numerical_score(gm, x, a, s, h=1e-5):
    pt = gm.noised(a, s)
    grads = []
    for d in range(gm.dim):
        e = np.zeros(gm.dim)
        e[d] = h
        grads.append((pt.log_prob(x + e) - pt.log_prob(x - e)) / (2 * h))
    return np.stack(grads, 1)


@pytest.mark.parametrize("t", [100, 400, 700, 950])
def test_denoiser_is_exact(t):
    eps_unet = pipe_of("diffusion", "epsilon").unet
    v_unet = pipe_of("diffusion", "v_prediction").unet
    a, s = (float(c) for c in eps_unet.coefficients(t))
    # points near the modes, between them and in the tails, at the scale of x_t
    pts = np.array([[-4.0, 0.0], [4.0, 0.5], [0.0, 5.0], [0.0, 2.0], [-1.5, 3.0], [6.0, -2.0]]) * a \
        + np.array([[0.3, -0.2], [0.1, 0.4], [-0.5, 0.0], [0.0, 0.0], [0.2, 0.2], [0.0, 0.0]]) * s
    x = samples_to_states(torch.tensor(pts, dtype=torch.float64)).float()
    with torch.no_grad():
        eps = samples_from(eps_unet(x, t).sample).double().numpy()
        v = samples_from(v_unet(x, torch.tensor([t] * len(pts)), return_dict=False)[0]).double().numpy()
    xd = samples_from(x).double().numpy()
    x0_eps = (xd - s * eps) / a
    x0_v = a * xd - s * v
    x0_quad = _quadrature_posterior_mean(GM, xd, a, s)
    tol = 2e-4 + 2e-6 / a  # float32 outputs divided by a (a = 0.04 at t = 950)
    np.testing.assert_allclose(x0_eps, x0_quad, atol=tol)
    np.testing.assert_allclose(x0_v, x0_quad, atol=tol)
    # Tweedie: eps = -s * grad log p_t(x_t) with p_t the noised mixture
    np.testing.assert_allclose(eps, -s * _numerical_score(GM, xd, a, s), atol=1e-4)
    # epsilon and v parametrisations agree on (x0, eps) through the DiffusionStepper too
    preds = []
    for pt in ("epsilon", "v_prediction"):
        st = stepper_for(pipe_of("diffusion", pt), max_batch_size=64)
        st.prepare(None, num_inference_steps=20)
        preds.append(st.predict(x, 10))
    torch.testing.assert_close(preds[0][0], preds[1][0], atol=5e-5, rtol=1e-5)
    torch.testing.assert_close(preds[0][1], preds[1][1], atol=5e-5, rtol=1e-5)


def test_flow_velocity_matches_the_vp_denoiser():
    """x_t = a x0 + s eps depends on the noise only through s / a: the flow model at sigma with
    sigma / (1 - sigma) = s_t / a_t gives the same x0 as the VP model at t on x * (1 - sigma) / a_t."""
    unet = GaussianMixtureUNet.from_config(pipe_of("diffusion").unet.config).double()
    tr = GaussianMixtureTransformer.from_config(pipe_of("flow").transformer.config).double()
    assert unet.dtype == tr.dtype == torch.float64
    g = torch.Generator().manual_seed(0)
    for t in (50, 300, 800):
        a, s = (float(c) for c in unet.coefficients(t))
        sigma = s / (a + s)
        x = torch.randn(64, 1, 1, 2, generator=g, dtype=torch.float64) * 3
        x0_vp = (x - s * unet(x, t).sample) / a
        xf = x * (1 - sigma) / a
        x0_flow = xf - sigma * tr(xf, torch.tensor(sigma * 1000.0, dtype=torch.float64)).sample
        torch.testing.assert_close(x0_flow, x0_vp, atol=1e-9, rtol=1e-9)
        # and the flow x0 is the closed-form posterior mean
        torch.testing.assert_close(x0_flow.reshape(64, 2), GM.posterior_mean(xf.reshape(64, 2), 1 - sigma, sigma))


def test_models_save_and_load(tmp_path):
    for model in (pipe_of("diffusion", "v_prediction").unet, pipe_of("flow").transformer):
        model.save_pretrained(tmp_path / type(model).__name__)
        loaded = type(model).from_pretrained(tmp_path / type(model).__name__)
        public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
        assert public(loaded.config) == public(model.config)
        x = torch.randn(5, 1, 1, 2, generator=torch.Generator().manual_seed(0))
        t = 500 if isinstance(model, GaussianMixtureUNet) else torch.tensor(500.0)
        torch.testing.assert_close(loaded(x, t).sample, model(x, t).sample, rtol=0, atol=0)
        m = loaded.mixture
        np.testing.assert_allclose(m.weights, GM.weights)
        np.testing.assert_allclose(m.means, GM.means)
        np.testing.assert_allclose(m.variances, GM.variances)
    assert loaded.config.sample_size == [1, 2] and loaded.config.in_channels == 1


def test_pipelines_wire_into_the_steppers_and_reject_bad_configs():
    from diffusers import DDIMScheduler, DDPMScheduler

    d, f = pipe_of("diffusion"), pipe_of("flow")
    sd, sf = stepper_for(d), stepper_for(f)
    assert isinstance(sd, DiffusionStepper) and sd.kind == "unconditional"
    assert isinstance(sf, FlowStepper) and sf.kind == "unconditional" and sf.default_guidance_scale == 1.0
    sf.prepare(None, num_inference_steps=5)
    assert sf.state_shape == (1, 1, 2)
    # the decode hook returns raw, unclamped samples
    x = torch.tensor([[[[-7.5, 3.25]]]])
    assert torch.equal(sf.finish(x), x.expand(1, 3, 1, 2))
    with pytest.raises(ValueError, match="height/width"):
        sf.prepare(None, num_inference_steps=5, height=4)
    unet = d.unet
    with pytest.raises(ValueError, match="clip_sample"):
        GaussianMixtureDiffusionPipeline(unet=unet, scheduler=DDIMScheduler())
    with pytest.raises(ValueError, match="prediction_type"):
        GaussianMixtureDiffusionPipeline(unet=unet, scheduler=DDIMScheduler(clip_sample=False,
                                                                            prediction_type="v_prediction"))
    with pytest.raises(ValueError, match="alphas_cumprod"):
        GaussianMixtureDiffusionPipeline(unet=unet, scheduler=DDPMScheduler(clip_sample=False,
                                                                            beta_schedule="squaredcos_cap_v2"))
    with pytest.raises(TypeError, match="FlowMatchEulerDiscreteScheduler"):
        GaussianMixtureFlowPipeline(transformer=f.transformer, scheduler=DDIMScheduler())
    with pytest.raises(ValueError, match="variances"):
        GaussianMixture([1.0], [[0.0, 0.0]], [-1.0])


# ---------------------------------------------------------------------------- marginals through the real steps
MARGINALS = [("diffusion", "epsilon", 0.0), ("diffusion", "epsilon", 0.5), ("diffusion", "epsilon", 1.0),
             ("diffusion", "v_prediction", 0.5), ("diffusion", "v_prediction", 1.0),
             ("flow", "epsilon", 0.0), ("flow", "epsilon", 0.3), ("flow", "epsilon", 0.7), ("flow", "epsilon", 1.0)]


@pytest.mark.parametrize("family,prediction_type,eta", MARGINALS)
def test_every_step_samples_the_mixture(family, prediction_type, eta):
    stepper = stepper_for(pipe_of(family, prediction_type), max_batch_size=N, eta=eta)
    x = sample_chain(stepper, N, seed=1, steps=STEPS)
    assert stepper.nfe == N * STEPS
    check_marginal(x, label=f"{family}/{prediction_type}/eta={eta}")


def test_the_diffusers_pipelines_sample_the_mixture_too():
    """The pipelines' own diffusers loops (DDPM ancestral, flow Euler ODE) agree with the closed form."""
    ddpm = gaussian_mixture_pipeline(GM, family="diffusion", scheduler="ddpm")
    out = ddpm(batch_size=N, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(2))
    assert out.samples.shape == (N, 2) and out.images.shape == (N, 1, 1, 2)
    check_marginal(out.samples.double().numpy(), label="DDPMScheduler")
    flow = pipe_of("flow")
    out = flow(batch_size=N, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(3))
    check_marginal(out.samples.double().numpy(), label="FlowMatchEuler")


# ---------------------------------------------------------------------------- closed forms for search
W_BON = np.array([1.0, 0.5])


def test_order_statistics_formula_matches_exact_sampling():
    p = best_of_n_mode_probs(GM, W_BON, 4)
    assert p.sum() == pytest.approx(1.0, abs=1e-8)
    assert best_of_n_mode_probs(GM, W_BON, 1) == pytest.approx(GM.weights, abs=1e-8)
    rng = np.random.default_rng(0)
    m = 100_000
    x, labels = GM.sample(4 * m, rng)
    y = (x @ W_BON).reshape(m, 4)
    win = labels.reshape(m, 4)[np.arange(m), y.argmax(1)]
    freq = np.bincount(win, minlength=3) / m
    assert np.abs(freq - p).max() <= 4 * np.sqrt(p * (1 - p) / m).max()
    assert stats.kstest(y.max(1), lambda v: best_of_n_reward_cdf(GM, W_BON, 4, v)).pvalue > 1e-3


def test_tilted_mixture_is_the_exact_tilt():
    """p(x) exp(lam w.x) / Z equals the tilted mixture's density pointwise (Z by quadrature)."""
    lam, w = 1.0, np.array([0.25, -0.1])
    tilt = tilted_mixture(GM, lam, w=w)
    g0, g1 = np.linspace(-11, 11, 441), np.linspace(-7, 12, 381)
    grid = np.stack(np.meshgrid(g0, g1, indexing="ij"), -1).reshape(-1, 2)
    logq = GM.log_prob(grid) + lam * grid @ w
    log_z = np.log(np.exp(logq).sum() * (g0[1] - g0[0]) * (g1[1] - g1[0]))
    np.testing.assert_allclose(tilt.log_prob(grid[::97]), (logq - log_z)[::97], atol=1e-6)
    assert tilted_mixture(GM, 0.0, w=w).weights == pytest.approx(GM.weights)
    # a per-mode constant reward only reweights
    t2 = tilted_mixture(GM, 2.0, mode_rewards=[0.0, 1.0, 0.0])
    assert t2.weights == pytest.approx(np.array([0.5, 0.3 * math.e**2, 0.2]) / (0.7 + 0.3 * math.e**2))
    np.testing.assert_array_equal(t2.means, GM.means)


class Recorder(FunctionReward):
    """A projection reward that remembers every batch it scored (raw samples and rewards)."""

    def __init__(self, w):
        self.w = torch.as_tensor(w, dtype=torch.float64)
        self.calls = []
        super().__init__(self._fn, name="projection")

    def _fn(self, images, prompts):
        x = samples_from(images).double()
        r = x @ self.w
        self.calls.append((x.numpy().copy(), r.float().numpy().copy()))
        return r


def test_best_of_n_winners_follow_the_order_statistics():
    """400 independent BestOfN(n=4) searches through SearchPipeline (DDIM ODE, 50 steps): the
    winner's mode and reward follow P_k = int 4 pi_k f_k(y) F(y)^3 dy and F(y)^4.

    Measured with 160k exact-model groups: the sampler's own bias at 50 steps is <= 0.006 on
    the winner-mode probabilities and 0.02 in KS distance (0.034 at 30 steps); the KS
    critical value at p = 1e-3 for 400 winners is 0.098."""
    searches, n = 400, 4
    reward = Recorder(W_BON)
    sp = SearchPipeline.from_pipe(pipe_of("diffusion"), reward=reward, method=BestOfN(n=n), max_batch_size=64,
                                  eta=0.0)
    winners, rewards = [], []
    steps = 50
    for seed in range(searches):
        out = sp(None, seed=seed, num_inference_steps=steps, output_type="pt", progress=False)
        x, r = reward.calls[-1]
        assert len(r) == n and out.stats.nfe == n * steps
        k = int(np.argmax(r))
        assert out.best.reward == pytest.approx(float(r[k]), abs=0)
        winners.append(x[k])
        rewards.append(out.best.reward)
    modes = GM.mode_of(np.stack(winners))
    freq = np.bincount(modes, minlength=3) / searches
    p = best_of_n_mode_probs(GM, W_BON, n)
    se = np.sqrt(p * (1 - p) / searches)
    assert (np.abs(freq - p) <= 4 * se + 0.01).all(), f"winner modes {freq} vs {p}"
    assert stats.chisquare(np.bincount(modes, minlength=3), p * searches).pvalue > 1e-3
    assert stats.kstest(rewards, lambda v: best_of_n_reward_cdf(GM, W_BON, n, v)).pvalue > 1e-3
    # and BestOfN is not plain sampling: the winner distribution is far from the mixture weights
    assert np.abs(freq - GM.weights).max() > 0.3


def test_particle_search_targets_the_tilted_distribution():
    """FK steering with the RT potential: the final weighted particles approximate
    p(x) exp(lam r(x)) / Z; compare mode weights with the closed-form tilted mixture.

    The estimate per run is the final-weighted fraction of particles in each mode; its SE
    comes from the spread over independent runs. RT potentials accumulate (G_t = exp(lam r_t)
    at every potential step, undone by the final weights), so the intermediate tilt is
    (number of potential steps) x lam and the finite-N bias grows with it: measured over
    150 runs, 5 potential steps (resample_every=10 of 50) at 128 particles give a bias
    <= 0.009 on the mode weights, 10 potential steps (resample_every=5) about 0.04."""
    lam, w = 1.0, np.array([0.25, 0.0])
    target = tilted_mixture(GM, lam, w=w)
    runs, n_particles, steps = 40, 128, 50
    reward = Recorder(w)
    method = ParticleSearch(n_particles=n_particles, potential="rt", lambda_=lam, resample_every=10, tempering=False,
                            standardize=False)
    sp = SearchPipeline.from_pipe(pipe_of("diffusion"), reward=reward, method=method, max_batch_size=256, eta=1.0)
    estimates = []
    for seed in range(runs):
        out = sp(None, seed=seed, num_inference_steps=steps, output_type="pt", progress=False)
        x, _ = reward.calls[-1]
        weights = np.asarray(out.history[-1]["weights"])
        assert len(weights) == len(x) == n_particles
        estimates.append(np.bincount(GM.mode_of(x), weights=weights, minlength=3))
    estimates = np.stack(estimates)
    mean, se = estimates.mean(0), estimates.std(0, ddof=1) / math.sqrt(runs)
    assert (np.abs(mean - target.weights) <= 4 * se + 0.02).all(), \
        f"particle mode weights {mean} (SE {se}) vs tilted {target.weights}"
    # the tilt is large: plain sampling would be far off
    assert np.abs(GM.weights - target.weights).max() > 0.3


def _particle_mode_weights(potential, tempering, runs=10, n=500, lam=3.0, w=(0.5, 0.5)):
    """Mean and standard error over runs of the final-weighted mode fractions of ParticleSearch."""
    reward = Recorder(np.asarray(w))
    method = ParticleSearch(n_particles=n, potential=potential, lambda_=lam, tempering=tempering, standardize=False)
    sp = SearchPipeline.from_pipe(pipe_of("diffusion"), reward=reward, method=method, max_batch_size=1024, eta=1.0)
    estimates = []
    for seed in range(runs):
        out = sp(None, seed=seed, num_inference_steps=50, output_type="pt", progress=False)
        x, _ = reward.calls[-1]
        estimates.append(np.bincount(GM.mode_of(x), weights=np.asarray(out.history[-1]["weights"]), minlength=3))
    estimates = np.stack(estimates)
    return estimates.mean(0), estimates.std(0, ddof=1) / math.sqrt(runs)


def test_tempered_particles_reach_the_tilted_target_where_untempered_collapse():
    """The defaults (tempering over the potential steps, resampling when ESS < N/2) make the "rt" and
    "max" potentials reach p(x) exp(lam w.x) within 3 standard errors at N = 500; without tempering
    "rt" piles onto the best mode (the intermediate targets are tilted by up to K lam)."""
    target = tilted_mixture(GM, 3.0, w=np.array([0.5, 0.5])).weights
    assert 0.2 < target[1] < 0.3 and target[2] > 0.7  # two modes hold the target
    assert ParticleSearch().tempering  # the default
    for potential in ("rt", "max"):
        mean, se = _particle_mode_weights(potential, tempering=True)
        assert (np.abs(mean - target) <= 3 * se + 0.005).all(), f"{potential}: {mean} (SE {se}) vs {target}"
    mean, _ = _particle_mode_weights("rt", tempering=False)
    assert mean[2] > 0.9 and abs(mean[1] - target[1]) > 0.2  # the documented collapse


def _state_after_mutation(kind, e, n=8000, steps=25, base=0, rate=None):
    """x_e of n trajectories (DDIM eta=1): plain, or with EvoSearch's intermediate mutation
    ``kind`` applied at step e (the engine's own event code); and the std c of step e - 1."""
    from evosearch.core.lineage import Event, Lineage, apply_events, denoise

    stepper = stepper_for(pipe_of("diffusion"), max_batch_size=n, eta=1.0)
    stepper.prepare(None, num_inference_steps=steps)
    seeds = list(range(base, base + n))
    x = denoise(stepper, stepper.start(seeds), seeds, 0, e)
    if kind != "plain":
        lineages = [Lineage([Event("init", 0, s), Event(kind, e, 10**7 + s, rate=rate)])
                    for s in seeds]
        x = apply_events(stepper, x, lineages)
    return samples_from(x).double().numpy(), stepper.noise_scale(e - 1)


def test_resample_mutation_keeps_the_samplers_law_and_sigma_adds_its_variance():
    """EvoSearch's intermediate mutations on the testbed, at step 10 of 25: after "resample"
    (beta = 0.5, and 1: all of the step's noise re-drawn) x_e has the law plain sampling gives it
    (total variance within 4 SE); after "sigma" (the authors' x + c eps) every coordinate has c^2
    more variance."""
    plain, c = _state_after_mutation("plain", 10)
    assert 0.3 < c < 0.8  # a step with real noise

    def total_variance(x):
        dev2 = (x - x.mean(0)) ** 2
        return dev2.mean(0).sum(), math.sqrt((dev2.var(0) / len(x)).sum())

    v0, se0 = total_variance(plain)
    for kind, rate, excess in (("resample", 0.5, 0.0), ("resample", 1.0, 0.0), ("sigma", None, GM.dim * c * c)):
        x, _ = _state_after_mutation(kind, 10, base=50_000, rate=rate)
        v, se = total_variance(x)
        assert abs(v - v0 - excess) <= 4 * math.hypot(se, se0), f"{kind}: total variance {v:.3f} vs {v0:.3f} + {excess:.3f}"
    assert GM.dim * c * c > 8 * math.hypot(se, se0), "the test cannot tell the two apart"
