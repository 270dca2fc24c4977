"""Command line: ``evosearch generate`` (and later subcommands)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

METHOD_CHOICES = ("evosearch", "best-of-n", "zero-order", "paths", "particles", "tts-var", "tree-of-frames")
REWARD_CHOICES = ("digits", "clip", "aesthetic", "moving-digits")


def build_method(name: str, population: int | None = None):
    from .search import BestOfN, EvoSearch, ParticleSearch, PathSearch, ZeroOrderSearch

    if name == "evosearch":
        return EvoSearch()
    if name == "best-of-n":
        return BestOfN(n=population)
    if name == "zero-order":
        return ZeroOrderSearch()
    if name == "paths":
        return PathSearch() if population is None else PathSearch(n_keep=population, width=4)
    if name == "particles":
        return ParticleSearch(n_particles=population)
    if name == "tts-var":  # next-scale models only (--model var-digits); population = N of the batch schedule
        from .search import TTSVAR

        return TTSVAR(n=population)
    if name == "tree-of-frames":  # segment models only (--model moving-digits); population = roots
        from .search import TreeOfFrames

        return TreeOfFrames() if population is None else TreeOfFrames(roots=population)
    raise ValueError(f"--method: unknown method {name!r}; allowed: {', '.join(METHOD_CHOICES)}")


def load_model(model: str | None, device: str):
    """The bundled digits pipeline (model None or "digits") or a local diffusers folder."""
    if model in (None, "digits", "bundled"):
        from .bundled import digits

        return digits.load_pipeline(device=device)
    if model == "var-digits":  # the bundled next-scale (VAR) digits model
        from .bundled import var_digits

        return var_digits.load_pipeline(device=device)
    if model == "moving-digits":  # the bundled segment-wise video model (use with --method tree-of-frames)
        from .bundled import moving_digits

        return moving_digits.load_pipeline(device=device)
    path = Path(model)
    if not path.is_dir() or not (path / "model_index.json").exists():
        raise SystemExit(f"--model: {model!r} is not a local diffusers folder (a directory with model_index.json); "
                         "omit --model for the bundled digits model")
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(str(path)).to(device)


def default_reward_name(model: str | None) -> str:
    if model == "moving-digits":
        return "moving-digits"
    return "digits" if model in (None, "digits", "bundled", "var-digits") else "clip"


def default_nfe_budget(args, search) -> int | None:
    """--nfe-budget, or 32 trajectories' worth when neither it nor --population is given."""
    if args.nfe_budget is None and args.population is None:
        return 32 * (args.steps or search.stepper.default_num_inference_steps)
    return args.nfe_budget


def load_reward(name: str, checkpoint: str | None, device: str):
    """A named reward, or ``module:attr`` naming an importable Reward instance, Reward class
    (instantiated without arguments) or callable ``fn(images (N,3,H,W) in [0,1], prompts) -> (N,)``."""
    if ":" in name:
        import importlib

        from .rewards.base import Reward, as_reward

        mod_name, _, attr = name.partition(":")
        try:
            obj = importlib.import_module(mod_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            raise SystemExit(f"--reward: cannot import {name!r} ({e})")
        if isinstance(obj, type) and issubclass(obj, Reward):
            obj = obj()
        try:
            return as_reward(obj)
        except TypeError as e:
            raise SystemExit(f"--reward: {name!r}: {e}")
    if name == "moving-digits":  # the bundled frame classifier, averaged over frames
        from .bundled import moving_digits

        return moving_digits.load_reward(path=checkpoint)
    if name == "digits":
        from .bundled import digits

        return digits.load_reward(path=checkpoint)
    if name == "clip":
        from .rewards.clip import CLIPScore

        return CLIPScore(pretrained=checkpoint or "openai", device=device)
    if name == "aesthetic":
        from .rewards.clip import Aesthetic

        return Aesthetic(mlp_path=checkpoint, device=device)
    raise SystemExit(f"--reward: unknown reward {name!r}; allowed: {', '.join(REWARD_CHOICES)}, or module:function")


def write_outputs(out, out_dir: Path, label: str, fps: float = 8.0) -> dict[str, Path]:
    """best.png, population.png (grid of the final population), rewards.png (reward vs NFE),
    record.json; for video models also best.mp4 (best.gif without imageio-ffmpeg), whose first
    frame is best.png; each written atomically."""
    from .io import atomic_write_json, image_grid, plot_reward_vs_nfe, save_image

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    if out.best is not None:
        paths["best"] = save_image(out.best.image, out_dir / "best.png", upscale_to=256)
        if getattr(out.best, "video", None) is not None:
            from .video_io import export_video

            paths["video"] = export_video(out.best.video, out_dir / "best.mp4", fps=fps, min_size=256)
        grid = image_grid(out.images)
        paths["population"] = save_image(grid, out_dir / "population.png", upscale_to=512)
        paths["plot"] = plot_reward_vs_nfe({label: out.history}, out_dir / "rewards.png",
                                           title=f"{label}: best reward {out.best.reward:.4g}")
    paths["record"] = atomic_write_json(out_dir / "record.json", out.to_record())
    return paths


def cmd_generate(args) -> int:
    from . import SearchPipeline

    t0 = time.perf_counter()
    pipe = load_model(args.model, args.device)
    reward_name = args.reward or default_reward_name(args.model)
    reward = load_reward(reward_name, args.reward_checkpoint, args.device)
    method = build_method(args.method, args.population)
    search = SearchPipeline.from_pipe(pipe, reward=reward, method=method, max_batch_size=args.max_batch_size,
                                      eta=args.eta)
    budget = default_nfe_budget(args, search)
    prompt = args.prompt if args.prompt is not None else (
        "3" if reward_name in ("digits", "moving-digits") else "a photo of a cat")
    video_kwargs = {k: v for k, v in (("num_frames", getattr(args, "num_frames", None)),
                                      ("num_segments", getattr(args, "num_segments", None))) if v is not None}
    out = search(prompt, seed=args.seed, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                 nfe_budget=budget, progress=not args.quiet, **video_kwargs)
    paths = write_outputs(out, Path(args.out), args.method, fps=getattr(args, "fps", 8.0))
    s = out.stats
    status = "complete" if out.complete else "interrupted (best so far kept)"
    print(f"{args.method}: best reward {out.best.reward if out.best else float('nan'):.4f} | NFE {s.nfe}"
          f"{'' if s.nfe_budget is None else f'/{s.nfe_budget}'} | {s.reward_calls} reward calls | "
          f"{time.perf_counter() - t0:.1f}s | {status}")
    for k, p in paths.items():
        print(f"  {k:10s} {p}")
    return 0 if out.complete else 130


def add_search_args(g, device: str = "cpu") -> None:
    """The model/method/reward/budget flags shared by ``generate`` and ``batch``."""
    g.add_argument("--model", default=None, help="local diffusers folder, or var-digits (the bundled next-scale model; "
                   "use with --method tts-var or best-of-n) (default: the bundled digits model)")
    g.add_argument("--method", default="evosearch", choices=METHOD_CHOICES)
    g.add_argument("--nfe-budget", type=int, default=None,
                   help="denoiser evaluations to spend (default: 32 trajectories' worth)")
    g.add_argument("--population", type=int, default=None,
                   help="best-of-n: n; paths: paths kept (width 4); particles: particles (default: from the budget)")
    g.add_argument("--steps", type=int, default=None, help="num_inference_steps (default: the model's)")
    g.add_argument("--guidance-scale", type=float, default=None)
    g.add_argument("--eta", type=float, default=1.0, help="sampler noise level in [0, 1]")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--reward", default=None, metavar="REWARD",
                   help=f"one of {', '.join(REWARD_CHOICES)}, or module:function naming an importable Reward or "
                        "callable fn(images, prompts) -> scores (default: digits for the bundled model, clip otherwise)")
    g.add_argument("--reward-checkpoint", default=None, help="local checkpoint for the reward")
    g.add_argument("--max-batch-size", type=int, default=16)
    g.add_argument("--device", default=device, help="torch device (default: %(default)s)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def make_parser() -> argparse.ArgumentParser:
    from .batch import add_batch_parser

    parser = argparse.ArgumentParser(prog="evosearch", description="Test-time search for diffusers generators")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="search for the best sample of one prompt")
    g.add_argument("--prompt", default=None, help="prompt; for the bundled model the digit to draw (default 3)")
    add_search_args(g)
    g.add_argument("--out", default="evosearch-out")
    g.add_argument("--num-frames", type=int, default=None, help="video models: frames (default: the model's)")
    g.add_argument("--num-segments", type=int, default=None,
                   help="segment models (moving-digits): segments per video (default: the model's)")
    g.add_argument("--fps", type=float, default=8.0, help="video models: frames per second of best.mp4/.gif")
    g.set_defaults(func=cmd_generate)
    add_batch_parser(sub)
    from .apps.gradio_app import add_parser as add_app_parser

    add_app_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:  # bad hyperparameters: a clear one-line error, not a traceback
        print(f"evosearch: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
