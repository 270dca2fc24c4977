"""``evosearch batch``: prompt files, results format, crash-safe resume, multi-process runs."""

import json
import os
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


# -- fixtures and helpers -----------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, pixel_pipe):
    d = tmp_path_factory.mktemp("tiny-ddpm")
    pixel_pipe.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def search(model_dir):
    from evosearch.cli import load_model

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
    p.write_text('{"prompt": "a 0.2", "seed": 42, "id": "first", "nfe_budget": 8, "category": "x"}\n\n'
                 '# a comment\n{"prompt": "b 0.8", "negative_prompt": "blurry"}\n')
    a, b = read_prompts(p, base_seed=100)
    assert (a.id, a.seed, a.nfe_budget, a.meta) == ("first", 42, 8, {"category": "x"})
    assert (b.id, b.seed, b.negative_prompt, b.index) == (prompt_id(1, "b 0.8"), 101, "blurry", 1)


@pytest.mark.parametrize("text, match", [
    ('{"prompt": "a"}\n{"prompt": "b"\n', "line 2 is not valid JSON"),
    ('{"seed": 1}\n', '"prompt" must be a non-empty string'),
    ('{"prompt": "a", "id": "x"}\n{"prompt": "b", "id": "x"}\n', "repeats the id"),
    ('{"prompt": "a", "id": "../evil"}\n', '"id" must be'),
    ('{"prompt": "a", "seed": -1}\n', "'seed' must be an integer >= 0"),
    ('{"prompt": "a", "nfe_budget": 0}\n', "'nfe_budget' must be an integer >= 1"),
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
    from evosearch.cli import load_reward, main

    r = load_reward("test_batch:target_brightness", None, "cpu")  # tests/ is on sys.path under pytest
    assert r.name == "target_brightness" and float(r(torch.full((1, 1, 8, 8), 0.5), ["a 0.5"])[0]) == 0.0
    with pytest.raises(SystemExit, match="cannot import"):
        load_reward("evosearch.nope:fn", None, "cpu")
    with pytest.raises(SystemExit, match="unknown reward 'nope'"):
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
