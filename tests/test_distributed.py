"""One search spread over 2 processes (gloo on CPU) gives what one process gives; a stop or a
failing reward on one rank reaches every rank, with no hang.

The 2-process runs are spawned once for the module (loading the models dominates their time);
every scenario runs in that one process group, one after another."""

import json

import numpy as np
import pytest
import torch

from evosearch import SearchPipeline
from evosearch.core.validation import ParameterError
from evosearch.rewards.base import FunctionReward
from evosearch.rewards.device import RewardOnDevice
from evosearch.testing.distributed import bundled_search, bundled_searches, run_processes

SMALL = {"steps": 4, "max_batch_size": 2}
#: every method whose population is a batch of rows, small enough for CI
EQUAL = {
    "evosearch": {"method": "evosearch", "seed": 3, "options": {"evolution_schedule": [0, 2],
                                                               "population_schedule": [6, 5, 5], "elite_size": 1}},
    "evosearch-screening": {"method": "evosearch", "seed": 8, "nfe_budget": 40},  # the default: screens on previews
    "best-of-n": {"method": "best-of-n", "population": 5, "seed": 1},
    "zero-order": {"method": "zero-order", "population": 3, "seed": 2, "options": {"iterations": 2}},
    "paths": {"method": "paths", "population": 2, "seed": 4,
              "options": {"width": 2, "n_start": 3, "search_steps": [2], "renoise_steps": 1}},
    "particles": {"method": "particles", "population": 5, "seed": 5,
                  "options": {"lambda_": 50.0, "adaptive": False, "resample_every": 1}},
}
#: also covered, checked by ``benchmarks/distributed.py --equality`` (another model to load: not in CI)
MORE = {"tree-of-frames": {"model": "moving-digits", "method": "tree-of-frames", "population": 2, "seed": 7,
                           "steps": 3}}
STOP = {"method": "best-of-n", "population": 8, "seed": 9, "stop_rank": 1, "stop_after_nfe": 9}
FAIL = {"method": "evosearch", "seed": 3, "fail_rank": 1,
        "options": {"evolution_schedule": [0, 2], "population_schedule": [4, 4, 4], "elite_size": 1}}
AFTER = {"method": "best-of-n", "population": 3, "seed": 11}  # the group still works after a failure
TIMEOUT = 900  # seconds (generous: a loaded 2-core machine): a hang fails the fixture instead of blocking CI


def spec(d: dict, **kw) -> dict:
    return {**SMALL, **d, **kw}


@pytest.fixture(scope="module")
def two_ranks():
    specs = [spec(d, distributed=True) for d in EQUAL.values()] + [spec(d, distributed=True)
                                                                     for d in (STOP, FAIL, AFTER)]
    ranks = run_processes(bundled_searches, 2, specs, timeout=TIMEOUT)
    n = len(EQUAL)
    return {"equal": [dict(zip(EQUAL, r[:n])) for r in ranks], "stop": [r[n] for r in ranks],
            "fail": [r[n + 1] for r in ranks], "after": [r[n + 2] for r in ranks]}


def assert_same_search(one: dict, other: dict, label: str) -> None:
    """Equal winner lineage, NFE, calls and history; rewards (and ESS/weights) to float rounding."""
    assert "error" not in one and "error" not in other, (label, one.get("message"), other.get("message"))
    for key in ("lineage", "nfe", "reward_calls", "decode_calls", "complete", "stopped"):
        assert one[key] == other[key], (label, key)
    assert one["reward"] == pytest.approx(other["reward"], rel=1e-5), label
    assert np.abs(np.asarray(one["image"], float) - np.asarray(other["image"], float)).max() <= 1, label
    assert len(one["history"]) == len(other["history"]), label
    # floats: rewards of a batch split differently (zero-order's pivot too), ESS/weights (exp(lambda * reward))
    # and standardized preview rewards (particles) grow rounding
    loose = {"rewards", "best_reward", "pivot_reward", "ess", "weights"}
    for a, b in zip(one["history"], other["history"]):
        assert set(a) == set(b), label
        for key in set(a) - loose:
            assert json.dumps(a[key], default=str) == json.dumps(b[key], default=str), (label, key)
        assert (a["best_reward"] is None) == (b["best_reward"] is None), label
        for key in set(a) & loose:
            if a[key] is not None:
                np.testing.assert_allclose(a[key], b[key], rtol=1e-3 if key in ("ess", "weights") else 1e-5,
                                           atol=1e-4, err_msg=f"{label}: {key}")


@pytest.mark.parametrize("name", list(EQUAL))
def test_two_processes_find_what_one_process_finds(two_ranks, name):
    """Same seed and settings: world size 2 gives world size 1's winner lineage, NFE, reward
    calls and history (rewards to float rounding), on both ranks; bytes moved are counted."""
    one = bundled_search(0, 1, spec(EQUAL[name], distributed=False))
    rank0, rank1 = two_ranks["equal"][0][name], two_ranks["equal"][1][name]
    assert_same_search(one, rank0, f"{name}: 1 vs 2 processes")
    assert_same_search(rank0, rank1, f"{name}: rank 0 vs rank 1")
    assert rank0["world_size"] == 2 and one["world_size"] == 1
    assert rank0["comm_bytes"] > 0 and one["comm_bytes"] == 0
    assert rank0["seconds"]["comm"] > 0


def test_a_winner_found_on_two_processes_replays_in_one(two_ranks):
    """The 2-process EvoSearch winner's lineage re-generates the same image in one process."""
    from evosearch.registry import default_reward, load_model, load_reward

    found = two_ranks["equal"][0]["evosearch"]
    search = SearchPipeline.from_pipe(load_model("shapes"), reward=load_reward(default_reward("shapes")),
                                      max_batch_size=2, judge=False)
    image = np.asarray(search.replay(found["lineage"]), dtype=float)
    assert np.abs(image - np.asarray(found["image"], float)).max() <= 1


def test_a_stop_on_one_rank_stops_every_rank_with_the_best_so_far(two_ranks):
    """Rank 1's stop() turns true once 9 NFE are spent (best-of-8 in waves of 2 samples, 4 steps:
    the first wave is scored at 8 NFE): both ranks stop one micro-batch later (NFE 10, as one
    process does), keep the first wave's best and the same history; the output is incomplete."""
    r0, r1 = two_ranks["stop"]
    one = bundled_search(0, 1, spec(STOP, distributed=False, stop_rank=0))
    for r in (r0, r1, one):
        assert "error" not in r, r.get("message")
        assert r["complete"] is False and r["stopped"] == "interrupted"
        assert r["nfe"] == 10 and len(r["history"]) == 1 and r["reward"] is not None
    assert_same_search(one, r0, "stop: 1 vs 2 processes")
    assert r0["lineage"] == r1["lineage"] and r0["history"] == r1["history"]


def test_a_failing_reward_on_one_rank_gives_every_rank_one_clear_error(two_ranks):
    """Rank 1's reward raises: both ranks raise the same RewardError naming the rank and the cause
    (no hang: the fixture has a timeout), and the group runs the next search normally."""
    r0, r1 = two_ranks["fail"]
    assert r0["error"] == r1["error"] == "RewardError"
    assert r0["message"] == r1["message"]
    assert "rank 1 of 2 failed" in r0["message"] and "broken_verifier" in r0["message"]
    assert "the verifier on rank 1 is broken" in r0["message"]
    assert r0["partial"]["complete"] is False and r0["partial"]["stopped"] == "error: RewardError"
    after = two_ranks["after"]
    assert after[0]["complete"] and after[0]["lineage"] == after[1]["lineage"]
    assert after[0]["nfe"] == 3 * SMALL["steps"]


# ------------------------------------------------------------------ in one process: the arguments
def test_distributed_argument_is_checked(pixel_pipe, brightness, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ParameterError, match="distributed: must be True, False or 'auto'"):
        SearchPipeline.from_pipe(pixel_pipe, reward=brightness, distributed="yes")
    with pytest.raises(ParameterError, match="distributed: True needs a process group.*accelerate launch"):
        SearchPipeline.from_pipe(pixel_pipe, reward=brightness, distributed=True)
    assert SearchPipeline.from_pipe(pixel_pipe, reward=brightness, distributed="auto").dist is None


def test_reward_device_is_checked(pixel_pipe, brightness):
    with pytest.raises(ParameterError, match="reward_device: must be one of cpu, cuda, cuda:N, mps"):
        SearchPipeline.from_pipe(pixel_pipe, reward=brightness, reward_device="gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(ParameterError, match="reward_device: cuda:3 asked for, but torch sees no CUDA GPU"):
            SearchPipeline.from_pipe(pixel_pipe, reward=brightness, reward_device="cuda:3")


def test_reward_on_its_device_scores_micro_batches_with_the_same_result(pixel_pipe):
    """reward_device="cpu": the reward sees micro-batches of max_batch_size on that device, and the
    search finds what it finds without reward_device."""
    seen = []

    def mean(images, prompts):
        seen.append((len(images), images.device.type))
        return images.mean(dim=(1, 2, 3))

    kw = dict(max_batch_size=2, judge=False)
    plain = SearchPipeline.from_pipe(pixel_pipe, reward=FunctionReward(mean), **kw)(
        "", seed=0, num_inference_steps=3, nfe_budget=15, progress=False)
    seen.clear()
    search = SearchPipeline.from_pipe(pixel_pipe, reward=FunctionReward(mean), reward_device="cpu", **kw)
    assert isinstance(search.reward, RewardOnDevice)
    out = search("", seed=0, num_inference_steps=3, nfe_budget=15, progress=False)
    assert out.rewards == plain.rewards and out.best.lineage == plain.best.lineage
    assert seen and all(n <= 2 and dev == "cpu" for n, dev in seen)
    assert sum(n for n, _ in seen) == out.stats.reward_calls
    wrapped = RewardOnDevice(FunctionReward(mean), "cpu", batch_size=2)
    seen.clear()
    assert wrapped(torch.rand(5, 3, 4, 4), "x").shape == (5,) and [n for n, _ in seen] == [2, 2, 1]


# ------------------------------------------------------------------ batch and CLI
def mean_brightness(images, prompts):
    """A reward importable as ``--reward test_distributed:mean_brightness``."""
    return images.mean(dim=(1, 2, 3))


def test_batch_population_mode_searches_every_prompt_and_only_the_main_process_writes(pixel_pipe, tmp_path):
    """``distribute="population"``: every process takes part in every prompt (process 1 of 2 writes
    nothing), process 0 writes every line, equal to a one-process run's."""
    from evosearch import BestOfN
    from evosearch.batch import make_items, read_jsonl, run_batch

    search = SearchPipeline.from_pipe(pixel_pipe, reward=mean_brightness, method=BestOfN(n=2), judge=False)
    items = make_items(["a", "b", "c"], base_seed=5)
    kw = dict(num_inference_steps=3, progress=False)
    helper = run_batch(search, items, tmp_path / "pop", process_index=1, num_processes=2, distribute="population",
                       merge=False, **kw)
    assert helper.ran == 3 and not list((tmp_path / "pop").glob("results*.jsonl"))
    assert not list((tmp_path / "pop" / "images").iterdir())
    main = run_batch(search, items, tmp_path / "pop", process_index=0, num_processes=2, distribute="population",
                     **kw)
    run_batch(search, items, tmp_path / "one", **kw)
    drop = lambda r: {k: v for k, v in r.items() if k not in ("stats", "config")}  # noqa: E731 -- timings
    assert main.ran == 3 and [drop(r) for r in read_jsonl(tmp_path / "pop" / "results.jsonl")] == \
        [drop(r) for r in read_jsonl(tmp_path / "one" / "results.jsonl")]
    with pytest.raises(ParameterError, match="distribute: .*prompts.*population"):
        run_batch(search, items, tmp_path / "x", distribute="rows", **kw)


def test_cli_generate_distribute_population_under_torchrun(pixel_pipe, tmp_path):
    """``python -m torch.distributed.run --nproc_per_node 2 -m evosearch.cli generate --distribute
    population``: one search over 2 processes; the main process writes, and the record equals a
    one-process run's (winner lineage, NFE)."""
    import subprocess
    import sys
    from pathlib import Path

    from evosearch.testing.distributed import free_port

    model = tmp_path / "tiny"
    pixel_pipe.save_pretrained(model)
    tests = Path(__file__).resolve().parent
    env = {**__import__("os").environ, "PYTHONPATH": f"{tests.parent}:{tests}", "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "true"}
    args = ["-m", "evosearch.cli", "generate", "--model", str(model), "--reward", "test_distributed:mean_brightness",
            "--method", "evosearch", "--steps", "3", "--nfe-budget", "30", "--max-batch-size", "2", "--seed", "4",
            "--quiet", "--judge", "none"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(free_port()), *args, "--distribute", "population",
                          "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], env=env, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.stdout.count("best reward") == 1  # only the main process prints (and writes)
    rec2 = json.loads((tmp_path / "two" / "record.json").read_text())
    rec1 = json.loads((tmp_path / "one" / "record.json").read_text())
    assert rec2["lineage"] == rec1["lineage"] and rec2["stats"]["nfe"] == rec1["stats"]["nfe"] == 30
    assert rec2["stats"]["world_size"] == 2 and rec2["stats"]["comm_bytes"] > 0


def test_a_method_that_cannot_be_spread_is_refused_by_name(pixel_pipe, brightness):
    from evosearch import TTSVAR

    search = SearchPipeline.from_pipe(pixel_pipe, reward=brightness, judge=False)
    search.dist = object()  # as if built with distributed=True in a process group
    with pytest.raises(ParameterError, match="method: tts-var cannot spread its population over processes"):
        search.plan("", nfe_budget=40, method=TTSVAR(n=1), num_inference_steps=4)
