"""The page: a Gradio ``Blocks`` laid out so that Run sits beside the prompt (visible without
scrolling at 1366x768), the plain and the searched sample side by side with the judge's
verdict, the plot and the population below them; and :func:`launch` with offline settings."""

import functools
import html
import inspect
import logging
import os
from typing import Callable, Mapping

from ... import registry
from ...core.validation import ParameterError, check_int
from . import views
from .catalog import Catalog
from .request import DEFAULT_MAX_NFE_BUDGET, DEFAULT_MAX_POPULATION, DEFAULT_MAX_PROMPT_CHARS, Limits
from .runner import KEEP, SearchApp

logger = logging.getLogger("evosearch.app")

CSS = """
#es-top {align-items: flex-end}
#run-button, #cancel-button {min-height: 42px}
#population .grid-container {grid-template-columns: repeat(auto-fill, minmax(120px, 1fr)) !important}
#population .grid-wrap {padding-top: 34px}
#population .caption-label {max-width: calc(100% - 8px); white-space: normal; overflow-wrap: anywhere}
.es-status {font-size: 15px; line-height: 1.6}
.es-status progress {width: 140px; vertical-align: middle}
.es-warning {margin-top: 6px; padding: 6px 10px; border-radius: 6px; font-weight: 600;
             background: #fff3cd; color: #664d03; border: 1px solid #ffc107}
.es-error {margin-top: 6px; padding: 6px 10px; border-radius: 6px; font-weight: 600;
           background: #f8d7da; color: #842029; border: 1px solid #dc3545}
.es-verdict {font-size: 14px}
.es-note {font-size: 12px; opacity: 0.85; overflow-wrap: anywhere}
/* the record box only once there is a record (no empty box under the results) */
#record:not(:has(a)) {display: none !important}
/* toasts at the bottom right: never over Run and Cancel (top right) */
.toast-wrap {top: auto !important; bottom: var(--size-4, 16px) !important}
"""

#: example categories as the page names them
CATEGORY_LABELS = {"single_object": "one object", "colors": "colour", "two_object": "two objects",
                   "counting": "counting", "position": "position", "color_attr": "colour attribution",
                   "digits": "digit"}
#: what each bundled world's prompts may say (shown under the prompt)
DIGIT_PROMPTS = "a digit: '3', 'digit 3', 'a 7', 'draw 5', 'seven'"

POPULATION_INFO = {None: "sized from the budget", "n": "samples", "n_neighbors": "neighbours per iteration",
                   "n_keep": "paths kept", "n_particles": "particles", "roots": "tree roots"}


def _gradio():
    """gradio, imported after the offline defaults are set (it and huggingface_hub read them once)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gradio as gr
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError('the Gradio app needs gradio: pip install "evosearch[app]"') from err
    return gr


def _refuse(gr, err: Exception):
    """One line in the page and one in the server log, no traceback."""
    message = views.one_line(err)
    logger.warning("refused request: %s", message)
    return gr.Error(html.escape(message, quote=False), title="Request refused", print_exception=False, duration=5)


def _method_info(method: str) -> str:
    param = registry.POPULATION_PARAMETER.get(method)
    return f"{registry.METHOD_SUMMARIES.get(method, '')}. Population: {POPULATION_INFO.get(param, param)}."


def _left_out_note(choices) -> str:
    if not choices.left_out:
        return ""
    lines = "".join(f"<li>{html.escape(why)}</li>" for why in choices.left_out)
    return f'<details class="es-note"><summary>Not offered here ({len(choices.left_out)}), and why</summary>' \
           f"<ul>{lines}</ul></details>"


def _examples(gr, choices, **kwargs):
    several = len({c for c, _ in choices.examples}) > 1
    label = lambda c: CATEGORY_LABELS.get(c, c.replace("_", " "))  # noqa: E731
    return gr.Dataset(samples=[[p] for _, p in choices.examples], **kwargs,
                      sample_labels=[f"{label(c)} · {p}" if several else p for c, p in choices.examples])


def prompt_help(model: str) -> str:
    """What ``model``'s prompts may say, in one paragraph (the shapes grammar, a digit)."""
    if model.startswith("shapes"):
        from ...bundled.shapes.grammar import GRAMMAR_HELP

        return "Prompts: " + GRAMMAR_HELP.removeprefix("prompts of the shapes world: ")
    if model in registry.MODELS and "digit" in model:
        return f"Prompts: {DIGIT_PROMPTS}."
    return ""


def _ready(model: str) -> str:
    return views.status_html("Ready", [f"model {model}", "press Run"])


def build_app(*, max_nfe_budget: int = DEFAULT_MAX_NFE_BUDGET, max_population: int = DEFAULT_MAX_POPULATION,
              max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS, device: str = "cpu", max_batch_size: int = 16,
              concurrency_limit: int = 1, max_queue_size: int | None = 32, offline: bool | None = None,
              reward_checkpoints: Mapping[str, str] | None = None,
              extra_rewards: Mapping[str, Callable] | None = None, default_nfe_budget: int | None = None,
              work_dir=None):
    """The app's Gradio ``Blocks``, its queue configured.

    Models, methods and rewards come from :mod:`evosearch.registry`; for the chosen model the page
    offers only what can run (the others are listed with the reason). The default model is the
    registry's (``shapes``), or ``digits`` with a notice while its weights are missing.

    Args:
        max_nfe_budget: the largest NFE budget one request may ask for.
        max_population: the most candidates one request may hold at once, given or sized from the budget.
        max_prompt_chars: the longest prompt accepted.
        device: torch device the models and rewards run on.
        max_batch_size: rows per denoiser call (a stop request is honoured after each).
        concurrency_limit: searches running at once; others wait in the queue.
        max_queue_size: requests waiting at most (None: no limit).
        offline: no hub downloads, so rewards that need hub weights are not offered (None: offline when
            ``HF_HUB_OFFLINE`` is set or the hub does not answer).
        reward_checkpoints: reward name -> local checkpoint (such a reward needs no download).
        extra_rewards: name -> ``loader(device)`` returning a Reward, offered for every model.
        default_nfe_budget: the budget the page starts with (default: min(400, max_nfe_budget)).
        work_dir: where each run's files go (default: a temporary folder).
    """
    gr = _gradio()
    check_int("concurrency_limit", concurrency_limit, lo=1)
    check_int("max_batch_size", max_batch_size, lo=1)
    check_device(device)
    catalog = Catalog(offline=offline, reward_checkpoints=reward_checkpoints, extra_rewards=extra_rewards)
    app = SearchApp(catalog, Limits(max_nfe_budget, max_population, max_prompt_chars), device=device,
                    max_batch_size=max_batch_size, work_dir=work_dir)
    model0, notice = catalog.default_model()
    first = catalog.choices(model0)
    budget0 = check_int("default_nfe_budget", default_nfe_budget, lo=1, hi=max_nfe_budget, allow_none=True) \
        or min(max_nfe_budget, 400)
    # Inputs reach the app as sent (no bounds, no choice lists, no rounding in gradio): the app checks
    # every value and names the parameter, where gradio's own checks would log a traceback.
    Number = functools.partial(gr.Number, precision=None)
    Dropdown = functools.partial(gr.Dropdown, allow_custom_value=True)

    with gr.Blocks(title="evosearch", analytics_enabled=False, fill_width=True, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("**evosearch** — test-time search: spend denoiser evaluations (NFE) to find a sample the reward "
                    "likes more, next to a plain sample; the world's judge says whether it really is better.")
        if notice:
            gr.Markdown(f"ℹ️ {html.escape(notice)}", elem_id="notice")
        with gr.Row(elem_id="es-top", equal_height=False):
            model_in = Dropdown(list(catalog.models), value=model0, label="model", scale=1, min_width=150,
                                elem_id="model")
            prompt_in = gr.Textbox(value=first.default_prompt, label="prompt", max_lines=2, elem_id="prompt", scale=4,
                                   placeholder=f"e.g. {first.default_prompt}", info=prompt_help(model0) or None)
            run_btn = gr.Button("Run", variant="primary", scale=0, min_width=100, elem_id="run-button")
            cancel_btn = gr.Button("Cancel", variant="stop", scale=0, min_width=100, elem_id="cancel-button")
        examples = _examples(gr, first, label="example prompts (click one)", components=[prompt_in],
                             samples_per_page=12, elem_id="examples")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                method_in = Dropdown(list(first.methods), value=first.default_method, label="search method",
                                     info=_method_info(first.default_method), elem_id="method")
                with gr.Row():
                    budget_in = Number(value=budget0, label="NFE budget", min_width=90, elem_id="es-budget",
                                       info=f"at most {max_nfe_budget}")
                    population_in = Number(value=0, label="population", min_width=90,
                                           info=f"0: auto; at most {max_population}")
                with gr.Row():
                    seed_in = Number(value=0, label="seed", min_width=90, elem_id="seed",
                                     info="the seed used is shown here")
                    randomize_in = gr.Checkbox(value=False, label="randomize seed", min_width=90,
                                               elem_id="randomize-seed")
                rewards_in = Dropdown(list(first.rewards), value=[first.default_reward], multiselect=True,
                                      label="reward",
                                    info="several: a weighted ensemble (weights below)", elem_id="rewards")
                left_out = gr.HTML(_left_out_note(first), elem_id="left-out")
                with gr.Accordion("sampler, method and ensemble details", open=False):
                    steps_in = Number(value=0, label="steps", info="0: the model's default")
                    guidance_in = Number(value=0, label="guidance scale", info="0: the model's default")
                    eta_in = Number(value=1.0, step=0.1, label="eta (sampler noise)",
                                    info="0 to 1; 1: ancestral; EvoSearch and particles need > 0")
                    rate_in = Number(value=0.2, step=0.05, label="EvoSearch mutation rate", info="above 0, at most 1")
                    weights_in = gr.Textbox(value="", label="reward weights",
                                      info="comma-separated, one per selected reward (empty: equal)")
            with gr.Column(scale=3, min_width=600):
                status_out = gr.HTML(_ready(model0), elem_id="status")
                with gr.Row(equal_height=True):
                    plain_out = gr.Image(label="plain sample (no search)", type="filepath", interactive=False,
                                         height=250, elem_id="plain-image", buttons=["download"])
                    best_out = gr.Image(label="searched: best sample", type="filepath", interactive=False,
                                        height=250, elem_id="best-image", buttons=["download"])
                    plot_out = gr.Image(label="reward vs NFE", show_label=False, type="filepath", interactive=False,
                                        height=250, elem_id="reward-plot", buttons=["download"])
                verdict_out = gr.HTML("", elem_id="verdict")
                gallery_out = gr.Gallery(label="population (latest generation, best first)", columns=6, height=260,
                                         object_fit="contain", elem_id="population", interactive=False)
                record_out = gr.File(label="JSON record of the run", elem_id="record", interactive=False, height=60)

        def on_model(model):
            try:
                c = catalog.choices(model)
            except ParameterError as err:
                raise _refuse(gr, err) from None
            # the old model's results go: what is on screen always belongs to the chosen model
            return (gr.update(choices=list(c.methods), value=c.default_method, info=_method_info(c.default_method)),
                    gr.update(choices=list(c.rewards), value=[c.default_reward] if c.default_reward else []),
                    _examples(gr, c), _left_out_note(c),
                    gr.update(value=c.default_prompt, placeholder=f"e.g. {c.default_prompt}",
                              info=prompt_help(model) or None),
                    _ready(model), None, None, None, "", [], None)

        def page_update(update: tuple) -> tuple:
            """A runner update as gradio outputs: KEEP leaves an output as it is."""
            return tuple(gr.update() if v is KEEP else v for v in update)

        def on_method(method):
            return gr.update(info=_method_info(method)) if method in registry.METHODS else gr.update()

        def run(model, prompt, method, population, nfe_budget, steps, seed, randomize_seed, rewards, weights,
                guidance_scale, eta, mutation_rate, request: gr.Request):
            try:
                for update in app.run(model, prompt, method, population, nfe_budget, steps, seed, randomize_seed,
                                      rewards, weights, guidance_scale, eta, mutation_rate,
                                      session=getattr(request, "session_hash", None)):
                    yield page_update(update)
            except ParameterError as err:
                # the status says so (not "Loading"); the previous results stay on screen
                yield page_update((views.status_html("Refused", [], error=views.one_line(err)),
                                   *([KEEP] * 6), gr.update()))
                raise _refuse(gr, err) from None
            except Exception as err:  # a failure of ours: the traceback goes to the log, one line to the page
                logger.exception("search failed")
                raise gr.Error(html.escape(views.one_line(f"search failed: {type(err).__name__}: {err}"),
                                           quote=False), print_exception=False) from None

        def cancel(request: gr.Request):
            if app.cancel(getattr(request, "session_hash", None) or ""):
                gr.Info("Stopping: the best sample so far will be shown, marked incomplete.", duration=3)
            else:
                gr.Info("No search of yours is running.", duration=3)

        inputs = [model_in, prompt_in, method_in, population_in, budget_in, steps_in, seed_in, randomize_in,
                  rewards_in, weights_in, guidance_in, eta_in, rate_in]
        outputs = [status_out, plain_out, best_out, plot_out, verdict_out, gallery_out, record_out, seed_in]
        model_in.change(on_model, model_in, [method_in, rewards_in, examples, left_out, prompt_in, status_out,
                                             plain_out, best_out, plot_out, verdict_out, gallery_out, record_out],
                        api_visibility="private", queue=False)
        method_in.change(on_method, method_in, method_in, api_visibility="private", queue=False)
        examples.click(lambda sample: sample[0], examples, prompt_in, api_visibility="private", queue=False)
        run_btn.click(run, inputs, outputs, api_name="run", show_progress="hidden")
        prompt_in.submit(run, inputs, outputs, show_progress="hidden", api_visibility="private")
        cancel_btn.click(cancel, None, None, api_name="cancel", concurrency_limit=None)

    demo.queue(default_concurrency_limit=concurrency_limit, max_size=max_queue_size)
    demo.evosearch_app = app  # for tests and embedding
    return demo


def check_device(device) -> str:
    """``device`` if torch can use it here, else a ParameterError naming ``device``."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ParameterError(f"device: not a torch device: {views.one_line(err, 120)}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"device: {device!r}, but no CUDA device is available here (use cpu)")
    return device


def _theme(gr):
    system, mono = ["ui-sans-serif", "system-ui", "sans-serif"], ["ui-monospace", "monospace"]
    return gr.themes.Default(font=system, font_mono=mono)  # no web fonts: the page works offline


def launch(demo, server_name: str = "127.0.0.1", server_port: int | None = None, prevent_thread_lock: bool = False,
           **kwargs):
    """``demo.launch`` with the app's settings: no share link, no server-side rendering, no
    analytics, system fonts, the app's CSS, and a log line per refused request. ``kwargs`` go to
    ``Blocks.launch`` (``share`` stays False). Returns what ``launch`` returns."""
    gr = _gradio()
    if not logger.hasHandlers():  # `evosearch app`: refusals and failures on stderr, one line each
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    params = inspect.signature(gr.Blocks.launch).parameters
    opts = dict(server_name=server_name, server_port=server_port, prevent_thread_lock=prevent_thread_lock,
                show_error=True, ssr_mode=False, theme=_theme(gr), css=CSS, footer_links=["api", "settings"],
                quiet=True)
    opts.update(kwargs)
    opts["share"] = False
    return demo.launch(**{k: v for k, v in opts.items() if k in params})
