"""The Gradio app: test-time search in the browser.

Launch it with ``evosearch app`` (``pip install "evosearch[app]"``), or from Python::

    from evosearch.apps.gradio_app import build_app, launch
    demo = build_app(max_nfe_budget=2000, max_population=64, device="cpu")
    launch(demo, server_name="127.0.0.1", server_port=7860)

The page offers the bundled models, the search methods and the rewards of
:mod:`evosearch.registry`; for the chosen model only the options that can run (methods it
supports, rewards for its kind of sample, rewards whose weights are here), the others listed
with the reason. Run streams every scored wave of candidates and the progress after every
micro-batch; the result puts a plain sample beside the searched one with the world's judge
verdict and any warning ("reward hacking suspected"), the reward-vs-NFE plot, the final
population and the JSON record. Cancel returns the best so far, marked incomplete.

A refused request (a bad value, a server limit) is one line on the page and one line in the
server log, never a traceback. The app runs offline: no analytics, ``HF_HUB_OFFLINE=1``
unless set otherwise, no share link, no server-side rendering, system fonts.

Modules: :mod:`.catalog` (what is offered, and why not), :mod:`.request` (checking a request),
:mod:`.runner` (running it, streaming), :mod:`.views` (files and HTML), :mod:`.page` (the
layout, :func:`build_app`, :func:`launch`), :mod:`.args` (the CLI flags).
"""

from .args import DEFAULT_MAX_NFE_BUDGET, DEFAULT_MAX_POPULATION, add_app_arguments, add_parser, cmd_app

__all__ = ["build_app", "launch", "add_app_arguments", "add_parser", "cmd_app", "check_device",
           "DEFAULT_MAX_NFE_BUDGET", "DEFAULT_MAX_POPULATION"]


def __getattr__(name: str):
    """The page loads torch and the registry: only when it is asked for (the CLI's flags do not need it)."""
    if name in ("build_app", "launch", "check_device"):
        from . import page

        return getattr(page, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
