"""Search methods on a tiny pixel UNet: NFE accounting, budgets, determinism, replay,
micro-batch invariance, interrupts and clear errors."""

import itertools

import numpy as np
import pytest
import torch

from evosearch import BestOfN, EvoSearch, SearchPipeline
from evosearch.core.validation import ParameterError
from evosearch.search import auto_schedule, schedule_cost
from evosearch.search.ops.schedules import screening_cost, screening_schedule, staged_screening_cost

STEPS = 6


def search(pipe, reward, method, max_batch_size=4, **kw):
    return SearchPipeline.from_pipe(pipe, reward=reward, method=method, max_batch_size=max_batch_size, **kw)


def test_best_of_n_nfe_and_ordering(pixel_pipe, brightness):
    out = search(pixel_pipe, brightness, BestOfN(n=6))("", seed=0, num_inference_steps=STEPS, progress=False)
    assert out.stats.nfe == 6 * STEPS
    assert out.stats.reward_calls == 6 and out.stats.decode_calls == 6
    assert len(out.images) == 6 and out.rewards == sorted(out.rewards, reverse=True)
    assert out.best.reward == out.rewards[0] == max(out.history[-1]["rewards"] + out.history[0]["rewards"])
    assert out.history[-1]["nfe"] == 6 * STEPS


def test_best_of_n_sizes_itself_from_budget(pixel_pipe, brightness):
    out = search(pixel_pipe, brightness, BestOfN())("", seed=0, num_inference_steps=STEPS, nfe_budget=4 * STEPS + 5,
                                                     progress=False)
    assert out.stats.nfe == 4 * STEPS and len(out.images) == 4


def test_evosearch_nfe_equals_schedule_cost(pixel_pipe, brightness):
    method = EvoSearch(evolution_schedule=[0, 2, 4], population_schedule=[5, 4, 3, 3], elite_size=1)
    out = search(pixel_pipe, brightness, method, max_batch_size=3)("", seed=0, num_inference_steps=STEPS,
                                                                  progress=False)
    expected = 5 * STEPS + 4 * STEPS + 3 * (STEPS - 2) + 3 * (STEPS - 4)
    assert out.stats.nfe == expected == schedule_cost([0, 2, 4], [5, 4, 3, 3], STEPS)
    per_generation = {}
    for h in out.history:  # one entry per scored wave (max_batch_size rows)
        per_generation[h["generation"]] = per_generation.get(h["generation"], 0) + h["population"]
    assert list(per_generation.values()) == [5, 4, 3, 3]
    assert list({h["generation"]: h["nfe"] for h in out.history}.values()) == list(itertools.accumulate([5 * 6, 4 * 6, 3 * 4, 3 * 2]))
    # the result is the best ever scored, and every generation's best-so-far is monotone
    assert out.best.reward == max(max(h["rewards"]) for h in out.history)
    best_so_far = [h["best_reward"] for h in out.history]
    assert best_so_far == sorted(best_so_far)


@pytest.mark.parametrize("budget,steps", [(b, s) for s in (1, 2, 5, 10, 50) for b in (s, 3 * s + 1, 16 * s, 64 * s + 7, 5000)
                                          if b >= s])
def test_population_scheduler_never_exceeds_budget(budget, steps):
    evo, pop, elite = auto_schedule(budget, steps)
    cost = schedule_cost(evo, pop, steps)
    assert cost <= budget
    assert cost > budget - steps - sum(steps - e for e in evo)  # no more than about one trajectory per generation left
    assert all(b > a for a, b in zip(evo, evo[1:])) and all(0 <= e < steps for e in evo)
    if evo:
        assert 0 < elite < min(pop)


def test_population_scheduler_matches_authors_shape():
    evo, pop, elite = auto_schedule(5000, 50)
    assert evo == [0, 20, 30, 40]
    assert pop[1:] == [26, 26, 26, 30] and pop[0] == 42 and elite == 5


def test_evosearch_auto_respects_budget(pixel_pipe, brightness):
    out = search(pixel_pipe, brightness, EvoSearch(screen_fraction=None))("", seed=3, num_inference_steps=STEPS,
                                                                           nfe_budget=97, progress=False)
    assert out.stats.nfe <= 97
    assert out.stats.nfe == schedule_cost(out.settings["plan"]["evolution_schedule"],
                                          out.settings["plan"]["population_schedule"], STEPS)


@pytest.mark.parametrize("budget,steps", [(b, s) for s in (3, 6, 25, 50) for b in (s, 4 * s + 3, 16 * s, 64 * s)])
@pytest.mark.parametrize("keep,elite", [(0.25, 1.0), (0.5, 0.5), (1.0, 1.0)])
def test_screening_schedule_never_exceeds_budget(budget, steps, keep, elite):
    s = max(1, min(steps - 2, round(0.3 * steps)))
    screened, finished, n_elite = screening_schedule(budget, steps, s, keep, elite)
    cost = screening_cost(screened, finished, n_elite, s, steps)
    assert cost <= budget and 1 <= n_elite <= finished <= screened
    assert budget - cost < steps + s + 1  # not a whole screened-and-finished row left over
    if budget >= 16 * steps and keep < 1:
        assert screened > budget // steps  # it sees more starts than best-of-N at the same NFE


def test_evosearch_screening_finishes_the_best_previews_as_best_of_n_draws_them(pixel_pipe, brightness):
    """Screening with elites only: the finished samples are exactly best-of-N's candidates (same
    lineages, same noise) of the rows whose x0 preview at the screening step scored best."""
    method = EvoSearch(screen_fraction=0.5, keep_fraction=0.25)
    s = search(pixel_pipe, brightness, method)
    out = s("", seed=4, num_inference_steps=STEPS, nfe_budget=16 * STEPS, output_type="pt", progress=False)
    plan = out.settings["plan"]
    (step,), (screened, finished) = plan["evolution_schedule"], plan["population_schedule"]
    assert step == 3 and screened > 16 and out.stats.nfe == plan["nfe"] <= 16 * STEPS
    previews, final = out.history[0], [h for h in out.history if not h["preview"]]
    assert previews["preview"] and len(previews["rewards"]) == screened
    ref = s("", seed=4, num_inference_steps=STEPS, method=BestOfN(n=screened), output_type="pt", progress=False)
    in_order = [r for h in ref.history for r in h["rewards"]]
    best_previews = np.argsort(-np.asarray(previews["rewards"]), kind="stable")[:finished]
    assert previews["elites"] == [int(k) for k in best_previews]
    assert np.allclose(sorted(r for h in final for r in h["rewards"]), sorted(in_order[k] for k in best_previews),
                       atol=1e-5)
    replayed = s.replay(out.best.lineage, output_type="pt")
    assert torch.allclose(replayed, out.best.image, atol=1 / 255)


def test_staged_screening_finishes_the_best_of_the_best_previews_as_best_of_n_draws_them(pixel_pipe, brightness):
    """Screening at two steps, elites only: the rows kept at the first step go on as they are, and
    the finished samples are exactly best-of-N's candidates whose preview was among the best at the
    first step and, of those, at the second; the NFE is the staged cost."""
    method = EvoSearch(screen_fraction=(0.34, 0.67), keep_fraction=(0.5, 0.5))
    s = search(pixel_pipe, brightness, method)
    out = s("", seed=5, num_inference_steps=STEPS, nfe_budget=12 * STEPS, output_type="pt", progress=False)
    plan = out.settings["plan"]
    steps, sizes = plan["evolution_schedule"], plan["population_schedule"]
    assert steps == [2, 4] and len(sizes) == 3 and sizes[0] > 12
    assert out.stats.nfe == plan["nfe"] == staged_screening_cost(sizes, plan["elite_size"], steps, STEPS) <= 12 * STEPS
    first, second = [h for h in out.history if h["preview"]]
    assert len(first["rewards"]) == sizes[0] and len(second["rewards"]) == sizes[1]
    assert first["elites"] == [int(k) for k in np.argsort(-np.asarray(first["rewards"]), kind="stable")[:sizes[1]]]
    finished_rows = [first["elites"][k] for k in second["elites"]]
    ref = s("", seed=5, num_inference_steps=STEPS, method=BestOfN(n=sizes[0]), output_type="pt", progress=False)
    in_order = [r for h in ref.history for r in h["rewards"]]
    final = [r for h in out.history if not h["preview"] for r in h["rewards"]]
    assert len(final) == sizes[2]
    assert np.allclose(sorted(final), sorted(in_order[k] for k in finished_rows), atol=1e-5)
    replayed = s.replay(out.best.lineage, output_type="pt")
    assert torch.allclose(replayed, out.best.image, atol=1 / 255)


@pytest.mark.parametrize("kwargs,match", [
    (dict(screen_fraction=(0.2, 0.4), keep_fraction=0.25), "screen_fraction, keep_fraction: one share"),
    (dict(screen_fraction=(0.4, 0.2), keep_fraction=(0.5, 0.5)), "screen_fraction: the screening steps must increase"),
    (dict(screen_fraction=(0.2, 1.2), keep_fraction=(0.5, 0.5)), "screen_fraction"),
    (dict(screen_fraction=(0.2, 0.4), keep_fraction=(0.5, 0.0)), "keep_fraction"),
])
def test_staged_screening_refuses_bad_stages_by_name(kwargs, match):
    with pytest.raises(ParameterError, match=match):
        EvoSearch(**kwargs)


def test_staged_screening_merges_stages_that_round_to_one_step():
    steps, keeps = EvoSearch(screen_fraction=(0.3, 0.35), keep_fraction=(0.5, 0.5)).screening_steps(4)
    assert steps == [1] and keeps == [0.25]


def test_evosearch_screening_with_mutated_children(pixel_pipe, brightness):
    method = EvoSearch(screen_fraction=0.5, keep_fraction=0.5, elite_fraction=0.5)
    out = search(pixel_pipe, brightness, method)("", seed=1, num_inference_steps=STEPS, nfe_budget=10 * STEPS,
                                                 output_type="pt", progress=False)
    plan = out.settings["plan"]
    (step,), (screened, finished), elite = plan["evolution_schedule"], plan["population_schedule"], plan["elite_size"]
    assert out.stats.nfe == screening_cost(screened, finished, elite, step, STEPS) <= 10 * STEPS
    assert sum(h["population"] for h in out.history if not h["preview"]) == finished
    kinds = {e["kind"] for e in out.best.lineage.to_dict()["events"]}
    assert kinds <= {"init", "resample"}


def test_seed_determinism_and_seed_matters(pixel_pipe, brightness):
    s = search(pixel_pipe, brightness, EvoSearch())
    a = s("", seed=1, num_inference_steps=STEPS, nfe_budget=60, output_type="pt", progress=False)
    b = s("", seed=1, num_inference_steps=STEPS, nfe_budget=60, output_type="pt", progress=False)
    c = s("", seed=2, num_inference_steps=STEPS, nfe_budget=60, output_type="pt", progress=False)
    assert a.rewards == b.rewards and torch.equal(a.images, b.images)
    assert a.best.lineage == b.best.lineage
    assert a.rewards != c.rewards


def test_micro_batch_invariance(pixel_pipe, brightness):
    method = EvoSearch(evolution_schedule=[0, 3], population_schedule=[7, 5, 5], elite_size=2)
    outs = [search(pixel_pipe, brightness, method, max_batch_size=mb)("", seed=0, num_inference_steps=STEPS,
                                                                        output_type="pt", progress=False)
            for mb in (1, 3, 16)]
    for o in outs[1:]:
        # CPU BLAS picks kernels by batch size, so rows agree to float32 rounding, not bitwise
        np.testing.assert_allclose(o.rewards, outs[0].rewards, atol=1e-5)
        assert (o.images - outs[0].images).abs().max() <= 1 / 255 + 1e-6
        assert o.best.lineage == outs[0].best.lineage


def test_replay_regenerates_the_winner(pixel_pipe, brightness):
    s = search(pixel_pipe, brightness, EvoSearch(evolution_schedule=[0, 2, 4], population_schedule=[6, 4, 4, 4],
                                                 elite_size=1), max_batch_size=3)
    out = s("", seed=5, num_inference_steps=STEPS, output_type="pt", progress=False)
    kinds = [e.kind for e in out.best.lineage.events]
    assert kinds[0] == "init"
    img = s.replay(out.best.lineage, output_type="pt")
    assert (img - out.best.image).abs().max() <= 1 / 255 + 1e-6
    assert float(brightness(img[None])) == pytest.approx(out.best.reward, abs=1e-5)
    # also from the JSON form of the lineage
    img2 = s.replay(out.to_record()["lineage"], output_type="pt")
    assert torch.equal(img, img2)


def test_interrupt_returns_best_so_far(pixel_pipe, brightness):
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > STEPS + 2  # one check per step: stop inside the second generation

    method = EvoSearch(evolution_schedule=[0, 2], population_schedule=[4, 4, 4], elite_size=1)
    out = search(pixel_pipe, brightness, method)("", seed=0, num_inference_steps=STEPS, stop=stop, progress=False)
    assert not out.complete
    assert out.best is not None and out.best.reward == max(out.history[0]["rewards"])
    assert out.stats.nfe < schedule_cost([0, 2], [4, 4, 4], STEPS)


def test_a_stop_before_anything_was_scored_keeps_the_best_x0_preview(pixel_pipe, brightness):
    """Issue 18 (defect 14): a stop in the first wave left nothing; the x0 estimates of the last
    micro-batch are decoded and scored (no extra NFE), the best kept as ``preview``."""
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 3  # a few micro-batches of 4 rows into the first wave

    out = search(pixel_pipe, brightness, BestOfN(n=8))("", seed=0, num_inference_steps=STEPS, stop=stop,
                                                       progress=False, output_type="pt")
    assert not out.complete and out.best is None and out.stats.stopped == "interrupted"
    p = out.preview
    assert 0 < p.step < STEPS - 1 and out.stats.nfe == 4 * (p.step + 1)  # one micro-batch of 4 rows per step
    assert p.rows == 4 and out.stats.reward_calls == out.stats.decode_calls == 4
    assert p.reward == pytest.approx(float(brightness(p.image[None], [""])[0]), abs=2e-3)
    assert out.to_record()["preview"] == {"reward": p.reward, "step": p.step, "rows": 4}
    done = search(pixel_pipe, brightness, BestOfN(n=8))("", seed=0, num_inference_steps=STEPS, progress=False)
    assert done.preview is None and done.to_record()["preview"] is None
    # micro-batches of 16: at most 8 previews are decoded and scored, so that a stop stays quick
    calls["n"] = 0
    wide = search(pixel_pipe, brightness, BestOfN(n=16), max_batch_size=16)("", seed=0, num_inference_steps=STEPS,
                                                                            stop=stop, progress=False)
    assert wide.best is None and wide.preview.rows == wide.stats.reward_calls == wide.stats.decode_calls == 8


def test_keyboard_interrupt_from_reward_keeps_best(pixel_pipe):
    from evosearch import FunctionReward

    seen = {"n": 0}

    def reward(images, prompts):
        seen["n"] += 1
        if seen["n"] == 2:
            raise KeyboardInterrupt
        return images.mean(dim=(1, 2, 3))

    out = search(pixel_pipe, FunctionReward(reward), BestOfN(n=8), max_batch_size=4)("", seed=0,
                                                                                    num_inference_steps=2,
                                                                                    progress=False)
    assert not out.complete and len(out.images) == 4 and out.best is not None


# -- clear errors ------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,param", [
    (dict(evolution_schedule=[0, 2], population_schedule=[4, 3, 3], elite_size=3), "elite_size"),
    (dict(evolution_schedule=[0, 3, 2], population_schedule=[4, 3, 3, 3], elite_size=1), "evolution_schedule"),
    (dict(evolution_schedule=[0, 2, 2], population_schedule=[4, 3, 3, 3], elite_size=1), "evolution_schedule"),
    (dict(evolution_schedule=[-1, 2], population_schedule=[4, 3, 3], elite_size=1), "evolution_schedule"),
    (dict(evolution_schedule=[0, 2], population_schedule=[4, 3], elite_size=1), "population_schedule"),
    (dict(evolution_schedule=[0, 2], population_schedule=None), "population_schedule"),
    (dict(mutation_rate=0.0), "mutation_rate"),
])
def test_evosearch_rejects_bad_hyperparameters(kwargs, param):
    with pytest.raises(ValueError, match=param):
        EvoSearch(**kwargs)


def test_errors_at_call_time(pixel_pipe, brightness):
    s = search(pixel_pipe, brightness, EvoSearch(evolution_schedule=[0, 10], population_schedule=[4, 3, 3],
                                                 elite_size=1))
    with pytest.raises(ValueError, match="evolution_schedule.*num_inference_steps"):
        s("", num_inference_steps=STEPS, progress=False)
    s = search(pixel_pipe, brightness, EvoSearch())
    with pytest.raises(ValueError, match="nfe_budget.*one trajectory"):
        s("", num_inference_steps=STEPS, nfe_budget=STEPS - 1, progress=False)
    with pytest.raises(ValueError, match="nfe_budget"):
        s("", num_inference_steps=STEPS, progress=False)
    with pytest.raises(ValueError, match="nfe_budget"):
        search(pixel_pipe, brightness, BestOfN(n=5))("", num_inference_steps=STEPS, nfe_budget=4 * STEPS,
                                                    progress=False)
    with pytest.raises(ValueError, match="seed"):
        s(["a", "b"], seed=[0], num_inference_steps=STEPS, nfe_budget=60, progress=False)
    with pytest.raises(ValueError, match="seed"):
        s("a", seed=[0, 1], num_inference_steps=STEPS, nfe_budget=60, progress=False)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s("", num_inference_steps=0, nfe_budget=60, progress=False)
    with pytest.raises(ValueError, match="output_type"):
        s("", num_inference_steps=STEPS, nfe_budget=60, output_type="jpeg", progress=False)
    with pytest.raises(ValueError, match="eta"):
        search(pixel_pipe, brightness, EvoSearch(), eta=0.0)("", num_inference_steps=STEPS, nfe_budget=60,
                                                             progress=False)
    with pytest.raises(ValueError, match="max_batch_size"):
        search(pixel_pipe, brightness, BestOfN(2), max_batch_size=0)
    with pytest.raises(ValueError, match="n:"):
        BestOfN(n=0)
    with pytest.raises(ValueError, match="name"):
        EvoSearch.preset("sdxl-turbo")


def test_unsupported_pipeline_is_named():
    class NotAPipeline:
        pass

    with pytest.raises(TypeError, match="pipe: NotAPipeline is not supported.*StableDiffusionPipeline"):
        SearchPipeline.from_pipe(NotAPipeline(), reward=lambda i, p: i.mean((1, 2, 3)))


def test_list_of_prompts_gives_one_output_each(pixel_pipe, brightness):
    outs = search(pixel_pipe, brightness, BestOfN(n=2))(["a", "b"], seed=[0, 1], num_inference_steps=2,
                                                        progress=False)
    assert len(outs) == 2 and outs[0].rewards != outs[1].rewards


def test_presets_are_the_authors():
    p = EvoSearch.preset("sd2.1")
    assert p.evolution_schedule == (0, 20, 30, 40) and p.population_schedule == (42, 26, 26, 26, 30)
    assert p.elite_size == 5 and p.cost(None, 50) == 5000  # the cost of best-of-100
    f = EvoSearch.preset("flux")
    assert (f.evolution_schedule, f.population_schedule, f.elite_size) == ((5, 20, 30, 40), (14, 7, 7, 7, 10), 3)
    w = EvoSearch.preset("wan")
    assert (w.evolution_schedule, w.population_schedule, w.elite_size) == ((5, 20, 30, 45), (10, 5, 5, 5, 5), 2)
