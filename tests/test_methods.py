"""Zero-order search, search over paths and particle resampling (FK steering) on the tiny pixel
UNet: exact NFE, budgets, replay of the winner, determinism, interrupts, clear errors; and the
shared maths (neighbours on the sphere, forward re-noising, resampling schemes, ESS, potentials)."""

import math

import numpy as np
import pytest
import torch

from evosearch import BestOfN, ParticleSearch, PathSearch, SearchPipeline, ZeroOrderSearch
from evosearch.registry import METHODS
from evosearch.search import Event, Lineage
from evosearch.core.mutation import sphere_neighbor
from evosearch.core.schedule import NoiseSchedule
from evosearch.search.paths import paths_cost
from evosearch.search.ops.potentials import Potentials
from evosearch.search.ops.resampling import (ess, ess_from_log, multinomial, normalize_log_weights,
                                         resample, stratified, systematic)

STEPS = 4


def search(pipe, reward, method, max_batch_size=8, **kw):
    return SearchPipeline.from_pipe(pipe, reward=reward, method=method, max_batch_size=max_batch_size, **kw)


def run(pipe, reward, method, seed=0, budget=None, steps=STEPS, max_batch_size=8, **kw):
    return search(pipe, reward, method, max_batch_size)("", seed=seed, num_inference_steps=steps, nfe_budget=budget,
                                                        output_type="pt", progress=False, **kw)


# -- exact NFE -------------------------------------------------------------------------------
def test_zero_order_nfe_and_pivot_moves(pixel_pipe, brightness):
    out = run(pixel_pipe, brightness, ZeroOrderSearch(n_neighbors=3, iterations=2))
    assert out.stats.nfe == STEPS * (1 + 2 * 3) == ZeroOrderSearch(n_neighbors=3, iterations=2).cost(None, STEPS)
    assert out.stats.reward_calls == 7 and [h["population"] for h in out.history] == [1, 3, 3]
    assert out.history[0]["action"] == "start"
    assert all(h["action"] in ("move", "restart", "stay") for h in out.history[1:])
    assert out.best.reward == max(max(h["rewards"]) for h in out.history)
    # sized from the budget: every whole trajectory is spent, the last iteration may be smaller
    m = ZeroOrderSearch(n_neighbors=3)
    out = run(pixel_pipe, brightness, m, budget=9 * STEPS + 3)
    assert out.stats.nfe == 9 * STEPS == m.cost(9 * STEPS + 3, STEPS)
    assert [h["population"] for h in out.history] == [1, 3, 3, 2]


def test_paths_nfe_and_rounds(pixel_pipe, brightness):
    m = PathSearch(n_keep=2, width=3, n_start=5, search_steps=[1, 2], renoise_steps=1)
    out = run(pixel_pipe, brightness, m)
    # n_start * s1 + K * M * ((s2 - (s1 - r)) + (T - (s2 - r)))
    expected = 5 * 1 + 2 * 3 * ((2 - 0) + (STEPS - 1))
    assert out.stats.nfe == expected == m.cost(None, STEPS) == paths_cost(5, 2, 3, [1, 2], 1, STEPS)
    previews = [h for h in out.history if h.get("preview")]
    assert [h["population"] for h in previews] == [5, 6] and [h["step"] for h in previews] == [1, 2]
    assert out.history[-1]["population"] == 6 and not out.history[-1].get("preview")
    assert out.stats.reward_calls == 5 + 6 + 6 and out.stats.decode_calls == 5 + 6 + 6
    assert len(out.images) == 6 and out.best.reward == max(out.history[-1]["rewards"])
    kinds = [e.kind for e in out.best.lineage.events]
    assert kinds == ["init", "renoise", "renoise"]
    assert [(e.from_step, e.step) for e in out.best.lineage.events[1:]] == [(1, 0), (2, 1)]


def test_paths_sizes_itself_from_budget(pixel_pipe, brightness):
    m = PathSearch(n_keep=2)
    out = run(pixel_pipe, brightness, m, budget=80)
    plan = out.settings["plan"]
    assert out.stats.nfe == m.cost(80, STEPS) <= 80
    assert out.stats.nfe == paths_cost(plan["n_start"], 2, plan["width"], plan["search_steps"], plan["renoise_steps"],
                                       STEPS)
    assert out.stats.nfe > 80 - plan["search_steps"][0]  # leftover budget widened the first round


@pytest.mark.parametrize("steps", [1, 2, 4, 7, 50])
@pytest.mark.parametrize("budget", [8, 33, 100, 257, 1600, 5000])
def test_budget_sized_plans_never_exceed_budget(steps, budget):
    for m in (ZeroOrderSearch(), ZeroOrderSearch(n_neighbors=7), PathSearch(), PathSearch(n_keep=3, width=2),
              ParticleSearch()):
        try:
            cost = m.cost(budget, steps)
        except ValueError as e:  # too small a budget: a clear error naming it
            assert "nfe_budget" in str(e)
            continue
        assert budget - steps < cost <= budget  # every whole trajectory's worth is spent


def test_particles_nfe_previews_are_free(pixel_pipe, brightness):
    m = ParticleSearch(n_particles=6, resample_every=1, adaptive=False)
    out = run(pixel_pipe, brightness, m)
    assert out.stats.nfe == 6 * STEPS == m.cost(None, STEPS)
    previews = [h for h in out.history if h.get("preview")]
    assert [h["step"] for h in previews] == list(range(STEPS))
    assert all(h["resampled"] and len(h["ancestors"]) == 6 for h in previews)
    assert out.stats.reward_calls == out.stats.decode_calls == 6 * (STEPS + 1)
    # every particle continued from each resampling with a fresh seed: a keep event per step
    assert [(e.kind, e.step) for e in out.best.lineage.events] == [("init", 0)] + [("keep", i) for i in range(STEPS)]
    final = out.history[-1]
    assert math.isclose(sum(final["weights"]), 1.0) and 1.0 <= final["ess"] <= 6.0
    # from the budget
    out = run(pixel_pipe, brightness, ParticleSearch(), budget=5 * STEPS + 3)
    assert out.stats.nfe == 5 * STEPS


def test_particles_ess_trace_and_adaptive_resampling(pixel_pipe, brightness):
    m = ParticleSearch(n_particles=8, lambda_=50.0, resample_every=2, ess_threshold=0.5)
    out = run(pixel_pipe, brightness, m, steps=6)
    previews = [h for h in out.history if h.get("preview")]
    assert [h["step"] for h in previews] == [0, 2, 4]
    for h in previews:
        assert 1.0 <= h["ess"] <= 8.0 + 1e-9
        assert h["resampled"] == (h["ess"] < 4.0)
    assert "ess" in out.history[-1] and len(out.history[-1]["weights"]) == 8


def test_without_steering_particles_and_paths_are_best_of_n(pixel_pipe, brightness):
    """lambda = 0 never resamples and no search steps never re-noise: both are then best-of-n with
    the same seeds, which checks that predict + advance is exactly the Stepper's step."""
    ref = run(pixel_pipe, brightness, BestOfN(n=5))
    p = run(pixel_pipe, brightness, ParticleSearch(n_particles=5, lambda_=0.0, resample_every=1))
    q = run(pixel_pipe, brightness, PathSearch(n_keep=1, n_start=5, search_steps=[]))
    assert p.stats.nfe == q.stats.nfe == ref.stats.nfe
    assert p.rewards == ref.rewards == q.rewards
    assert torch.equal(p.images, ref.images) and torch.equal(q.images, ref.images)


# -- replay, determinism, micro-batches --------------------------------------------------------
METHOD_CASES = {
    "zero-order": lambda: ZeroOrderSearch(n_neighbors=3, iterations=3, restart="stay"),
    "zero-order-restart": lambda: ZeroOrderSearch(n_neighbors=2, iterations=4, lambda_=0.5),
    "paths": lambda: PathSearch(n_keep=2, width=2, n_start=4, search_steps=[1, 2, 3], renoise_steps=1),
    "paths-deep": lambda: PathSearch(n_keep=1, width=3, search_steps=[2, 3], renoise_steps=2),
    "particles": lambda: ParticleSearch(n_particles=6, resample_every=1, adaptive=False, resampling="systematic"),
    "particles-max": lambda: ParticleSearch(n_particles=6, potential="add", resample_every=2, adaptive=False,
                                            resampling="stratified"),
}


@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_replay_regenerates_the_winner(pixel_pipe, brightness, case):
    s = search(pixel_pipe, brightness, METHOD_CASES[case](), max_batch_size=3)
    out = s("", seed=5, num_inference_steps=STEPS, output_type="pt", progress=False)
    assert out.complete and out.stats.nfe == s.method.cost(None, STEPS)
    img = s.replay(out.best.lineage, output_type="pt")
    assert (img - out.best.image).abs().max() <= 1 / 255 + 1e-6
    assert float(brightness(img[None])) == pytest.approx(out.best.reward, abs=1e-5)
    img2 = s.replay(out.to_record()["lineage"], output_type="pt")
    assert torch.equal(img, img2)


@pytest.mark.parametrize("case", ["zero-order", "paths", "particles"])
def test_seed_determinism_and_seed_matters(pixel_pipe, brightness, case):
    a, b, c = (run(pixel_pipe, brightness, METHOD_CASES[case](), seed=sd) for sd in (1, 1, 2))
    assert a.rewards == b.rewards and torch.equal(a.images, b.images)
    assert a.best.lineage == b.best.lineage and a.history[-1]["rewards"] == b.history[-1]["rewards"]
    assert a.rewards != c.rewards


def test_particles_micro_batch_invariance(pixel_pipe, brightness):
    outs = [run(pixel_pipe, brightness, METHOD_CASES["particles"](), max_batch_size=mb) for mb in (1, 4, 16)]
    for o in outs[1:]:
        np.testing.assert_allclose(o.rewards, outs[0].rewards, atol=1e-5)
        assert o.best.lineage == outs[0].best.lineage


# -- interrupts ----------------------------------------------------------------------------
def _stop_after(n):
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > n

    return stop


def test_zero_order_interrupt_returns_best_so_far(pixel_pipe, brightness):
    m = ZeroOrderSearch(n_neighbors=2, iterations=3)
    out = run(pixel_pipe, brightness, m, stop=_stop_after(2 * STEPS + 1))  # inside the second iteration
    assert not out.complete and out.stats.nfe < m.cost(None, STEPS)
    assert out.best is not None and out.best.reward == max(max(h["rewards"]) for h in out.history)
    assert len(out.history) == 2


@pytest.mark.parametrize("case", ["paths", "particles"])
def test_interrupt_before_the_end_is_marked_incomplete(pixel_pipe, brightness, case):
    m = METHOD_CASES[case]()
    out = run(pixel_pipe, brightness, m, stop=_stop_after(2))
    assert not out.complete and out.stats.nfe < m.cost(None, STEPS)
    assert out.best is None and out.images == []  # previews are never samples


# -- clear errors --------------------------------------------------------------------------
@pytest.mark.parametrize("cls,kwargs,param", [
    (ZeroOrderSearch, dict(n_neighbors=0), "n_neighbors"),
    (ZeroOrderSearch, dict(lambda_=1.0), "lambda_"),
    (ZeroOrderSearch, dict(lambda_=-0.1), "lambda_"),
    (ZeroOrderSearch, dict(iterations=0), "iterations"),
    (ZeroOrderSearch, dict(restart="jump"), "restart.*resample, stay"),
    (PathSearch, dict(n_keep=0), "n_keep"),
    (PathSearch, dict(width=0), "width"),
    (PathSearch, dict(n_keep=3, n_start=2), "n_start"),
    (PathSearch, dict(search_steps=[2, 2]), "search_steps"),
    (PathSearch, dict(search_steps=[0, 2]), "search_steps"),
    (PathSearch, dict(search_steps=[2, 3], renoise_steps=3), "renoise_steps"),
    (PathSearch, dict(renoise_steps=0), "renoise_steps"),
    (ParticleSearch, dict(n_particles=0), "n_particles"),
    (ParticleSearch, dict(potential="exp"), "potential.*diff, max, rt, add"),
    (ParticleSearch, dict(lambda_=-1.0), "lambda_"),
    (ParticleSearch, dict(lambda_=float("inf")), "lambda_"),
    (ParticleSearch, dict(resampling="residual"), "resampling.*multinomial, systematic, stratified"),
    (ParticleSearch, dict(ess_threshold=0.0), "ess_threshold"),
    (ParticleSearch, dict(resample_every=0), "resample_every"),
    (ParticleSearch, dict(resample_start=-1), "resample_start"),
    (ParticleSearch, dict(resample_start=3, resample_end=2), "resample_end"),
])
def test_bad_hyperparameters_are_named(cls, kwargs, param):
    with pytest.raises(ValueError, match=param):
        cls(**kwargs)


def test_errors_at_call_time(pixel_pipe, brightness):
    with pytest.raises(ValueError, match="eta.*stochastic"):
        search(pixel_pipe, brightness, ParticleSearch(n_particles=2), eta=0.0)("", num_inference_steps=STEPS,
                                                                              progress=False)
    with pytest.raises(ValueError, match="search_steps.*num_inference_steps"):
        run(pixel_pipe, brightness, PathSearch(width=2, search_steps=[1, STEPS]))
    with pytest.raises(ValueError, match="resample_start"):
        run(pixel_pipe, brightness, ParticleSearch(n_particles=2, resample_start=STEPS))
    for m in (ZeroOrderSearch(), PathSearch(), ParticleSearch()):
        with pytest.raises(ValueError, match="nfe_budget"):
            run(pixel_pipe, brightness, m)  # nothing to size from
        with pytest.raises(ValueError, match="nfe_budget"):
            run(pixel_pipe, brightness, m, budget=STEPS - 1)
    with pytest.raises(ValueError, match="nfe_budget"):
        run(pixel_pipe, brightness, ZeroOrderSearch(n_neighbors=4, iterations=2), budget=8 * STEPS)


def test_paths_work_with_a_deterministic_sampler(pixel_pipe, brightness):
    s = search(pixel_pipe, brightness, METHOD_CASES["paths"](), eta=0.0)
    out = s("", seed=0, num_inference_steps=STEPS, output_type="pt", progress=False)
    assert out.complete and (s.replay(out.best.lineage, output_type="pt") - out.best.image).abs().max() <= 1 / 255


def test_registry_names_and_population():
    from evosearch.registry import POPULATION_PARAMETER, build_method

    for name, cls in (("zero-order", ZeroOrderSearch), ("paths", PathSearch), ("particles", ParticleSearch)):
        assert METHODS[name] is cls
        assert isinstance(build_method(name), cls) and isinstance(build_method(name, 4), cls)
        assert getattr(build_method(name, 4), POPULATION_PARAMETER[name]) == 4  # one meaning everywhere
        assert build_method(name).config()["method"] == name
    with pytest.raises(ValueError, match="population"):
        build_method("evosearch", 4)
    with pytest.raises(ValueError, match="bogus: not an option of best-of-n"):
        build_method("best-of-n", bogus=1)
    with pytest.raises(ValueError, match="method: must be one of"):
        build_method("nope")


# -- the shared maths ------------------------------------------------------------------------
def test_sphere_neighbor_keeps_norm_at_the_cosine():
    g = torch.Generator().manual_seed(0)
    x, u = torch.randn(5, 3, 8, 8, generator=g), torch.randn(5, 3, 8, 8, generator=g)
    for lam in (0.0, 0.5, 0.95):
        y = sphere_neighbor(x, u, lam)
        xf, yf = x.flatten(1), y.flatten(1)
        torch.testing.assert_close(yf.norm(dim=1), xf.norm(dim=1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.nn.functional.cosine_similarity(xf, yf), torch.full((5,), lam), atol=1e-5,
                                   rtol=0)
    with pytest.raises(ValueError, match="lambda_"):
        sphere_neighbor(x, u, 1.0)


def test_forward_renoise_has_the_marginal_of_the_noisier_level():
    g = torch.Generator().manual_seed(0)
    a_j, s_j, a_k, s_k = 0.9, math.sqrt(1 - 0.81), 0.6, 0.8
    x0 = torch.full((200_000,), 0.5)
    xj = a_j * x0 + s_j * torch.randn(200_000, generator=g)
    sched = NoiseSchedule(a=torch.tensor([a_k, a_j], dtype=torch.float64),
                          s=torch.tensor([s_k, s_j], dtype=torch.float64), timesteps=torch.tensor([0]), eta=1.0)
    xk = sched.renoise(xj, 1, 0, torch.randn(200_000, generator=g))
    assert float(xk.mean()) == pytest.approx(a_k * 0.5, abs=5e-3)
    assert float(xk.std()) == pytest.approx(s_k, abs=5e-3)
    # no time travel: back to the same level is the identity, towards cleaner is an error
    torch.testing.assert_close(sched.renoise(xj, 1, 1, torch.randn(200_000, generator=g)), xj)
    with pytest.raises(ValueError, match="noisier"):
        sched.renoise(xj, 0, 1, xj)


def test_ess_formula():
    assert ess(np.ones(8)) == pytest.approx(8.0)
    assert ess(np.array([0, 0, 3.0, 0])) == pytest.approx(1.0)
    assert ess(np.array([1.0, 1.0, 0.0, 0.0])) == pytest.approx(2.0)
    w = np.array([0.5, 0.25, 0.25])
    assert ess(w) == pytest.approx(1 / (0.25 + 0.0625 + 0.0625))
    assert ess_from_log(np.log(w) + 1000.0) == pytest.approx(ess(w))  # stable, shift-invariant
    np.testing.assert_allclose(normalize_log_weights([0.0, -np.inf, 0.0]), [0.5, 0.0, 0.5])
    with pytest.raises(ValueError, match="log_weights"):
        normalize_log_weights([-np.inf, -np.inf])
    with pytest.raises(ValueError, match="weights"):
        ess(np.array([1.0, -1.0]))


WEIGHTS = np.array([0.05, 0.3, 0.0, 0.4, 0.15, 0.1])


@pytest.mark.parametrize("scheme", ["multinomial", "systematic", "stratified"])
def test_resampling_is_unbiased(scheme):
    rng = np.random.default_rng(0)
    n, draws = len(WEIGHTS), 4000
    counts = np.stack([np.bincount(resample(WEIGHTS, scheme, rng), minlength=n) for _ in range(draws)])
    assert counts.sum(axis=1).tolist() == [n] * draws
    np.testing.assert_allclose(counts.mean(axis=0), n * WEIGHTS, atol=0.06)
    assert counts[:, 2].max() == 0  # a zero weight is never drawn
    idx = resample(WEIGHTS, scheme, rng, n=10)
    assert len(idx) == 10 and np.all(np.diff(idx) >= 0)


def test_systematic_and_stratified_have_low_variance():
    rng = np.random.default_rng(1)
    n = len(WEIGHTS)
    var = {}
    for fn in (multinomial, systematic, stratified):
        counts = np.stack([np.bincount(fn(WEIGHTS, rng), minlength=n) for _ in range(3000)])
        var[fn.__name__] = counts.var(axis=0).sum()
        if fn is systematic:  # floor(N w) or ceil(N w) copies of each particle
            assert np.all(counts >= np.floor(n * WEIGHTS)) and np.all(counts <= np.ceil(n * WEIGHTS))
    assert var["systematic"] < var["multinomial"] and var["stratified"] < var["multinomial"]
    # each scheme is driven only by the generator it is given
    assert np.array_equal(systematic(WEIGHTS, np.random.default_rng(7)), systematic(WEIGHTS, np.random.default_rng(7)))


TRACE = np.array([[0.2, 0.5], [0.4, 0.1], [0.3, 0.6]])  # preview rewards: 3 potential steps x 2 particles
FINAL = np.array([0.7, 0.2])


@pytest.mark.parametrize("kind,expected", [
    ("diff", [[0.2, 0.5], [0.2, -0.4], [-0.1, 0.5]]),
    ("max", [[0.2, 0.5], [0.4, 0.5], [0.4, 0.6]]),
    ("rt", [[0.2, 0.5], [0.4, 0.1], [0.3, 0.6]]),
    ("add", [[0.2, 0.5], [0.6, 0.6], [0.9, 1.2]]),
])
def test_potentials_on_a_reward_trace(kind, expected):
    lam = 10.0
    pot = Potentials(kind, lam, 2)
    logs = [pot.step(r) for r in TRACE]
    np.testing.assert_allclose(logs, lam * np.array(expected), atol=1e-12)
    last = pot.final(FINAL)
    np.testing.assert_allclose(last, lam * FINAL - lam * np.sum(expected, axis=0), atol=1e-12)
    # the potentials of a path multiply to exp(lambda r(x0)): the target is p(x0) exp(lambda r(x0))
    np.testing.assert_allclose(np.sum(logs, axis=0) + last, lam * FINAL, atol=1e-12)
    if kind == "diff":  # telescoping: the final potential is the last difference
        np.testing.assert_allclose(last, lam * (FINAL - TRACE[-1]), atol=1e-12)


def test_potentials_follow_the_ancestry_after_resampling():
    pot = Potentials("max", 1.0, 3)
    pot.step([0.9, 0.1, 0.5])
    pot.select([0, 0, 2])  # particle 1 now descends from particle 0
    np.testing.assert_allclose(pot.step([0.2, 0.3, 0.4]), [0.9, 0.9, 0.5])
    np.testing.assert_allclose(pot.final([1.0, 2.0, 3.0]), [1.0 - 1.8, 2.0 - 1.8, 3.0 - 1.0])


# -- lineage -------------------------------------------------------------------------------
def test_lineage_events_are_backward_compatible():
    old = {"request": {}, "events": [{"kind": "init", "step": 0, "seed": 1}, {"kind": "vp", "step": 0, "seed": 2,
                                                                              "rate": 0.2}]}
    lin = Lineage.from_dict(old)
    assert lin.events[1] == Event("vp", 0, 2, 0.2) and lin.to_dict() == old
    lin = Lineage.init(1, {}).then("keep", 2, 3).then("renoise", 1, 4, from_step=3)
    assert lin.to_dict()["events"][-1] == {"kind": "renoise", "step": 1, "seed": 4, "from_step": 3}
    assert Lineage.from_dict(lin.to_dict()) == lin
    with pytest.raises(ValueError, match="step"):
        lin.then("renoise", 0, 5, from_step=0)  # cut (from_step) before the last event (step 1)
    with pytest.raises(ValueError, match="step"):
        Lineage.init(1, {}).then("renoise", 3, 5, from_step=2)  # must go back


def test_particles_default_is_scale_free(pixel_pipe, brightness):
    """With standardized potentials a reward and 100 x the reward + 5 steer the particles alike:
    the same resampling decisions and the same winner."""
    from evosearch.rewards.base import as_reward

    scaled = as_reward(lambda images, prompts: [100 * r + 5 for r in brightness(images, prompts)])
    m = ParticleSearch(n_particles=6, resample_every=1, adaptive=False)
    a = run(pixel_pipe, brightness, m)
    b = run(pixel_pipe, scaled, m)
    assert [h.get("ancestors") for h in a.history] == [h.get("ancestors") for h in b.history]
    assert a.best.lineage.to_dict() == b.best.lineage.to_dict()
    raw = run(pixel_pipe, scaled, ParticleSearch(n_particles=6, resample_every=1, adaptive=False, standardize=False))
    assert [h.get("ancestors") for h in raw.history] != [h.get("ancestors") for h in a.history]
