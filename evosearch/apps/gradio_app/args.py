"""``evosearch app``: the app's command-line flags, for the CLI to add to its ``app`` subcommand.

    p = subparsers.add_parser("app", help="...")
    add_app_arguments(p)
    p.set_defaults(func=cmd_app)
"""

from __future__ import annotations

import argparse

from .request import DEFAULT_MAX_NFE_BUDGET, DEFAULT_MAX_POPULATION


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _port(text: str) -> int:
    value = _positive(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 1..65535, got {value}")
    return value


def _checkpoint(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH (e.g. clip=/models/clip.pt), got {text!r}")
    return name, path


def add_app_arguments(parser: argparse.ArgumentParser) -> None:
    """The app's flags, each with its help and default."""
    d = " (default: %(default)s)"
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for every interface" + d)
    parser.add_argument("--port", type=_port, default=7860, help="port to listen on" + d)
    parser.add_argument("--device", default="cpu", help="torch device the models and rewards run on, e.g. cuda" + d)
    parser.add_argument("--max-batch-size", type=_positive, default=16,
                        help="rows per denoiser call; Cancel takes effect after each" + d)
    parser.add_argument("--max-nfe-budget", type=_positive, default=DEFAULT_MAX_NFE_BUDGET,
                        help="the largest NFE budget one request may ask for" + d)
    parser.add_argument("--max-population", type=_positive, default=DEFAULT_MAX_POPULATION,
                        help="the most candidates one request may hold at once" + d)
    parser.add_argument("--concurrency", type=_positive, default=1, help="searches running at once; others queue" + d)
    parser.add_argument("--max-queue", type=_positive, default=32, help="requests waiting at most" + d)
    parser.add_argument("--reward-checkpoint", type=_checkpoint, action="append", default=[], metavar="NAME=PATH",
                        help="a local checkpoint for a reward that would download hub weights (repeatable), "
                             "e.g. clip=/models/open_clip.pt; such a reward is then offered offline")


def cmd_app(args) -> int:
    """Build the app from parsed flags and serve it until Ctrl-C."""
    from .page import build_app, launch

    demo = build_app(max_nfe_budget=args.max_nfe_budget, max_population=args.max_population, device=args.device,
                     max_batch_size=args.max_batch_size, concurrency_limit=args.concurrency,
                     max_queue_size=args.max_queue, reward_checkpoints=dict(args.reward_checkpoint))
    print(f"evosearch app on http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    launch(demo, server_name=args.host, server_port=args.port)
    return 0


def add_parser(subparsers) -> None:
    """Register ``evosearch app`` on the CLI's subparsers (flags from :func:`add_app_arguments`)."""
    p = subparsers.add_parser("app", help='the Gradio app in the browser (needs: pip install "evosearch[app]")',
                              description="Serve the evosearch Gradio app: pick a bundled model, a prompt and a "
                                          "search method, and compare the searched sample with a plain one.")
    add_app_arguments(p)
    p.set_defaults(func=cmd_app)
