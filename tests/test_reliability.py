"""Every unclear error and lenient input found by adversarial testing of the public API (issue 12):
each is now a ValueError/TypeError naming the parameter, raised before any compute, and a failing
reward or callback keeps the best so far on the exception (``.partial``)."""

import pytest
import torch

from evosearch import BestOfN, EvoSearch, FunctionReward, SearchPipeline, testing

STEPS = 4


@pytest.fixture(scope="module")
def sd():
    return testing.tiny_sd(seed=0)


@pytest.fixture(scope="module")
def sd_search(sd, brightness):
    return SearchPipeline.from_pipe(sd, reward=brightness, method=BestOfN(n=2), max_batch_size=2)


def _no_compute(search):
    return search.stepper.nfe


@pytest.mark.parametrize("prompt", [None, 3, b"a cat"])
def test_prompt_must_be_a_string(sd_search, prompt):
    nfe = _no_compute(sd_search)
    with pytest.raises(ValueError, match="prompt: must be a string"):
        sd_search(prompt, num_inference_steps=STEPS, progress=False)
    assert sd_search.stepper.nfe == nfe


@pytest.mark.parametrize("kwargs, name", [({"width": -8}, "width"), ({"height": 32.0}, "height"),
                                          ({"height": 0}, "height"), ({"nfe_budget": True}, "nfe_budget"),
                                          ({"seed": -1}, "seed"), ({"output_type": "jpg"}, "output_type"),
                                          ({"callback": 3}, "callback"), ({"method": 42}, "method"),
                                          ({"method": EvoSearch}, "method"), ({"num_inference_steps": 0},
                                                                            "num_inference_steps")])
def test_bad_arguments_name_the_parameter(sd_search, kwargs, name):
    nfe = _no_compute(sd_search)
    args = {"num_inference_steps": STEPS, "progress": False, **kwargs}
    with pytest.raises((ValueError, TypeError), match=rf"^{name}: "):
        sd_search("a cat", **args)
    assert sd_search.stepper.nfe == nfe


def test_constructor_arguments(sd, brightness):
    with pytest.raises(ValueError, match="^max_batch_size: "):
        SearchPipeline.from_pipe(sd, reward=brightness, max_batch_size=True)
    with pytest.raises(TypeError, match="^method: pass an instance such as EvoSearch()"):
        SearchPipeline.from_pipe(sd, reward=brightness, method=EvoSearch)
    with pytest.raises(TypeError, match="^reward: "):
        SearchPipeline.from_pipe(sd, reward=42)
    with pytest.raises(ValueError, match="^judge: "):
        SearchPipeline.from_pipe(sd, reward=brightness, judge=42)


@pytest.mark.parametrize("returned", [None, "high", ["a", "b"], [1.0]])
def test_a_reward_returning_garbage_is_named(sd, returned):
    bad = FunctionReward(lambda images, prompts: returned, name="my_reward")
    search = SearchPipeline.from_pipe(sd, reward=bad, method=BestOfN(n=2), max_batch_size=2)
    with pytest.raises(ValueError, match="^reward: my_reward returned"):
        search("a cat", num_inference_steps=STEPS, progress=False)


def test_a_failing_reward_keeps_the_best_so_far(pixel_pipe):
    calls = []

    def flaky(images, prompts):
        calls.append(len(images))
        if len(calls) == 2:
            raise RuntimeError("the scoring server went away")
        return images.mean(dim=(1, 2, 3))

    search = SearchPipeline.from_pipe(pixel_pipe, reward=FunctionReward(flaky, name="flaky"), method=BestOfN(n=4),
                                      max_batch_size=2)
    with pytest.raises(ValueError, match="reward: flaky raised RuntimeError: the scoring server went away") as err:
        search("", num_inference_steps=STEPS, progress=False, output_type="pt")
    partial = err.value.partial
    assert not partial.complete and partial.best is not None and len(partial.rewards) == 2
    assert partial.stats.stopped.startswith("error")


def test_a_stop_requested_while_scoring_ends_the_search_before_more_denoising(pixel_pipe):
    """Cancel pressed while a wave is decoded and scored: that wave's candidates are kept and no
    further micro-batch is denoised (the stop is checked right after scoring, not only after the
    next denoising micro-batch)."""
    pressed = []

    def reward(images, prompts):
        pressed.append(True)  # the user presses Cancel while the first wave is being scored
        return images.flatten(1).mean(1)

    search = SearchPipeline.from_pipe(pixel_pipe, reward=FunctionReward(reward, name="slow"), method=BestOfN(n=8),
                                      max_batch_size=2)
    out = search("", num_inference_steps=STEPS, progress=False, stop=lambda: bool(pressed))
    assert not out.complete and out.best is not None
    assert out.stats.nfe == 2 * STEPS and out.stats.reward_calls == 2


def test_a_failing_callback_keeps_the_best_so_far(pixel_pipe, brightness):
    def callback(event):
        if event.type == "generation":
            raise KeyError("ui gone")

    search = SearchPipeline.from_pipe(pixel_pipe, reward=brightness, method=BestOfN(n=4), max_batch_size=2)
    with pytest.raises(RuntimeError, match="callback: raised KeyError") as err:
        search("", num_inference_steps=STEPS, progress=False, callback=callback)
    assert err.value.partial.best is not None


def test_replay_refuses_another_model_and_broken_lineages(pixel_pipe, brightness):
    from diffusers import DDPMPipeline

    search = SearchPipeline.from_pipe(pixel_pipe, reward=brightness, method=EvoSearch(
        evolution_schedule=[0, 2], population_schedule=[4, 3, 3], elite_size=1), max_batch_size=4)
    out = search("", seed=1, num_inference_steps=STEPS, progress=False, output_type="pt")
    lineage = out.best.lineage.to_dict()
    assert lineage["model"]["pipeline"] == "DDPMPipeline" and "weights" in lineage["model"]
    other_unet = type(pixel_pipe.unet).from_config(pixel_pipe.unet.config).eval()  # same config, other weights
    other = SearchPipeline.from_pipe(DDPMPipeline(unet=other_unet, scheduler=pixel_pipe.scheduler),
                                     reward=brightness)
    with pytest.raises(ValueError, match="^lineage: was made by another model"):
        other.replay(lineage)
    for broken, why in ((None, "expected a Lineage"), ({}, "expected a Lineage"), ({"events": []}, "expected"),
                        ({"request": lineage["request"], "events": [{"kind": "init"}]}, "event 0"),
                        ({**lineage, "events": lineage["events"][::-1]}, "lineage: "),
                        ({**lineage, "events": lineage["events"] + [{"kind": "keep", "step": 99, "seed": 1}]},
                         "outside"),
                        ({**lineage, "events": lineage["events"] + [{"kind": "warp", "step": 3, "seed": 1}]},
                         "kind 'warp'")):
        with pytest.raises(ValueError, match=why):
            search.replay(broken)
    torch.testing.assert_close(search.replay(lineage, output_type="pt"), out.best.image, atol=1 / 255, rtol=0)


def test_bad_method_hyperparameters_name_the_parameter():
    from evosearch import ParticleSearch, PathSearch, ZeroOrderSearch

    for make, name in ((lambda: BestOfN(n=True), "n"), (lambda: BestOfN(n=2.0), "n"),
                       (lambda: EvoSearch(mutation_rate=0), "mutation_rate"),
                       (lambda: EvoSearch(intermediate_mutation="gauss"), "intermediate_mutation"),
                       (lambda: ZeroOrderSearch(lambda_=1.0), "lambda_"),
                       (lambda: PathSearch(search_steps=[3, 2]), "search_steps"),
                       (lambda: ParticleSearch(potential="sum"), "potential"),
                       (lambda: ParticleSearch(tempering="yes"), "tempering")):
        with pytest.raises((ValueError, TypeError), match=rf"^{name}: "):
            make()


def test_records_never_hold_absolute_paths(tmp_path):
    """Every JSON record is written through io.atomic_write_json, which names bundled assets by name and
    other files relative to the record's folder (nested in reprs too); prompts stay as typed."""
    import json

    from evosearch.bundled.paths import asset_path
    from evosearch.io import atomic_write_json

    classifier = asset_path("digits", "classifier")
    record = {"reward": f"DigitClassifierReward(path=PosixPath('{classifier}'))",
              "files": [str(tmp_path / "run" / "best.png")], "prompt": "/home/me is a prompt"}
    written = json.loads(atomic_write_json(tmp_path / "run" / "record.json", record).read_text())
    assert written["reward"] == "DigitClassifierReward(path=PosixPath('bundled:digits/classifier'))"
    assert written["files"] == ["best.png"] and written["prompt"] == "/home/me is a prompt"
    assert str(tmp_path) not in json.dumps(written)


def test_a_judge_that_raises_during_early_stop_is_named_and_keeps_the_best(sd, brightness):
    """Issue 18: a judge raising inside the target_judge check escaped as a raw RuntimeError."""
    from evosearch.search.context import EarlyStop, JudgeError

    def broken_judge(images, prompts):
        raise RuntimeError("judge exploded")

    search = SearchPipeline.from_pipe(sd, reward=brightness, method=BestOfN(n=2), max_batch_size=2,
                                      judge=broken_judge, early_stop=EarlyStop(target_judge=True))
    with pytest.raises(JudgeError, match=r"^early_stop: target_judge: the judge \S+ raised RuntimeError: judge "
                                         r"exploded") as info:
        search("a cat", num_inference_steps=STEPS, progress=False)
    partial = info.value.partial
    assert partial.best is not None and not partial.complete and partial.stats.nfe == 2 * STEPS


def test_replay_refuses_edited_lineages(pixel_pipe, brightness):
    """Issue 18: replay accepted lineages with no model fingerprint, a change of state at the last step,
    seeds -1 / 1.5 / 2**80 / strings, and an edited step count."""
    search = SearchPipeline.from_pipe(pixel_pipe, reward=brightness, method=EvoSearch(
        evolution_schedule=[0, 2], population_schedule=[4, 3, 3], elite_size=1), max_batch_size=4)
    out = search("", seed=1, num_inference_steps=STEPS, progress=False, output_type="pt")
    lineage = out.best.lineage.to_dict()
    torch.testing.assert_close(search.replay(lineage, output_type="pt"), out.best.image, atol=1 / 255, rtol=0)
    unchecked = {k: v for k, v in lineage.items() if k != "check"}
    init = lineage["events"][0]
    cases = [
        ({k: v for k, v in lineage.items() if k != "model"}, "lineage: has no 'model' fingerprint"),
        ({**unchecked, "events": [init, {"kind": "sigma", "step": STEPS, "seed": 3}]},
         rf"event 1 \(sigma\) is at step {STEPS}; a change of the state needs a step after it"),
        ({**lineage, "request": {**lineage["request"], "num_inference_steps": STEPS + 2}},
         "were changed after the search"),
        ({**lineage, "events": [{**init, "seed": init["seed"] + 1}, *lineage["events"][1:]]},
         "were changed after the search"),
    ]
    for seed in (-1, 1.5, 2 ** 80, "7", True):
        cases.append(({**unchecked, "events": [{**init, "seed": seed}]}, r"event 0 \(init\) has seed .*integers in "
                                                                            r"\[0, 2\*\*64\)"))
    cases.append(({**unchecked, "events": [{**init, "step": "0"}]}, r"event 0 \(init\) has step '0'"))
    for broken, why in cases:
        with pytest.raises(ValueError, match=why):
            search.replay(broken)
    with pytest.raises(ValueError, match=r"^seed: must be an integer in \[0, 18446744073709551615\]"):
        search("", seed=2 ** 80, num_inference_steps=STEPS, progress=False)


def test_a_plan_that_leaves_budget_unspent_says_so(sd_search):
    """Issue 18: ParticleSearch(n_particles=8) planned 160 NFE of a 320 budget without a word. Any plan
    leaving more than one trajectory of the budget unspent says so (plan and output warnings)."""
    from evosearch import ParticleSearch

    plan = sd_search.plan("a cat", nfe_budget=8 * STEPS, method=ParticleSearch(n_particles=2),
                          num_inference_steps=STEPS)
    assert plan.nfe == 2 * STEPS and plan["unspent"] == 6 * STEPS
    assert f"plans {2 * STEPS} of the {8 * STEPS} NFE budget: {6 * STEPS} NFE (6 trajectories) stay unspent" \
           in plan["note"]
    out = sd_search("a cat", nfe_budget=8 * STEPS, num_inference_steps=STEPS, progress=False)  # BestOfN(n=2)
    assert out.stats.nfe == 2 * STEPS and out.warnings[0].startswith(f"best-of-n plans {2 * STEPS} of the")
    # a budget the method sizes itself from, or less than a trajectory left: no note
    assert "note" not in sd_search.plan("a cat", nfe_budget=8 * STEPS + 3, method=ParticleSearch(),
                                        num_inference_steps=STEPS).details
