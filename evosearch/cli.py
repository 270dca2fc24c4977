"""Command line: ``evosearch generate``, ``evosearch batch``, ``evosearch app``.

Methods, models and rewards are the names of :mod:`evosearch.registry`. Everything a user can
get wrong (flags, the output folder, the device, the model folder, reward checkpoints) is
checked before any sampling; :func:`main` prints such an error in one line
(``evosearch: error: ...``) and exits with code 2 -- ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

from . import preflight as pf
from .core.validation import check_int
from .registry import DEFAULT_MODEL, METHODS, MODELS, POPULATION_PARAMETER, REWARDS

#: parameters named in the library's errors -> the flags that set them
FLAG_OF = {"prompt": "--prompt", "num_inference_steps": "--steps", "guidance_scale": "--guidance-scale",
           "nfe_budget": "--nfe-budget", "seed": "--seed", "num_frames": "--num-frames",
           "num_segments": "--num-segments", "early_stop": "--target-judge", "eta": "--eta", "reward": "--reward"}
#: characters of an error message printed at most
MESSAGE_CHARS = 1000


class SearchFailed(RuntimeError):
    """The search stopped on an error from the reward (or a callback); the best so far was written."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, unless its help already says what the default is."""

    def _get_help_string(self, action):
        if "default" in (action.help or "").lower():
            return action.help
        return super()._get_help_string(action)


# ------------------------------------------------------------------------------- generate
def write_outputs(out, out_dir: Path, label: str, fps: float = 8.0, reward_name: str | None = None,
                  extra: dict | None = None) -> dict[str, Path]:
    """best.png, population.png (grid of the final population), plain.png (grid of plain samples
    from the same seeds), rewards.png (reward vs NFE from NFE 0), record.json (with the judge's
    verdict and warnings, paths relative to ``out_dir``); for video models also best.mp4 (best.gif
    without imageio-ffmpeg), whose first frame is best.png; each written atomically."""
    from .io import atomic_write_json, image_grid, plot_reward_vs_nfe, save_image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    if out.best is not None:
        paths["best"] = save_image(out.best.image, out_dir / "best.png", upscale_to=256)
        if getattr(out.best, "video", None) is not None:
            from .video_io import export_video

            paths["video"] = export_video(out.best.video, out_dir / "best.mp4", fps=fps, min_size=256)
        paths["population"] = save_image(image_grid(out.images), out_dir / "population.png", upscale_to=512)
        if out.plain:
            paths["plain"] = save_image(image_grid(out.plain), out_dir / "plain.png", upscale_to=512)
        paths["plot"] = plot_reward_vs_nfe({label: out.history}, out_dir / "rewards.png", reward_name=reward_name,
                                           title=f"{label}: best reward {out.best.reward:.4g}")
    record = {**(extra or {}), **out.to_record(),
              "files": {k: Path(p).relative_to(out_dir).as_posix() for k, p in paths.items()}}
    paths["record"] = atomic_write_json(out_dir / "record.json", record)
    return paths


def judge_summary(judge: dict | None) -> str:
    """The judge's verdict in one line."""
    if not judge:
        return "none (this model has no judge, or --judge none)"
    best, plain, pop = judge.get("best") or {}, judge.get("plain") or {}, judge.get("population") or {}
    source = plain.get("source", "")
    label = f"plain samples ({source.replace('x0 ', '')})" if source.startswith("x0 previews") else "plain samples"
    if "correct" in best:
        verdict = "correct" if best["correct"] else f"incorrect ({best.get('reason') or 'no reason given'})"
        rate = lambda s: f"{s['correct']:.0%} of {s['n']} correct" if "correct" in s else "-"  # noqa: E731
        return f"best {verdict}{'' if best.get('valid', True) else ', invalid'} | {label} {rate(plain)} | " \
               f"population {rate(pop)}"
    return f"best {best.get('score', float('nan')):.4g} | {label} {plain.get('score', float('nan')):.4g} | " \
           f"population {pop.get('score', float('nan')):.4g}"


def print_summary(out, label: str, paths: dict, seconds: float) -> None:
    s = out.stats
    state = "complete" if out.complete else "interrupted (best so far kept)"
    if s.stopped and out.complete:
        state = f"stopped early ({s.stopped}; {s.nfe} of {s.nfe_budget or s.planned_nfe} NFE spent)"
    print(f"{label}: best reward {out.best.reward if out.best else float('nan'):.4f} | NFE {s.nfe}"
          f"{'' if s.nfe_budget is None else f'/{s.nfe_budget}'} | {s.reward_calls} reward calls | "
          f"{seconds:.1f}s | {state}")
    print(f"  judge      {judge_summary(out.judge)}")
    for w in out.warnings:
        print(f"  warning    {w}")
    for k, p in paths.items():
        print(f"  {k:10s} {p}")


def cmd_generate(args) -> int:
    t0 = time.perf_counter()
    model = pf.resolve_model(args.model)
    pf.check_method_for_model(args.method, model)
    options = pf.parse_options(args.option)
    method = pf.make_method(args.method, args.population, options)
    early_stop = pf.make_early_stop(args.patience, args.tol, args.target_reward, args.target_judge)
    if args.nfe_budget is not None:
        check_int("--nfe-budget", args.nfe_budget, lo=1)
    # every check that needs no model comes before the model loads and before --out is created
    check_int("--seed", args.seed, lo=0)
    prompt = args.prompt if args.prompt is not None else pf.default_prompt(model)
    pf.check_prompt_for(model, prompt)
    pf.check_target_judge(args.target_judge, args.judge, model)
    reward_name = pf.reward_name(args.reward, model)
    pf.check_reward_checkpoint(args.reward_checkpoint)
    pf.check_reward_choice(reward_name, model, args.reward_checkpoint)
    video = {k: v for k, v in (("num_frames", args.num_frames), ("num_segments", args.num_segments)) if v is not None}
    pf.check_video_flags(model, fps=args.fps, **video)
    fps = 8.0 if args.fps is None else float(args.fps)
    device = pf.check_device(args.device)
    out_dir = pf.check_out_dir(args.out)
    if args.quiet:
        pf.quiet_loading()
    main_process = True
    if args.distribute == "population":  # under a launcher: this process's device, one search over all
        from .batch.command import resolve_device, wants_cpu
        from .search.distributed import process_group_size

        if process_group_size() > 1:
            from accelerate import PartialState

            state = PartialState(cpu=wants_cpu(device))
            device, main_process = resolve_device(device, state), state.is_main_process
    search = pf.build_search(model, method, reward_name, args.reward_checkpoint, device=device,
                             max_batch_size=args.max_batch_size, eta=args.eta, judge=args.judge,
                             early_stop=early_stop, target_judge=args.target_judge,
                             distributed="auto" if args.distribute == "population" else False)
    pf.check_video_flags(model, search.stepper, fps=args.fps, **video)  # a folder's model, now that it is loaded
    budget = pf.default_nfe_budget(args.nfe_budget, args.population, args.steps, search.stepper)
    extra = {"model": model if model in MODELS else pf.user_path(model, out_dir), "reward": reward_name,
             "reward_checkpoint": pf.user_path(args.reward_checkpoint, out_dir), "method": args.method,
             "options": options, "judge_choice": args.judge}

    def write(out):
        if not main_process:  # a search spread over processes: the main process writes
            return {}
        try:
            return write_outputs(out, out_dir, args.method, fps=fps, reward_name=reward_name, extra=extra)
        except OSError as err:  # disk full, the folder removed meanwhile
            raise OSError(f"--out: cannot write the results to {str(out_dir)!r} ({err.strerror or err})") from err

    try:
        out = search(prompt, seed=args.seed, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                     nfe_budget=budget, progress=not args.quiet, **video)
    except Exception as err:
        partial = getattr(err, "partial", None)
        if partial is None:  # refused before any compute: a bad prompt, step count, ...
            if isinstance(err, (ValueError, TypeError)):
                raise pf.flag_error(None, err, FLAG_OF) from err
            raise
        write(partial)
        best = "no sample was scored" if partial.best is None else \
            f"the best so far (reward {partial.best.reward:.4g}) is in {out_dir}"
        from .search.context import CallbackError, JudgeError

        source = "the judge (--target-judge)" if isinstance(err, JudgeError) else "a callback" if isinstance(
            err, CallbackError) else f"the reward {reward_name!r}"
        raise SearchFailed(f"the search stopped at NFE {partial.stats.nfe} on an error from {source}: "
                           f"{type(err).__name__}: {err}; {best}") from err
    paths = write(out)
    if main_process:
        print_summary(out, args.method, paths, time.perf_counter() - t0)
    return 0 if out.complete else 130


# -------------------------------------------------------------------------------- parsers
def add_search_args(g, device: str) -> None:
    """The model/method/reward/budget flags shared by ``generate`` and ``batch``."""
    models = ", ".join(MODELS)
    g.add_argument("--model", default=DEFAULT_MODEL, metavar="MODEL|PATH",
                   help=f"a bundled model ({models}) or a local diffusers folder with model_index.json")
    g.add_argument("--method", default="evosearch", choices=list(METHODS), help="search method")
    g.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a hyperparameter of the method, e.g. --option mutation_rate=0.3 (repeatable; the value is a "
                        "Python literal, else text); default: none, the method's own defaults")
    g.add_argument("--nfe-budget", type=int, default=None,
                   help=f"denoiser evaluations (NFE) to spend per prompt (default: {pf.DEFAULT_TRAJECTORIES} "
                        "trajectories' worth, unless --population sizes the search)")
    pops = "; ".join(f"{m}: {p}" for m, p in POPULATION_PARAMETER.items() if p)
    g.add_argument("--population", type=int, default=None,
                   help=f"the method's population ({pops}); default: sized from the budget")
    g.add_argument("--steps", type=int, default=None, help="num_inference_steps (default: the model's)")
    g.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance (default: the model's)")
    g.add_argument("--eta", type=float, default=1.0, help="sampler noise level in [0, 1] (EvoSearch needs > 0)")
    g.add_argument("--seed", type=int, default=0, help="random seed")
    g.add_argument("--reward", default=None, metavar="REWARD",
                   help=f"one of {', '.join(REWARDS)}, or module:attr naming an importable Reward or callable "
                        "fn(images, prompts) -> scores (default: the model's own reward; clip for a folder)")
    g.add_argument("--reward-checkpoint", default=None, metavar="PATH",
                   help="a local checkpoint for the reward (default: its bundled or downloaded weights)")
    g.add_argument("--judge", default="default", choices=("default", "none"),
                   help="held-out judge of the samples: default = the model's own judge when it has one")
    g.add_argument("--patience", type=int, default=None,
                   help="early stop: after this many generations without a rise above --tol (default: off)")
    g.add_argument("--tol", type=float, default=None, help="early stop: the rise that counts (default: 0 = any)")
    g.add_argument("--target-reward", type=float, default=None,
                   help="early stop: once the best reward reaches this (default: off)")
    g.add_argument("--target-judge", action="store_true", help="early stop: once the judge calls the best correct")
    g.add_argument("--max-batch-size", type=int, default=16, help="samples per denoiser call")
    g.add_argument("--device", default=device, help="cpu, cuda, cuda:N or mps" + (
        "; auto = this process's device under a launcher, else a GPU if any, else cpu" if device == "auto" else ""))
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def make_parser() -> argparse.ArgumentParser:
    from .apps.gradio_app import add_parser as add_app_parser

    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error (default: one line)")
    parser = argparse.ArgumentParser(prog="evosearch", description="Test-time search for diffusers generators",
                                     parents=[debug], formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="search for the best sample of one prompt", parents=[debug],
                       formatter_class=HelpFormatter,
                       description="Search for the best sample of PROMPT and write OUT/best.png, population.png, "
                                   "plain.png, rewards.png and record.json.")
    g.add_argument("--prompt", default=None, help="the prompt (default: the model's example prompt)")
    add_search_args(g, device="cpu")
    g.add_argument("--out", default="evosearch-out", metavar="DIR", help="output folder")
    g.add_argument("--num-frames", type=int, default=None, help="video models: frames (default: the model's)")
    g.add_argument("--num-segments", type=int, default=None,
                   help="segment models (moving-digits): segments per video (default: the model's)")
    g.add_argument("--fps", type=float, default=None,
                   help="video models: frames per second of best.mp4/.gif (default: 8)")
    g.add_argument("--distribute", default="none", choices=("none", "population"),
                   help="under `accelerate launch` / torchrun: population = spread the search's population over "
                        "the processes (one search, the same result as one process; the main process writes)")
    g.set_defaults(func=cmd_generate)

    b = sub.add_parser("batch", help="search every prompt of a .txt/.jsonl file; resumable, multi-process",
                       parents=[debug], formatter_class=HelpFormatter,
                       description="Search every prompt of PROMPTS and write DIR/results.jsonl and DIR/images/. "
                                   "Re-running skips finished prompts. A failing prompt gets an error line and the "
                                   "others go on (exit code 1 at the end). Under `accelerate launch` (or torchrun) "
                                   "process k takes the prompts with index % num_processes == k.")
    b.add_argument("prompts", metavar="PROMPTS",
                   help=".txt (one prompt per line; blank and # lines skipped) or .jsonl (objects with \"prompt\" "
                        "and optional \"seed\", \"id\", \"nfe_budget\", \"negative_prompt\", \"meta\"; other keys are "
                        "refused)")
    b.add_argument("--out", required=True, metavar="DIR", help="output folder (results.jsonl, images/); required")
    add_search_args(b, device="auto")
    b.add_argument("--save-population", action="store_true",
                   help="also save a grid of each prompt's final population (images/<id>.population.png)")
    b.add_argument("--retry-failed", action="store_true",
                   help="search the prompts that failed in an earlier run again (default: keep their error lines)")
    b.add_argument("--distribute", default="prompts", choices=("prompts", "population"),
                   help="under `accelerate launch` / torchrun: prompts = process k takes the prompts with index %% "
                        "num_processes == k; population = every process takes part in each prompt's search (its "
                        "population spread over them; the main process writes)")
    b.add_argument("--total-nfe-budget", type=int, default=None, metavar="N",
                   help="share N NFE over all prompts: wave 1 gives each min(N // (2 x prompts), --nfe-budget), "
                        "the rest goes to the prompts with the most estimated headroom (default: off, every prompt "
                        "gets --nfe-budget)")
    from .batch.command import cmd_batch

    b.set_defaults(func=cmd_batch)
    add_app_parser(sub)
    return parser


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS] + f"... ({len(text)} characters)"


def main(argv=None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, SearchFailed) as err:  # a user's error: one line, no traceback
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"evosearch: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("evosearch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
