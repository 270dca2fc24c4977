"""``evosearch batch``: prompt files, results format, crash-safe resume, multi-process runs."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from evosearch import BestOfN, FunctionReward, SearchPipeline
from evosearch.batch import (load_results, make_items, merge_results, prompt_id, read_jsonl, read_prompts,
                             repair_jsonl, run_batch)

torch.set_num_threads(1)

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
PY = sys.executable
STEPS, BUDGET = 4, 16
PROMPTS = [f"square {t}" for t in (0.9, 0.1, 0.5, 0.7, 0.3, 0.6, 0.2, 0.8, 0.4, 0.55)]
TIMING = {"seconds", "peak_memory_bytes"}


# -- rewards importable as ``--reward test_batch:...`` (PYTHONPATH=tests) ------------------
def _target(prompt: str) -> float:
    try:
        return float(prompt.split()[-1])
    except ValueError:
        return 0.5


def target_brightness(images, prompts):
    """Prompt-dependent: how close the mean brightness is to the number ending the prompt."""
    t = torch.tensor([_target(p) for p in prompts])
    return -(images.mean(dim=(1, 2, 3)) - t).abs()


def slow_target_brightness(images, prompts):
    time.sleep(0.15)  # keeps a subprocess busy long enough to be killed mid-batch
    return target_brightness(images, prompts)


def interrupt_at_third(images, prompts):
    """target_brightness, except that a Ctrl-C lands while PROMPTS[2] is scored."""
    if prompts[0] == PROMPTS[2]:
        raise KeyboardInterrupt
    return target_brightness(images, prompts)


def gated_target_brightness(images, prompts):
    """Waits (up to 60 s) for the file named by $EVOSEARCH_TEST_GATE: holds a run mid-batch."""
    gate, deadline = Path(os.environ["EVOSEARCH_TEST_GATE"]), time.monotonic() + 60
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return target_brightness(images, prompts)


# -- fixtures and helpers -----------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, pixel_pipe):
    d = tmp_path_factory.mktemp("tiny-ddpm")
    pixel_pipe.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def search(model_dir):
    from evosearch.registry import load_model

    return SearchPipeline.from_pipe(load_model(str(model_dir), "cpu"), reward=FunctionReward(target_brightness),
                                    method=BestOfN(), max_batch_size=16)


@pytest.fixture(scope="module")
def prompts_txt(tmp_path_factory):
    p = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    p.write_text("# targets for the mean brightness\n" + "\n".join(PROMPTS[:5] + [""] + PROMPTS[5:]) + "\n")
    return p


@pytest.fixture(scope="module")
def reference(search, prompts_txt, tmp_path_factory):
    """An uninterrupted in-process run of the whole batch."""
    out = tmp_path_factory.mktemp("reference")
    s = run_batch(search, read_prompts(prompts_txt), out, nfe_budget=BUDGET, num_inference_steps=STEPS,
                  progress=False)
    assert s.complete and s.ran == len(PROMPTS) and s.results_path == out / "results.jsonl"
    return out


def essentials(out: Path) -> dict:
    """id -> (prompt, seed, best_reward, nfe, complete, image bytes) of every line of results.jsonl."""
    lines = read_jsonl(out / "results.jsonl")
    assert len(lines) == len({r["id"] for r in lines})
    return {r["id"]: (r["prompt"], r["seed"], r["best_reward"], r["stats"]["nfe"], r["complete"],
                      (out / r["image"]).read_bytes()) for r in lines}


def strip_timing(rec):
    if isinstance(rec, dict):
        return {k: strip_timing(v) for k, v in rec.items() if k not in TIMING}
    return rec


def cli_env():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT)]), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU"):
        env.pop(k, None)
    return env


def cli_args(prompts, out, model_dir, reward="test_batch:target_brightness"):
    return ["batch", str(prompts), "--out", str(out), "--model", str(model_dir), "--reward", reward,
            "--method", "best-of-n", "--steps", str(STEPS), "--nfe-budget", str(BUDGET), "--device", "cpu",
            "--quiet"]


# -- prompt files ---------------------------------------------------------------------------
def test_read_prompts_txt_and_jsonl(tmp_path, prompts_txt):
    items = read_prompts(prompts_txt, base_seed=7)
    assert [it.prompt for it in items] == PROMPTS
    assert [it.index for it in items] == list(range(len(PROMPTS)))
    assert [it.seed for it in items] == [7 + i for i in range(len(PROMPTS))]
    assert items[2].id == prompt_id(2, PROMPTS[2]) and items[2].id.startswith("00002-")
    assert read_prompts(prompts_txt, base_seed=7)[3].id == items[3].id  # stable

    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "a 0.2", "seed": 42, "id": "first", "nfe_budget": 8, "meta": {"category": "x"}}\n\n'
                 '# a comment\n{"prompt": "b 0.8", "negative_prompt": "blurry"}\n')
    a, b = read_prompts(p, base_seed=100)
    assert (a.id, a.seed, a.nfe_budget, a.meta) == ("first", 42, 8, {"category": "x"})
    assert (b.id, b.seed, b.negative_prompt, b.index) == (prompt_id(1, "b 0.8"), 101, "blurry", 1)


@pytest.mark.parametrize("text, match", [
    ('{"prompt": "a"}\n{"prompt": "b"\n', "line 2 is not valid JSON"),
    ('{"seed": 1}\n', '"prompt" must be a non-empty string'),
    ('{"prompt": "a", "id": "x"}\n{"prompt": "b", "id": "x"}\n', "repeats the id"),
    ('{"prompt": "a", "id": "../evil"}\n', '"id" must be'),
    ('{"prompt": "a", "seed": -1}\n', r"seed: must be an integer in \[0, "),
    ('{"prompt": "a", "nfe_budget": 0}\n', "nfe_budget: must be an integer >= 1"),
    ('["a"]\n', "expected a JSON object"),
    ('\n# nothing\n', "no prompts found"),
])
def test_read_prompts_errors(tmp_path, text, match):
    p = tmp_path / "bad.jsonl"
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_prompts(p)


def test_read_prompts_bad_file(tmp_path):
    with pytest.raises(ValueError, match="not a file"):
        read_prompts(tmp_path / "missing.txt")
    (tmp_path / "p.csv").write_text("a\n")
    with pytest.raises(ValueError, match=r"expected a \.txt or \.jsonl file"):
        read_prompts(tmp_path / "p.csv")


# -- in-process runs ----------------------------------------------------------------------
def test_results_format_and_rerun_skips(reference, search, prompts_txt):
    lines = read_jsonl(reference / "results.jsonl")
    items = read_prompts(prompts_txt)
    assert [r["id"] for r in lines] == [it.id for it in items]  # ordered by prompt index
    for r, it in zip(lines, items):
        assert (r["prompt"], r["seed"], r["index"], r["complete"]) == (it.prompt, it.seed, it.index, True)
        assert r["nfe"] == r["stats"]["nfe"] == BUDGET and r["nfe_budget"] == BUDGET
        assert r["image"] == f"images/{it.id}.png" and (reference / r["image"]).is_file()
        assert r["best_reward"] == max(r["rewards"]) and r["settings"]["seed"] == it.seed
        assert r["lineage"]["request"]["prompt"] == it.prompt
    assert not list(reference.glob("results.rank*.jsonl"))  # shards merged away
    # the best sample is re-generated exactly from its recorded lineage
    from PIL import Image
    import numpy as np

    img = search.replay(lines[0]["lineage"])
    assert np.array_equal(np.asarray(img), np.asarray(Image.open(reference / lines[0]["image"])))

    before = (reference / "results.jsonl").read_bytes()
    s = run_batch(search, items, reference, nfe_budget=BUDGET, num_inference_steps=STEPS, progress=False)
    assert (s.skipped, s.ran, s.complete) == (len(PROMPTS), 0, True)
    assert (reference / "results.jsonl").read_bytes() == before


def test_torn_line_and_partial_shard_resume(reference, search, prompts_txt, tmp_path):
    """A shard holding 3 finished lines and a torn 4th (a crash mid-append) resumes to the
    reference results; an incomplete (interrupted) line is redone."""
    items = read_prompts(prompts_txt)
    ref_lines = read_jsonl(reference / "results.jsonl")
    (tmp_path / "images").mkdir()
    for r in ref_lines[:3]:
        (tmp_path / r["image"]).write_bytes((reference / r["image"]).read_bytes())
    partial = dict(ref_lines[4], complete=False, best_reward=-99.0)  # an interrupted search, kept
    (tmp_path / partial["image"]).write_bytes(b"stale")
    shard = tmp_path / "results.rank0.jsonl"
    body = "".join(json.dumps(r) + "\n" for r in ref_lines[:3] + [partial])
    shard.write_text(body + json.dumps(ref_lines[3])[:57])  # torn: no newline, cut mid-object
    assert len(read_jsonl(shard)) == 4  # the torn line is ignored when reading
    s = run_batch(search, items, tmp_path, nfe_budget=BUDGET, num_inference_steps=STEPS, progress=False)
    assert (s.skipped, s.ran) == (3, len(PROMPTS) - 3)
    assert essentials(tmp_path) == essentials(reference)

    torn = tmp_path / "torn.jsonl"
    torn.write_bytes(b'{"id": "a"}\n{"id": "b"}\n{"id": "c", "pro')
    assert repair_jsonl(torn) == len(b'{"id": "c", "pro') and torn.read_bytes() == b'{"id": "a"}\n{"id": "b"}\n'
    assert repair_jsonl(torn) == 0


def test_two_shards_in_process_merge(reference, search, prompts_txt, tmp_path):
    """The partition (index % n == k) and the merge, without a launcher: process 1 runs, then
    process 0 runs and merges; the merged file equals a single-process run's."""
    items = read_prompts(prompts_txt)
    s1 = run_batch(search, items, tmp_path, nfe_budget=BUDGET, num_inference_steps=STEPS, progress=False,
                   process_index=1, num_processes=2, merge=False)
    assert [r["index"] for r in s1.records] == [1, 3, 5, 7, 9] and s1.results_path is None
    assert len(read_jsonl(tmp_path / "results.rank1.jsonl")) == 5
    s0 = run_batch(search, items, tmp_path, nfe_budget=BUDGET, num_inference_steps=STEPS, progress=False,
                   process_index=0, num_processes=2)
    assert [r["index"] for r in s0.records] == [0, 2, 4, 6, 8]
    assert not list(tmp_path.glob("results.rank*.jsonl"))
    assert [strip_timing(r) for r in read_jsonl(tmp_path / "results.jsonl")] == \
        [strip_timing(r) for r in read_jsonl(reference / "results.jsonl")]


def test_per_prompt_budget_and_merge_keeps_unknown_ids(search, tmp_path):
    items = make_items([{"prompt": "x 0.3", "nfe_budget": 8, "id": "cheap"}, "y 0.6"], base_seed=3)
    run_batch(search, items, tmp_path, nfe_budget=BUDGET, num_inference_steps=STEPS, progress=False)
    got = load_results(tmp_path)
    assert got["cheap"]["nfe"] == 8 and got["cheap"]["seed"] == 3 and len(got["cheap"]["rewards"]) == 2
    assert got[items[1].id]["nfe"] == BUDGET and got[items[1].id]["seed"] == 4
    # results of prompts no longer in the file are kept, after the current ones
    path = merge_results(tmp_path, items[1:])
    assert [r["id"] for r in read_jsonl(path)] == [items[1].id, "cheap"]


def test_reward_spec_errors(tmp_path, model_dir):
    from evosearch.cli import main
    from evosearch.registry import load_reward

    r = load_reward("test_batch:target_brightness", None, "cpu")  # tests/ is on sys.path under pytest
    assert r.name == "target_brightness" and float(r(torch.full((1, 1, 8, 8), 0.5), ["a 0.5"])[0]) == 0.0
    with pytest.raises(ValueError, match="cannot import"):
        load_reward("evosearch.nope:fn", None, "cpu")
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        load_reward("nope", None, "cpu")
    (tmp_path / "p.csv").write_text("a\n")
    assert main(["batch", str(tmp_path / "p.csv"), "--out", str(tmp_path / "o"), "--model", str(model_dir)]) == 2


# -- real processes -------------------------------------------------------------------------
def test_cli_kill_and_resume(reference, prompts_txt, model_dir, tmp_path, capsys, monkeypatch):
    """SIGKILL a running ``evosearch batch`` once it has finished >= 1 prompt, re-run it: the
    results equal an uninterrupted run's (ids, rewards, NFE, image bytes)."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    args = [PY, "-m", "evosearch.cli"] + cli_args(prompts_txt, out, model_dir,
                                                   reward="test_batch:slow_target_brightness")
    proc = subprocess.Popen(args, env=cli_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    shard, deadline = out / "results.rank0.jsonl", time.monotonic() + 60
    try:
        while not (shard.exists() and read_jsonl(shard)):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no result line within 60 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        rc = proc.wait()
    assert rc == -signal.SIGKILL
    done_before = len(read_jsonl(shard))
    assert 1 <= done_before < len(PROMPTS) and not (out / "results.jsonl").exists()

    # the re-run: the same command line, in this process (saves a second interpreter start)
    from evosearch.cli import main

    assert main(args[3:]) == 0
    assert f"{len(PROMPTS)}/{len(PROMPTS)} prompts done ({done_before} skipped" in capsys.readouterr().out
    assert essentials(out) == essentials(reference)
    assert not shard.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_two_processes(reference, prompts_txt, model_dir, tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` on a CPU-only machine: two gloo
    processes, one shard each, merged by the main process; identical to the 1-process run."""
    out = tmp_path / "out"
    cmd = [PY, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "evosearch.cli"] + cli_args(prompts_txt, out, model_dir)
    cmd[cmd.index("--device") + 1] = "auto"
    res = subprocess.run(cmd, env=cli_env(), cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(PROMPTS)}/{len(PROMPTS)} prompts done (0 skipped, 5 searched here | 2 processes)" in res.stdout
    assert not list(out.glob("results.rank*.jsonl"))
    got, ref = read_jsonl(out / "results.jsonl"), read_jsonl(reference / "results.jsonl")
    assert [r["id"] for r in got] == [r["id"] for r in ref]
    assert essentials(out) == essentials(reference)
    strip = lambda r: {k: v for k, v in strip_timing(r).items() if k != "config"}  # noqa: E731 (config: CLI flags)
    assert [strip(r) for r in got] == [strip(r) for r in ref]


def test_interrupt_keeps_finished_and_resumes(reference, search, prompts_txt, tmp_path):
    """Ctrl-C during prompt 2: prompts 0-1 are kept, prompt 2 is recorded incomplete, nothing
    is merged; the re-run redoes prompt 2 and finishes like an uninterrupted run."""
    items = read_prompts(prompts_txt)

    def reward(images, prompts):
        if prompts[0] == PROMPTS[2]:
            raise KeyboardInterrupt
        return target_brightness(images, prompts)

    stopping = SearchPipeline.from_pipe(search.pipe, reward=FunctionReward(reward), method=BestOfN())
    s = run_batch(stopping, items, tmp_path, nfe_budget=BUDGET, num_inference_steps=STEPS, progress=False)
    assert (s.ran, s.complete, s.results_path) == (3, False, None)
    assert [r["complete"] for r in read_jsonl(tmp_path / "results.rank0.jsonl")] == [True, True, False]
    assert not (tmp_path / "results.jsonl").exists()
    s = run_batch(search, items, tmp_path, nfe_budget=BUDGET, num_inference_steps=STEPS, progress=False)
    assert (s.skipped, s.ran, s.complete) == (2, len(PROMPTS) - 2, True)
    assert essentials(tmp_path) == essentials(reference)


# -- failing prompts: an error line each, the others go on; --retry-failed -------------------------
FAILING = {PROMPTS[2]: "raises", PROMPTS[3]: "nan"}


def flaky_brightness(images, prompts):
    """target_brightness, except that it raises for PROMPTS[2] and returns NaN for PROMPTS[3]."""
    if FAILING.get(prompts[0]) == "raises":
        raise RuntimeError("reward exploded")
    if FAILING.get(prompts[0]) == "nan":
        return torch.full((images.shape[0],), float("nan"))
    return target_brightness(images, prompts)


def comparable(rec):
    return {k: v for k, v in strip_timing(rec).items() if k != "config"}


def test_failing_prompts_are_isolated_and_retried(reference, search, prompts_txt, tmp_path):
    items = read_prompts(prompts_txt)
    flaky = SearchPipeline.from_pipe(search.pipe, reward=FunctionReward(flaky_brightness), method=BestOfN())
    s = run_batch(flaky, items, tmp_path, nfe_budget=BUDGET, num_inference_steps=STEPS, progress=False)
    assert (s.ran, s.failed, s.complete) == (len(PROMPTS), 2, True)
    lines = {r["id"]: r for r in read_jsonl(tmp_path / "results.jsonl")}
    ref = {r["id"]: r for r in read_jsonl(reference / "results.jsonl")}
    bad = {items[2].id: "RuntimeError: reward exploded", items[3].id: "non-finite"}
    for pid, rec in lines.items():
        if pid in bad:
            assert rec["status"] == "failed" and rec["complete"] is False and rec["image"] is None
            assert bad[pid] in rec["error"] and rec["prompt"] in PROMPTS and rec["nfe"] == BUDGET
        else:
            assert rec["status"] == "ok" and comparable(rec) == comparable(ref[pid])
    ok_lines = {pid: json.dumps(rec, sort_keys=True) for pid, rec in lines.items() if pid not in bad}

    s = run_batch(flaky, items, tmp_path, nfe_budget=BUDGET, num_inference_steps=STEPS, progress=False)
    assert (s.skipped, s.ran) == (len(PROMPTS), 0)  # a plain re-run keeps the error lines
    s = run_batch(search, items, tmp_path, nfe_budget=BUDGET, num_inference_steps=STEPS, progress=False,
                  retry_failed=True)
    assert (s.skipped, s.ran, s.failed) == (len(PROMPTS) - 2, 2, 0)
    after = {r["id"]: r for r in read_jsonl(tmp_path / "results.jsonl")}
    assert {pid: json.dumps(after[pid], sort_keys=True) for pid in ok_lines} == ok_lines  # nothing lost
    assert essentials(tmp_path) == essentials(reference)
    assert all(after[pid]["nfe_failed_attempts"] == BUDGET for pid in bad)  # the failed attempts' NFE is kept


def test_cli_failing_prompt_summary_and_retry(prompts_txt, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = cli_args(prompts_txt, out, model_dir, reward="test_batch:flaky_brightness")
    res = subprocess.run([PY, "-m", "evosearch.cli", *args], env=cli_env(), cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr  # some prompts failed
    assert "Traceback" not in res.stderr
    assert f"8/{len(PROMPTS)} prompts done (0 skipped, {len(PROMPTS)} searched here) | 2 failed" in res.stdout
    assert res.stdout.count("  failed     ") == 2 and "reward exploded" in res.stdout
    text = (out / "results.jsonl").read_text()
    failed = [r for r in map(json.loads, text.splitlines()) if r["status"] == "failed"]
    assert [r["prompt"] for r in failed] == [PROMPTS[2], PROMPTS[3]] and all(r["error"] for r in failed)
    assert str(tmp_path) not in text and str(ROOT) not in text  # paths relative to the output folder
    assert failed[0]["config"]["model"] == os.path.relpath(model_dir, out)

    from evosearch.cli import main

    args[args.index("--reward") + 1] = "test_batch:target_brightness"
    assert main(args + ["--retry-failed"]) == 0
    stdout = capsys.readouterr().out
    assert f"{len(PROMPTS)}/{len(PROMPTS)} prompts done (8 skipped, 2 searched here) | 0 failed" in stdout
    assert all(r["status"] == "ok" for r in read_jsonl(out / "results.jsonl"))


def test_a_prompt_the_model_refuses(tmp_path):
    """The digits model refuses "a cat" before any compute: an error line, the other prompts run."""
    from evosearch.registry import load_model, load_reward

    digits = SearchPipeline.from_pipe(load_model("digits"), reward=load_reward("digits"), method=BestOfN())
    s = run_batch(digits, make_items(["3", "a cat", "7"]), tmp_path, nfe_budget=4, num_inference_steps=4,
                  progress=False)
    assert [r["status"] for r in read_jsonl(tmp_path / "results.jsonl")] == ["ok", "failed", "ok"]
    assert s.failed == 1 and "prompt:" in s.records[1]["error"] and s.records[1]["nfe"] == 0


# -- a total budget: two waves, never more than N, resumable ----------------------------------------
TOTAL = 200


def total_run(search, items, out, **kw):
    from evosearch.batch import run_total_budget

    return run_total_budget(search, items, out, TOTAL, trajectory_nfe=STEPS, viable=lambda b: b >= STEPS,
                            num_inference_steps=STEPS, progress=False, **kw)


@pytest.fixture(scope="module")
def total_reference(search, prompts_txt, tmp_path_factory):
    out = tmp_path_factory.mktemp("total")
    s = total_run(search, read_prompts(prompts_txt), out)
    assert s.complete and s.results_path == out / "results.jsonl"
    return out


def spent(out: Path) -> int:
    from evosearch.batch import spent_nfe

    return sum(spent_nfe(r) for r in read_jsonl(out / "results.jsonl"))


def test_total_budget_waves(total_reference, prompts_txt):
    lines = read_jsonl(total_reference / "results.jsonl")
    plan = json.loads((total_reference / "budget_plan.json").read_text())
    assert TOTAL // 2 < spent(total_reference) <= TOTAL
    wave1 = TOTAL // (2 * len(PROMPTS))  # 10 -> 2 samples of 4 steps
    second = [r for r in lines if r["wave"] == 2]
    assert 1 <= len(second) <= len(PROMPTS) // 2  # the most headroom: at most half of the prompts
    for r in lines:
        row = plan["prompts"][r["id"]]
        assert r["waves"][0]["nfe_budget"] == wave1 and r["waves"][0]["nfe"] == row["wave1_nfe"] == 8
        if r["wave"] == 2:
            assert row["wave2_budget"] > 0 and row["wave2_budget"] % STEPS == 0
            assert r["nfe"] == 8 + r["waves"][1]["nfe"] and r["waves"][1]["nfe"] <= row["wave2_budget"]
            assert r["best_reward"] == max(w["best_reward"] for w in r["waves"])
            assert r["image"] == (f"images/wave2/{r['id']}.png" if r["best_wave"] == 2 else f"images/{r['id']}.png")
        else:
            assert row["wave2_budget"] == 0 and r["nfe"] == 8
    chosen = sorted(plan["prompts"].values(), key=lambda row: -row["headroom"])[:len(second)]
    assert all(row["wave2_budget"] > 0 for row in chosen)  # the ones with the most headroom got it


@pytest.mark.parametrize("stop_at", [4, len(PROMPTS) + 2])  # during wave 1, during wave 2
def test_total_budget_resumes_to_the_same_results(total_reference, search, prompts_txt, tmp_path, stop_at):
    calls = {"n": 0}

    def stopping(images, prompts):
        calls["n"] += 1
        if calls["n"] == stop_at:
            raise KeyboardInterrupt
        return target_brightness(images, prompts)

    items = read_prompts(prompts_txt)
    s = total_run(SearchPipeline.from_pipe(search.pipe, reward=FunctionReward(stopping), method=BestOfN()), items,
                  tmp_path)
    assert not s.complete and not (tmp_path / "results.jsonl").exists()
    assert (tmp_path / "budget_plan.json").exists() == (stop_at > len(PROMPTS))
    assert total_run(search, items, tmp_path).complete
    assert essentials(tmp_path) == essentials(total_reference)
    assert [comparable(r) for r in read_jsonl(tmp_path / "results.jsonl")] == \
        [comparable(r) for r in read_jsonl(total_reference / "results.jsonl")]
    assert (tmp_path / "budget_plan.json").read_text() == (total_reference / "budget_plan.json").read_text()


def test_total_budget_counts_failed_attempts(search, prompts_txt, tmp_path, capsys):
    """Failed attempts count against the total; --retry-failed re-runs them in wave 1, and after
    wave 2 only while the budget left covers them."""
    items = read_prompts(prompts_txt)
    calls = {"n": 0}

    def flaky_then_stop(images, prompts):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return flaky_brightness(images, prompts)

    s = total_run(SearchPipeline.from_pipe(search.pipe, reward=FunctionReward(flaky_then_stop), method=BestOfN()),
                  items, tmp_path / "a")
    assert (s.complete, s.failed) == (False, 2)  # prompts 2 and 3 failed, then Ctrl-C in wave 1
    assert total_run(search, items, tmp_path / "a", retry_failed=True).complete
    lines = {r["id"]: r for r in read_jsonl(tmp_path / "a/results.jsonl")}
    plan = json.loads((tmp_path / "a/budget_plan.json").read_text())
    for it in items[2:4]:
        assert lines[it.id]["status"] == "ok" and lines[it.id]["nfe_failed_attempts"] == 8
        assert plan["prompts"][it.id]["wave1_nfe"] == 16  # the failed attempt and the retry
    assert spent(tmp_path / "a") <= TOTAL

    flaky = SearchPipeline.from_pipe(search.pipe, reward=FunctionReward(flaky_brightness), method=BestOfN())
    assert total_run(flaky, items, tmp_path / "b").failed == 2
    left = TOTAL - spent(tmp_path / "b")
    assert 0 <= left < TOTAL // (2 * len(PROMPTS))  # wave 2 took all but less than one prompt's wave 1
    assert total_run(search, items, tmp_path / "b", retry_failed=True).ran == 0
    assert "2 failed prompt(s) not retried" in capsys.readouterr().err
    assert spent(tmp_path / "b") == TOTAL - left


def test_budget_plan_rule():
    from evosearch.batch import compute_plan

    items = make_items(["a", "b", "c", "d"])
    best, spreads = [0.0, -1.0, -2.0, -0.5], [1.0, 0.5, 3.0, 0.1]
    records = {it.id: {"id": it.id, "status": "ok", "complete": True, "nfe": 8,
                       "waves": [{"wave": 1, "nfe": 8, "best_reward": b, "spread": s}]}
               for it, b, s in zip(items, best, spreads)}
    plan = compute_plan(items, records, 100, {}, 4, viable=lambda b: b >= 4)
    rows = [plan["prompts"][it.id] for it in items]
    assert [r["headroom"] for r in rows] == [0.0, 0.5, 2.0, 0.1]  # min(spread, gap to the best prompt)
    assert [r["wave2_budget"] for r in rows] == [0, 12, 52, 0]  # 68 NFE to the top 2, by headroom, whole trajectories
    assert plan["pool"] == 68 and plan["unallocated"] == 4
    capped = compute_plan(items, records, 100, {items[2].id: 40}, 4, viable=lambda b: b >= 4)
    assert capped["prompts"][items[2].id]["wave2_budget"] == 32  # its cap, 40, minus its wave-1 NFE
    records[items[1].id] = {"id": items[1].id, "status": "failed", "nfe": 8, "waves": [{"wave": 1, "nfe": 8}]}
    failed = compute_plan(items, records, 100, {}, 4, viable=lambda b: b >= 100)  # nothing viable
    assert failed["prompts"][items[1].id]["wave2_budget"] == 0 and failed["unallocated"] == failed["pool"] == 68


def test_cli_total_budget(prompts_txt, model_dir, tmp_path, capsys):
    from evosearch.cli import main

    args = cli_args(prompts_txt, tmp_path / "out", model_dir)
    args[args.index("--nfe-budget"):args.index("--nfe-budget") + 2] = ["--total-nfe-budget", str(TOTAL)]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert re.search(rf"\| NFE (\d+)/{TOTAL} \|", stdout) and "budget_plan.json" in stdout
    assert int(re.search(rf"NFE (\d+)/{TOTAL}", stdout).group(1)) == spent(tmp_path / "out") <= TOTAL
    args[args.index(str(TOTAL))] = "10"
    assert main(args) == 2  # 10 // (2 x 10) = 0 NFE per prompt: refused
    assert "--total-nfe-budget: 10 NFE leaves each of the 10 prompts 0 NFE" in capsys.readouterr().err


def test_retries_stay_within_the_total():
    from evosearch.batch.budget import retry_allowance

    items = make_items(["a", "b", "c", "d"])
    budgets = {it.id: 5 for it in items}  # total 40 over 4 prompts: 5 NFE each in wave 1

    def failed(n_before):
        return {"status": "failed", "nfe": 5, "nfe_failed_attempts": n_before}

    records = {it.id: failed(0) for it in items[:3]}  # d has no result yet: its 5 NFE are promised
    assert retry_allowance(items, records, None, 40, budgets, 1) == {it.id for it in items[:3]}
    assert retry_allowance(items, records, None, 40, budgets, 2) == {items[0].id, items[1].id}  # 12 each
    records = {it.id: failed(5) for it in items[:3]}  # a second failure each: 30 spent, 5 promised
    assert retry_allowance(items, records, None, 40, budgets, 1) == {items[0].id}


# -- issue 18: one run per --out, resume compares the seed, typos in .jsonl keys ----------
def test_second_run_on_the_same_out_is_refused_naming_the_first(model_dir, tmp_path):
    """Two ``evosearch batch`` runs on one --out: the second is refused before it loads anything,
    naming the first run's pid; the first finishes undisturbed and releases the folder."""
    out, prompts_txt = tmp_path / "out", tmp_path / "two.txt"
    prompts_txt.write_text("\n".join(PROMPTS[:2]) + "\n")
    args = [PY, "-m", "evosearch.cli"] + cli_args(prompts_txt, out, model_dir,
                                                   reward="test_batch:gated_target_brightness")
    gate = tmp_path / "gate"
    env = dict(cli_env(), EVOSEARCH_TEST_GATE=str(gate))
    first = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    try:
        while not (out / ".evosearch-batch.lock").exists():
            assert first.poll() is None, first.stdout.read().decode()
            assert time.monotonic() < deadline, "no lock within 60 s"
            time.sleep(0.01)
        second = subprocess.run(args[:-1] + ["--seed", "5", "--quiet"], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        assert "Traceback" not in second.stderr
        assert f"--out: {str(out)!r} is in use by another evosearch batch run (pid {first.pid}" in second.stderr
    finally:
        gate.touch()
        rc = first.wait(timeout=300)
    assert rc == 0, first.stdout.read().decode()
    assert [r["seed"] for r in read_jsonl(out / "results.jsonl")] == [0, 1]  # the first run's seeds
    assert not (out / ".evosearch-batch.lock").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(search, prompts_txt, tmp_path, capsys):
    from evosearch.batch.lock import LOCK

    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "1"}))
    items = read_prompts(prompts_txt)[:2]
    s = run_batch(search, items, out, nfe_budget=BUDGET, num_inference_steps=STEPS, progress=False)
    assert s.complete and s.ran == 2
    assert f"taking over the lock of {out} from pid {dead.pid}" in capsys.readouterr().err
    assert not (out / LOCK).exists()
    # a live process's lock (this test's parent, say) is refused by name, and left in place
    (out / LOCK).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(ValueError, match=rf"in use by another evosearch batch run \(pid {os.getppid()}"):
        run_batch(search, items, out, nfe_budget=BUDGET, num_inference_steps=STEPS, progress=False)
    assert (out / LOCK).exists()


def test_resume_with_another_seed_warns(search, prompts_txt, tmp_path, capsys):
    out = tmp_path / "out"
    items = read_prompts(prompts_txt)[:2]
    run_batch(search, items, out, nfe_budget=BUDGET, num_inference_steps=STEPS, progress=False, config={"a": 1})
    capsys.readouterr()
    s = run_batch(search, read_prompts(prompts_txt, base_seed=5)[:2], out, nfe_budget=BUDGET,
                  num_inference_steps=STEPS, progress=False, config={"a": 1})
    assert s.skipped == 2
    assert "other settings (seed: 0 there, 5 now)" in capsys.readouterr().err


@pytest.mark.parametrize("line, match", [
    ('{"prompt": "a", "nfe_bugdet": 8}', "line 1: unknown key 'nfe_bugdet'; did you mean 'nfe_budget'?"),
    ('{"prompt": "a", "Seed": 3}', "unknown key 'Seed'; did you mean 'seed'?"),
    ('{"prompt": "a", "category": "x"}', "unknown key 'category'; the keys are prompt, seed"),
    ('{"prompt": "a", "meta": 3}', '"meta" must be an object'),
])
def test_unknown_jsonl_keys_are_refused_by_name(tmp_path, line, match):
    p = tmp_path / "p.jsonl"
    p.write_text(line + "\n")
    with pytest.raises(ValueError, match=re.escape(match)):
        read_prompts(p)


def test_disk_full_names_out_and_the_interrupted_summary_names_real_files(prompts_txt, model_dir, tmp_path, capsys,
                                                                          monkeypatch):
    """Issue 18: a full disk during a batch did not name --out; after Ctrl-C the summary named a
    results.jsonl that does not exist."""
    import errno

    import evosearch.batch.runner as runner
    from evosearch.cli import main

    out = tmp_path / "out"
    assert main(cli_args(prompts_txt, out, model_dir, reward="test_batch:interrupt_at_third")) == 130
    text = capsys.readouterr().out
    shown = text.split("  results    ", 1)[1].splitlines()[0]
    assert shown.startswith(str(out / "results.rank0.jsonl")) and "merged into results.jsonl" in shown
    assert (out / "results.rank0.jsonl").is_file() and not (out / "results.jsonl").exists()

    def full(path, record):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runner, "append_line", full)
    out = tmp_path / "full"
    assert main(cli_args(prompts_txt, out, model_dir)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("evosearch: error: --out: cannot write the result line of ")
    assert f"to {str(out)!r} (No space left on device)" in err[0]
    assert not (out / ".evosearch-batch.lock").exists()  # released on the error too
