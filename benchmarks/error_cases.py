"""Every unclear error and lenient input of the reliability issues (12 and 18), as a user meets them now.

Runs each case against the bundled shapes model (API) or the ``evosearch`` CLI (a real
process) and prints what comes back: the exception type and its first line, or the CLI's exit
code and stderr (a traceback would show as "Traceback"). A case that is accepted shows what
it did (e.g. the judge's verdict on a uint8 image). Writes ``{"rows": [{"surface", "case",
"outcome", "message"}]}`` to ``--out`` (default benchmarks/results/error_cases.json).

    python benchmarks/error_cases.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from evosearch import BestOfN, EvoSearch, FunctionReward, ParticleSearch, SearchPipeline, testing  # noqa: E402
from evosearch.bundled import digits, shapes  # noqa: E402
from evosearch.io import atomic_write_json  # noqa: E402


def first_line(text: str, width: int = 150) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def api_cases(tmp: Path) -> list[tuple[str, callable]]:
    pipe = shapes.load_pipeline()
    reward = shapes.load_reward()
    search = SearchPipeline.from_pipe(pipe, reward=reward, method=BestOfN(n=2), judge=False)
    ok = dict(seed=0, num_inference_steps=2, progress=False)
    prompt = "a red circle"

    calls = []

    def raising(images, prompts):  # scores the first generation, then breaks
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("the scorer broke")
        return images.flatten(1).mean(1)

    def broken_lineage(mutate):
        out = search(prompt, **ok)
        record = out.best.lineage.to_dict()
        mutate(record)
        return search.replay(record)

    other = SearchPipeline.from_pipe(shapes.load_pipeline("flow"), reward=reward, judge=False)
    return [
        ("prompt None", lambda: search(None, **ok)),
        ("prompt 42", lambda: search(42, **ok)),
        ("prompt bytes", lambda: search(b"a red circle", **ok)),
        ("prompt outside the grammar", lambda: search("a cat", **ok)),
        ("width=-8", lambda: search(prompt, width=-8, **ok)),
        ("height=32.0", lambda: search(prompt, height=32.0, **ok)),
        ("height=0", lambda: search(prompt, height=0, **ok)),
        ("max_batch_size=True", lambda: SearchPipeline.from_pipe(pipe, reward=reward, max_batch_size=True)),
        ("nfe_budget=True", lambda: search(prompt, nfe_budget=True, **ok)),
        ("reward returns None", lambda: SearchPipeline.from_pipe(
            pipe, reward=FunctionReward(lambda im, p: [None] * len(im), name="nones"), judge=False)(prompt, **ok)),
        ("reward returns strings", lambda: SearchPipeline.from_pipe(
            pipe, reward=FunctionReward(lambda im, p: ["high"] * len(im), name="words"), judge=False)(prompt, **ok)),
        ("method=EvoSearch (the class)", lambda: search(prompt, method=EvoSearch, **ok)),
        ("method=42", lambda: search(prompt, method=42, **ok)),
        ("reward raises (best kept on .partial)", lambda: SearchPipeline.from_pipe(
            pipe, reward=FunctionReward(raising, name="raising"), method=EvoSearch(), judge=False)(
            prompt, seed=0, num_inference_steps=4, nfe_budget=200, progress=False)),
        ("callback raises (best kept on .partial)", lambda: search(
            prompt, callback=lambda event: 1 / 0 if event.type == "generation" else None, **ok)),
        ("replay on another model", lambda: other.replay(search(prompt, **ok).best.lineage)),
        ("replay: events out of order", lambda: broken_lineage(
            lambda r: r["events"].extend([{"step": 1, "kind": "sigma", "seed": 1},
                                          {"step": 0, "kind": "sigma", "seed": 2}]))),
        ("replay: event past the last step", lambda: broken_lineage(
            lambda r: r["events"].append({"step": 99, "kind": "sigma", "seed": 1}))),
        ("replay None", lambda: search.replay(None)),
        ("replay {}", lambda: search.replay({})),
        ("digits prompt 'a cat'", lambda: SearchPipeline.from_pipe(
            digits.load_pipeline(), reward=digits.load_reward(), judge=False)("a cat", **ok)),
        # -- issue 18 ------------------------------------------------------------------------
        ("judge: a uint8 image", lambda: "verdict " + str(shapes.Judge()(image_u8(), prompt)[0]["correct"])),
        ("reward: float pixels in 0-255", lambda: reward(image_u8().float(), prompt)),
        ("reward: uint8 pixels", lambda: f"reward {float(reward(image_u8(), prompt)[0]):.4g}"),
        ("reward returns complex numbers", lambda: SearchPipeline.from_pipe(
            pipe, reward=FunctionReward(lambda im, p: [1 + 1j] * len(im), name="cplx"), judge=False)(prompt, **ok)),
        ("another world's reward (digits on shapes)", lambda: SearchPipeline.from_pipe(
            pipe, reward=digits.load_reward(), judge=False)(prompt, **ok)),
        ("a judge that raises during early stop", lambda: judged_search()(prompt, **ok)),
        ("SD at num_inference_steps=1000 (plan)", lambda: "plans " + str(SearchPipeline.from_pipe(
            testing.tiny_sd(seed=0), reward=reward, judge=False).plan(prompt, num_inference_steps=1000).nfe) + " NFE"),
        ("fixed population below the budget", lambda: SearchPipeline.from_pipe(
            pipe, reward=reward, judge=False).plan(prompt, nfe_budget=320, num_inference_steps=20,
                                                   method=ParticleSearch(n_particles=8))["note"]),
        ("replay: lineage without 'model'", lambda: broken_lineage(lambda r: r.pop("model"))),
        ("replay: sigma at step == num_steps", lambda: broken_lineage(
            lambda r: (r.pop("check"), r["events"].append({"step": 2, "kind": "sigma", "seed": 1})))),
        ("replay: edited step count", lambda: broken_lineage(
            lambda r: r["request"].update(num_inference_steps=3))),
        *[(f"replay: seed {s!r}", lambda s=s: broken_lineage(
            lambda r: (r.pop("check"), r["events"][0].update(seed=s)))) for s in (-1, 1.5, 2 ** 80, "7")],
    ]


def image_u8():
    """A rendered shapes scene as a uint8 tensor (1, 3, H, W)."""
    import numpy as np

    return torch.from_numpy(np.asarray(shapes.render("a red circle", 0))).permute(2, 0, 1)[None].contiguous()


def judged_search():
    from evosearch.search.context import EarlyStop

    def broken(images, prompts):
        raise RuntimeError("the judge broke")

    return SearchPipeline.from_pipe(shapes.load_pipeline(), reward=shapes.load_reward(), method=BestOfN(n=2),
                                    judge=broken, early_stop=EarlyStop(target_judge=True))


def run_api(name, fn) -> dict:
    try:
        said = fn()
        return {"surface": "api", "case": name, "outcome": "accepted",
                "message": first_line(said) if isinstance(said, str) else ""}
    except Exception as err:  # noqa: BLE001 -- the point is to show what comes back
        partial = getattr(err, "partial", None)
        kept = f" | .partial: best reward {partial.best.reward:.4g}, NFE {partial.stats.nfe}" if (
            partial is not None and partial.best is not None) else ""
        return {"surface": "api", "case": name, "outcome": type(err).__name__,
                "message": first_line(str(err)) + kept}


def cli_cases(tmp: Path) -> list[tuple[str, list[str]]]:
    afile = tmp / "a_file"
    afile.write_text("x")
    bad_model = tmp / "bad_model"
    bad_model.mkdir()
    (bad_model / "model_index.json").write_text("{not json")
    unknown = tmp / "unknown_model"
    unknown.mkdir()
    (unknown / "model_index.json").write_text('{"_class_name": "NoSuchPipeline"}')
    garbage = tmp / "garbage.safetensors"
    garbage.write_bytes(b"\x00garbage")
    base = ["generate", "--steps", "2", "--nfe-budget", "4", "--method", "best-of-n", "--quiet"]
    return [
        ("--out is a file", [*base, "--out", str(afile)]),
        ("--out under a file", [*base, "--out", str(afile / "sub")]),
        ("--out not writable", [*base, "--out", "/proc/evosearch-out"]),  # even root cannot write there
        ("model_index.json broken", [*base, "--model", str(bad_model), "--out", str(tmp / "o1")]),
        ("model_index.json of an unknown pipeline", [*base, "--model", str(unknown), "--out", str(tmp / "o2")]),
        ("--device cuda without a GPU", [*base, "--device", "cuda", "--out", str(tmp / "o3")]),
        ("--device foo", [*base, "--device", "foo", "--out", str(tmp / "o4")]),
        ("--reward-checkpoint missing", [*base, "--reward-checkpoint", str(tmp / "nope.pt"), "--out", str(tmp / "o5")]),
        ("--reward-checkpoint garbage", [*base, "--reward-checkpoint", str(garbage), "--out", str(tmp / "o6")]),
        ("a custom reward that raises", [*base, "--reward", "benchmarks.error_cases:raising_reward",
                                         "--out", str(tmp / "o7")]),
        ("prompt outside the grammar", [*base, "--prompt", "a cat", "--out", str(tmp / "o8")]),
        # -- issue 18: refused before the model loads, and before --out is created ---------------
        ("--reward digits on shapes", [*base, "--reward", "digits", "--out", str(tmp / "o9")]),
        ("--target-judge with --judge none", [*base, "--target-judge", "--judge", "none", "--out", str(tmp / "o10")]),
        ("--reward unknown", [*base, "--reward", "nope", "--out", str(tmp / "o11")]),
        ("--seed -1", [*base, "--seed", "-1", "--out", str(tmp / "o12")]),
        ("--num-segments -1 --num-frames 5 --fps nan on shapes",
         [*base, "--num-segments", "-1", "--num-frames", "5", "--fps", "nan", "--out", str(tmp / "o13")]),
        ("--fps 0 on moving-digits", [*base, "--model", "moving-digits", "--fps", "0", "--out", str(tmp / "o14")]),
        ("batch: .jsonl key 'nfe_bugdet'", ["batch", str(typo_jsonl(tmp)), "--out", str(tmp / "o15"), "--quiet"]),
    ]


def typo_jsonl(tmp: Path) -> Path:
    path = tmp / "typo.jsonl"
    path.write_text('{"prompt": "a red circle", "nfe_bugdet": 8}\n')
    return path


def raising_reward(images, prompts):
    """A custom reward (``--reward benchmarks.error_cases:raising_reward``) that raises."""
    raise RuntimeError("my reward broke")


def run_cli(name, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "evosearch.cli", *args], capture_output=True, text=True, env=env,
                       cwd=ROOT)
    err = p.stderr.strip()
    lines = [x for x in err.splitlines() if x.strip() and "Loading" not in x and "it/s]" not in x]
    traceback = any(x.startswith("Traceback") for x in lines)
    out_arg = args[args.index("--out") + 1] if "--out" in args else None
    if out_arg and p.returncode == 2 and not Path(out_arg).exists():
        lines = [x + " [no --out folder left behind]" if x.startswith("evosearch: error") else x for x in lines]
    return {"surface": "cli", "case": name, "outcome": f"exit {p.returncode}" + (" + traceback" if traceback else ""),
            "message": first_line("\n".join(x for x in lines if x.startswith("evosearch")) or "\n".join(lines))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "error_cases.json")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, fn in api_cases(tmp):
            rows.append(run_api(name, fn))
            print(f"{'api':4s} {name:42s} {rows[-1]['outcome']:16s} {rows[-1]['message']}", flush=True)
        for name, cli_args in cli_cases(tmp):
            rows.append(run_cli(name, cli_args))
            rows[-1]["message"] = rows[-1]["message"].replace(str(tmp), "<tmp>")
            print(f"{'cli':4s} {name:42s} {rows[-1]['outcome']:16s} {rows[-1]['message']}", flush=True)
    atomic_write_json(args.out, {"rows": rows})
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
