"""Command line: ``evosearch generate`` (and later subcommands)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

METHOD_CHOICES = ("evosearch", "best-of-n", "zero-order", "paths", "particles")
REWARD_CHOICES = ("digits", "clip", "aesthetic")


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
    raise ValueError(f"--method: unknown method {name!r}; allowed: {', '.join(METHOD_CHOICES)}")


def load_model(model: str | None, device: str):
    """The bundled digits pipeline (model None or "digits") or a local diffusers folder."""
    if model in (None, "digits", "bundled"):
        from .pipelines.digits import load_digits_pipeline

        return load_digits_pipeline(device=device)
    path = Path(model)
    if not path.is_dir() or not (path / "model_index.json").exists():
        raise SystemExit(f"--model: {model!r} is not a local diffusers folder (a directory with model_index.json); "
                         "omit --model for the bundled digits model")
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(str(path)).to(device)


def load_reward(name: str, checkpoint: str | None, device: str):
    if name == "digits":
        from .rewards.digits import DigitClassifierReward

        return DigitClassifierReward(path=checkpoint)
    if name == "clip":
        from .rewards.clip import CLIPScore

        return CLIPScore(pretrained=checkpoint or "openai", device=device)
    if name == "aesthetic":
        from .rewards.clip import Aesthetic

        return Aesthetic(mlp_path=checkpoint, device=device)
    raise SystemExit(f"--reward: unknown reward {name!r}; allowed: {', '.join(REWARD_CHOICES)}")


def write_outputs(out, out_dir: Path, label: str) -> dict[str, Path]:
    """best.png, population.png (grid of the final population), rewards.png (reward vs NFE),
    record.json; each written atomically."""
    from .io import atomic_write_json, image_grid, plot_reward_vs_nfe, save_image

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    if out.best is not None:
        paths["best"] = save_image(out.best.image, out_dir / "best.png", upscale_to=256)
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
    reward_name = args.reward or ("digits" if args.model in (None, "digits", "bundled") else "clip")
    reward = load_reward(reward_name, args.reward_checkpoint, args.device)
    method = build_method(args.method, args.population)
    search = SearchPipeline.from_pipe(pipe, reward=reward, method=method, max_batch_size=args.max_batch_size,
                                      eta=args.eta)
    budget = args.nfe_budget
    if budget is None and args.population is None:
        budget = 32 * (args.steps or search.stepper.default_num_inference_steps)
    prompt = args.prompt if args.prompt is not None else ("3" if reward_name == "digits" else "a photo of a cat")
    out = search(prompt, seed=args.seed, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                 nfe_budget=budget, progress=not args.quiet)
    paths = write_outputs(out, Path(args.out), args.method)
    s = out.stats
    status = "complete" if out.complete else "interrupted (best so far kept)"
    print(f"{args.method}: best reward {out.best.reward if out.best else float('nan'):.4f} | NFE {s.nfe}"
          f"{'' if s.nfe_budget is None else f'/{s.nfe_budget}'} | {s.reward_calls} reward calls | "
          f"{time.perf_counter() - t0:.1f}s | {status}")
    for k, p in paths.items():
        print(f"  {k:10s} {p}")
    return 0 if out.complete else 130


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evosearch", description="Test-time search for diffusers generators")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="search for the best sample of one prompt")
    g.add_argument("--model", default=None, help="local diffusers folder (default: the bundled digits model)")
    g.add_argument("--prompt", default=None, help="prompt; for the bundled model the digit to draw (default 3)")
    g.add_argument("--method", default="evosearch", choices=METHOD_CHOICES)
    g.add_argument("--nfe-budget", type=int, default=None,
                   help="denoiser evaluations to spend (default: 32 trajectories' worth)")
    g.add_argument("--population", type=int, default=None,
                   help="best-of-n: n; paths: paths kept (width 4); particles: particles (default: from the budget)")
    g.add_argument("--steps", type=int, default=None, help="num_inference_steps (default: the model's)")
    g.add_argument("--guidance-scale", type=float, default=None)
    g.add_argument("--eta", type=float, default=1.0, help="sampler noise level in [0, 1]")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--reward", default=None, choices=REWARD_CHOICES,
                   help="default: digits for the bundled model, clip otherwise")
    g.add_argument("--reward-checkpoint", default=None, help="local checkpoint for the reward")
    g.add_argument("--max-batch-size", type=int, default=16)
    g.add_argument("--device", default="cpu")
    g.add_argument("--out", default="evosearch-out")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=cmd_generate)
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
