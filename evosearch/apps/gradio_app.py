"""Gradio demo app: test-time search in the browser.

Launch it with ``evosearch app`` (``pip install "evosearch[app]"``), or from Python::

    from evosearch.apps.gradio_app import build_app, launch
    demo = build_app(max_nfe_budget=2000, max_population=64, concurrency_limit=1)
    launch(demo, server_name="127.0.0.1", server_port=7860)

The page takes a model (the bundled ``digits`` model or a local diffusers folder), a
prompt, a search method (every method of the CLI) with its main parameters, an NFE
budget, steps, seed and a reward (one, or a weighted ensemble of several). While the
search runs it shows the generation and NFE spent, each generation's population, the
reward-vs-NFE plot and the best sample so far; at the end the JSON record of the run
is offered as a download. **Cancel** asks the running search to stop: it returns the
best sample found so far, marked incomplete.

Per-request limits (``max_nfe_budget``, ``max_population``) are set at launch; a request
over a limit is refused with an error that names the parameter. Requests are queued and
at most ``concurrency_limit`` run at once.

The app runs offline: analytics off, ``HF_HUB_OFFLINE=1`` unless set otherwise, no share
link, no server-side rendering, system fonts.

It uses only evosearch's public API (``SearchPipeline``, the search methods, the rewards)
and the CLI's helpers that load models and rewards.
"""

import inspect
import math
import os
import queue
import shutil
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

__all__ = ["build_app", "launch", "add_parser", "cmd_app", "DEFAULT_MAX_NFE_BUDGET", "DEFAULT_MAX_POPULATION"]

DEFAULT_MAX_NFE_BUDGET = 2000
DEFAULT_MAX_POPULATION = 64
DEFAULT_PROMPT = "3"
GALLERY_PX = 96  # population thumbnails are enlarged (nearest) to about this size
BEST_PX = 256

POPULATION_HELP = ("best-of-n: n samples; paths: paths kept (width 4); particles: particles; "
                   "zero-order: neighbours per iteration; evosearch: 0 (sized from the budget). "
                   "0: from the NFE budget.")

_PLOT_LOCK = threading.Lock()  # matplotlib's pyplot state is global
_DONE = object()


def _offline_env() -> None:
    """No analytics and no hub downloads unless the user's environment says otherwise (set
    before gradio / huggingface_hub are imported, which read them once)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _gradio():
    _offline_env()
    try:
        import gradio as gr
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('the Gradio app needs gradio: pip install "evosearch[app]"') from e
    return gr


# ----------------------------------------------------------------------------- settings


@dataclass
class RunSettings:
    """One validated request."""

    model: str
    prompt: str
    method: str
    population: int | None
    nfe_budget: int
    steps: int | None
    seed: int
    rewards: list[str]
    weights: list[float]
    guidance_scale: float | None
    eta: float
    mutation_rate: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _as_int(name: str, value, *, allow_none: bool = False, minimum: int | None = None) -> int | None:
    gr = _gradio()
    if value is None or (isinstance(value, str) and not value.strip()):
        if allow_none:
            return None
        raise gr.Error(f"{name}: a value is required")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name}: expected an integer, got {value!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise gr.Error(f"{name}: expected an integer, got {value!r}")
    v = int(f)
    if minimum is not None and v < minimum:
        raise gr.Error(f"{name}: must be at least {minimum}, got {v}")
    return v


def _as_float(name: str, value, *, allow_none: bool = False, lo: float | None = None, hi: float | None = None):
    gr = _gradio()
    if value is None or (isinstance(value, str) and not value.strip()):
        if allow_none:
            return None
        raise gr.Error(f"{name}: a value is required")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(f) or (lo is not None and f < lo) or (hi is not None and f > hi):
        rng = f" in [{lo}, {hi}]" if lo is not None and hi is not None else ""
        raise gr.Error(f"{name}: expected a finite number{rng}, got {value!r}")
    return f


def _parse_weights(text, n: int) -> list[float]:
    gr = _gradio()
    if text is None or not str(text).strip():
        return [1.0] * n
    parts = [p for p in str(text).replace(";", ",").replace(" ", ",").split(",") if p]
    try:
        w = [float(p) for p in parts]
    except ValueError:
        raise gr.Error(f"weights: expected numbers separated by commas (one per selected reward), got {text!r}") from None
    if len(w) != n:
        raise gr.Error(f"weights: expected {n} weight(s), one per selected reward, got {len(w)} ({text!r})")
    if any(not math.isfinite(x) or x < 0 for x in w) or not any(x > 0 for x in w):
        raise gr.Error(f"weights: must be finite, non-negative and not all 0, got {text!r}")
    return w


def largest_population(method, plan) -> int | None:
    """The largest number of candidates one generation/wave of ``method`` holds under ``plan``
    (a :class:`~evosearch.core.Plan`); None if unknown."""
    d = plan.details
    sizes = {"best-of-n": lambda: d["n"], "evosearch": lambda: max(d["population_schedule"]),
             "zero-order": lambda: max(d["neighbors"], default=0) + 1, "particles": lambda: d["n_particles"],
             "paths": lambda: max(d["n_start"], d["n_keep"] * d["width"]), "tts-var": lambda: max(d["batch_sizes"]),
             "tree-of-frames": lambda: max(d["nodes"])}
    size = sizes.get(plan.method)
    return None if size is None else int(size())


# ----------------------------------------------------------------------------- the app


class SearchApp:
    """The state behind the page: loaded models and rewards, running requests, limits."""

    def __init__(self, *, max_nfe_budget: int = DEFAULT_MAX_NFE_BUDGET, max_population: int = DEFAULT_MAX_POPULATION,
                 device: str = "cpu", max_batch_size: int = 16,
                 models: Mapping[str, Callable[[str], Any]] | None = None,
                 rewards: Mapping[str, Callable[[str], Any]] | None = None,
                 allow_local_models: bool = True, work_dir: str | os.PathLike | None = None, keep_runs: int = 64):
        from evosearch.cli import REWARD_CHOICES, load_model, load_reward

        if not isinstance(max_nfe_budget, int) or max_nfe_budget < 1:
            raise ValueError(f"max_nfe_budget: must be a positive integer, got {max_nfe_budget!r}")
        if not isinstance(max_population, int) or max_population < 1:
            raise ValueError(f"max_population: must be a positive integer, got {max_population!r}")
        self.max_nfe_budget = max_nfe_budget
        self.max_population = max_population
        self.device = device
        self.max_batch_size = max_batch_size
        self.allow_local_models = allow_local_models
        self.models = dict(models) if models is not None else {"digits": lambda dev: load_model("digits", dev)}
        if not self.models:
            raise ValueError("models: expected at least one model loader")
        self.rewards = (dict(rewards) if rewards is not None
                        else {name: (lambda dev, _n=name: load_reward(_n, None, dev)) for name in REWARD_CHOICES})
        if not self.rewards:
            raise ValueError("rewards: expected at least one reward loader")
        self._cache: dict[tuple[str, str], Any] = {}
        self._load_lock = threading.Lock()
        self._runs_lock = threading.Lock()
        self._stops: dict[str, set[threading.Event]] = {}
        base = Path(work_dir) if work_dir is not None else Path(tempfile.gettempdir()) / "evosearch-app"
        base.mkdir(parents=True, exist_ok=True)
        self.work_dir = base
        self._run_dirs: deque[Path] = deque()
        self.keep_runs = keep_runs
        self.update_interval = 0.4  # seconds between live updates of the page

    # -- loading ------------------------------------------------------------------
    def _load(self, kind: str, name: str, loader: Callable[[str], Any]):
        gr = _gradio()
        with self._load_lock:
            key = (kind, name)
            if key not in self._cache:
                try:
                    self._cache[key] = loader(self.device)
                except SystemExit as e:  # the CLI helpers exit with a one-line message
                    raise gr.Error(str(e)) from None
                except (FileNotFoundError, ValueError, OSError, ImportError) as e:
                    raise gr.Error(f"{kind}: could not load {name!r}: {e}") from None
            return self._cache[key]

    def get_model(self, name: str):
        gr = _gradio()
        name = (name or "").strip()
        if name in self.models:
            return self._load("model", name, self.models[name])
        if not name:
            raise gr.Error(f"model: choose one of {', '.join(self.models)} or give a local diffusers folder")
        if not self.allow_local_models:
            raise gr.Error(f"model: {name!r} is not available on this server; allowed: {', '.join(self.models)}")
        from evosearch.cli import load_model

        return self._load("model", name, lambda dev: load_model(name, dev))

    def get_reward(self, names: Sequence[str], weights: Sequence[float]):
        from evosearch.rewards import Ensemble

        loaded = [self._load("reward", n, self.rewards[n]) for n in names]
        if len(loaded) == 1:
            return loaded[0]
        return Ensemble(list(zip(loaded, weights)))

    # -- validation ---------------------------------------------------------------
    def validate(self, model, prompt, method, population, nfe_budget, steps, seed, rewards, weights,
                 guidance_scale, eta, mutation_rate) -> RunSettings:
        gr = _gradio()
        from evosearch.cli import METHOD_CHOICES

        if method not in METHOD_CHOICES:
            raise gr.Error(f"method: unknown method {method!r}; allowed: {', '.join(METHOD_CHOICES)}")
        prompt = "" if prompt is None else str(prompt).strip()
        if not prompt:
            raise gr.Error("prompt: enter a prompt (for the digits model, the digit to draw, e.g. 3)")
        budget = _as_int("nfe_budget", nfe_budget, minimum=1)
        if budget > self.max_nfe_budget:
            raise gr.Error(f"nfe_budget: {budget} exceeds this server's limit max_nfe_budget={self.max_nfe_budget}")
        # 0 or empty means "auto" (the browser sends 0 for an empty number box)
        pop = _as_int("population", population, allow_none=True, minimum=0) or None
        if pop is not None and pop > self.max_population:
            raise gr.Error(f"population: {pop} exceeds this server's limit max_population={self.max_population}")
        if pop is not None and method == "evosearch":
            raise gr.Error("population: evosearch sizes its population schedule from nfe_budget; "
                           "leave population at 0 (auto) or lower nfe_budget")
        steps = _as_int("steps", steps, allow_none=True, minimum=0) or None
        seed = _as_int("seed", seed, minimum=0)
        if isinstance(rewards, str):
            rewards = [rewards]
        rewards = [r for r in (rewards or []) if r]
        if not rewards:
            raise gr.Error(f"reward: select at least one of {', '.join(self.rewards)}")
        unknown = [r for r in rewards if r not in self.rewards]
        if unknown:
            raise gr.Error(f"reward: unknown reward(s) {unknown}; allowed: {', '.join(self.rewards)}")
        w = _parse_weights(weights, len(rewards))
        guidance = _as_float("guidance_scale", guidance_scale, allow_none=True, lo=0.0, hi=100.0) or None
        eta = _as_float("eta", 1.0 if eta is None else eta, lo=0.0, hi=1.0)
        rate = _as_float("mutation_rate", 0.2 if mutation_rate is None else mutation_rate, lo=1e-6, hi=1.0)
        return RunSettings(model=str(model or "").strip(), prompt=prompt, method=method, population=pop,
                           nfe_budget=budget, steps=steps, seed=seed, rewards=rewards, weights=w,
                           guidance_scale=guidance, eta=eta, mutation_rate=rate)

    def make_method(self, s: RunSettings):
        from evosearch import EvoSearch, ZeroOrderSearch
        from evosearch.cli import build_method

        if s.method == "evosearch":
            return EvoSearch(mutation_rate=s.mutation_rate)
        if s.method == "zero-order" and s.population is not None:
            return ZeroOrderSearch(n_neighbors=s.population)
        return build_method(s.method, s.population)

    # -- cancel -------------------------------------------------------------------
    def _register(self, session: str, ev: threading.Event) -> None:
        with self._runs_lock:
            self._stops.setdefault(session, set()).add(ev)

    def _unregister(self, session: str, ev: threading.Event) -> None:
        with self._runs_lock:
            evs = self._stops.get(session)
            if evs is not None:
                evs.discard(ev)
                if not evs:
                    del self._stops[session]

    def cancel(self, session: str) -> int:
        """Ask every running search of ``session`` to stop; returns how many were running."""
        with self._runs_lock:
            evs = list(self._stops.get(session, ()))
        for ev in evs:
            ev.set()
        return len(evs)

    # -- outputs ------------------------------------------------------------------
    def _new_run_dir(self) -> Path:
        d = Path(tempfile.mkdtemp(prefix="run-", dir=self.work_dir))
        with self._runs_lock:
            self._run_dirs.append(d)
            while len(self._run_dirs) > self.keep_runs:
                shutil.rmtree(self._run_dirs.popleft(), ignore_errors=True)
        return d

    @staticmethod
    def _enlarge(img, target: int):
        from PIL import Image

        if max(img.size) >= target:
            return img
        k = max(1, target // max(img.size))
        return img.resize((img.width * k, img.height * k), Image.NEAREST)

    @staticmethod
    def _to_pil(images) -> list:
        """(N, 3, H, W) float tensor in [0, 1] (or uint8, or a list of PIL images) -> PIL images."""
        if isinstance(images, list):
            return images
        import numpy as np
        import torch
        from PIL import Image

        x = images.detach().cpu()
        if x.dtype != torch.uint8:
            x = x.float().clamp(0, 1).mul(255).round().to(torch.uint8)
        arr = x.permute(0, 2, 3, 1).numpy().astype(np.uint8)
        return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]

    def _save(self, img, path: Path, target: int) -> str:
        # Files, not PIL objects, go to Gradio: it caches files by content without rewriting
        # them, while PIL outputs are re-encoded over the same cache file (a race for identical
        # images, e.g. EvoSearch's elites, while a browser downloads them).
        from evosearch.io import save_image

        return str(save_image(img, path, upscale_to=target))

    def _gallery(self, pil: list, rewards, run_dir: Path, tag: str, captions: list[str] | None = None) -> list:
        order = sorted(range(len(pil)), key=lambda k: -float(rewards[k]))
        out = []
        for rank, k in enumerate(order):
            caption = captions[k] if captions is not None else f"#{k} · reward {float(rewards[k]):.4g}"
            out.append((self._save(pil[k], run_dir / f"{tag}_{rank:03d}.png", GALLERY_PX), caption))
        return out

    def _plot(self, history: list[dict], path: Path, label: str, title: str) -> str | None:
        from evosearch.io import plot_reward_vs_nfe

        entries = [h for h in history if h.get("rewards") and h.get("best_reward") is not None]
        if not entries:
            return None
        with _PLOT_LOCK:
            return str(plot_reward_vs_nfe({label: entries}, path, title=title))

    # -- the run ------------------------------------------------------------------
    def run(self, model, prompt, method, population, nfe_budget, steps, seed, rewards, weights, guidance_scale, eta,
            mutation_rate, request=None):
        """Generator behind the Run button: yields (status, best image, gallery, plot, record file)."""
        from evosearch import SearchPipeline
        from evosearch.io import atomic_write_json

        gr = _gradio()
        s = self.validate(model, prompt, method, population, nfe_budget, steps, seed, rewards, weights,
                          guidance_scale, eta, mutation_rate)
        yield (f"Loading model **{s.model or '?'}** and reward **{' + '.join(s.rewards)}** …",
               None, [], None, None)
        pipe = self.get_model(s.model)
        reward = self.get_reward(s.rewards, s.weights)
        search_method = self.make_method(s)
        try:
            search = SearchPipeline.from_pipe(pipe, reward=reward, method=search_method,
                                              max_batch_size=self.max_batch_size, eta=s.eta)
            num_steps = s.steps or int(search.stepper.default_num_inference_steps)
            plan = search_method.plan(s.nfe_budget, num_steps)
        except (ValueError, TypeError) as e:
            raise gr.Error(str(e)) from None
        biggest = largest_population(search_method, plan)
        if biggest is not None and biggest > self.max_population:
            raise gr.Error(f"population: {s.method} would hold {biggest} candidates at once with "
                           f"nfe_budget={s.nfe_budget} and {num_steps} steps; this server's limit is "
                           f"max_population={self.max_population} (lower nfe_budget or set population)")

        run_dir = self._new_run_dir()
        events: queue.Queue = queue.Queue()
        stop = threading.Event()
        session = getattr(request, "session_hash", None) or f"anon-{id(stop)}"
        result: dict = {}

        def work():
            try:
                result["out"] = search(s.prompt, seed=s.seed, num_inference_steps=s.steps,
                                       guidance_scale=s.guidance_scale, nfe_budget=s.nfe_budget,
                                       callback=events.put, stop=stop.is_set, progress=False)
            except BaseException as e:  # reported to the page below
                result["error"] = e
            finally:
                events.put(_DONE)

        label = s.method
        history: list[dict] = []
        gallery: list = []
        best_path = plot_path = None
        best_pil, best_reward = None, -math.inf
        pending = None  # the latest generation not shown yet
        generation, nfe, shown = None, 0, 0
        t0 = time.perf_counter()
        self._register(session, stop)
        worker = threading.Thread(target=work, name="evosearch-app-run", daemon=True)
        worker.start()
        try:
            done = False
            last_yield = 0.0
            while not done:
                try:
                    batch = [events.get(timeout=self.update_interval)]
                except queue.Empty:
                    batch = []
                while True:  # drain whatever arrived meanwhile
                    try:
                        batch.append(events.get_nowait())
                    except queue.Empty:
                        break
                for ev in batch:
                    if ev is _DONE:
                        done = True
                        continue
                    nfe = max(nfe, int(ev.get("nfe") or 0))
                    if ev.get("type") in ("generation", "preview"):
                        history.append(ev.entry.to_dict())
                    if ev.get("type") == "generation":
                        rewards_g = [float(r) for r in ev["rewards"]]
                        top = max(range(len(rewards_g)), key=rewards_g.__getitem__)
                        if rewards_g[top] > best_reward:
                            best_reward = rewards_g[top]
                            best_pil = self._to_pil(ev["images"][top:top + 1])[0]
                            best_path = None
                        pending = ev
                if done or time.perf_counter() - last_yield < self.update_interval:
                    continue
                if pending is not None:
                    shown += 1
                    generation = pending.get("generation")
                    gallery = self._gallery(self._to_pil(pending["images"]), pending["rewards"], run_dir,
                                            f"live{shown:04d}")
                    pending = None
                    plot_path = self._plot(history, run_dir / f"rewards_live{shown:04d}.png", label,
                                           f"{label}: reward vs NFE (running)") or plot_path
                    if best_pil is not None and best_path is None:
                        best_path = self._save(best_pil, run_dir / f"best_live{shown:04d}.png", BEST_PX)
                last_yield = time.perf_counter()
                status = (f"**Running** {s.method} · generation {'–' if generation is None else generation} · "
                          f"NFE {nfe}/{s.nfe_budget} · best reward "
                          f"{'–' if best_pil is None else f'{best_reward:.4g}'} · {time.perf_counter() - t0:.1f}s")
                yield status, best_path, gallery, plot_path, None
        finally:
            stop.set()  # the page went away or Gradio cancelled the event: stop the worker too
            self._unregister(session, stop)
        worker.join()
        if "error" in result:
            e = result["error"]
            if isinstance(e, (ValueError, TypeError)):
                raise gr.Error(str(e))
            raise gr.Error(f"search failed: {type(e).__name__}: {e}")
        out = result["out"]
        record = out.to_record()
        record["app"] = s.to_dict()
        rec_path = str(atomic_write_json(run_dir / "record.json", record))
        st = out.stats
        if out.best is None:
            status = (f"**Cancelled before any sample was scored** (incomplete) · NFE {st.nfe}/{s.nfe_budget}")
            yield status, None, [], None, rec_path
            return
        captions = [f"{'best · ' if k == 0 else ''}reward {r:.4g}" for k, r in enumerate(out.rewards)]
        final_gallery = self._gallery(list(out.images), out.rewards, run_dir, "final", captions)
        best_path = self._save(out.best.image, run_dir / "best.png", BEST_PX)
        plot_path = self._plot(out.history, run_dir / "rewards.png", label,
                               f"{label}: best reward {out.best.reward:.4g}" + ("" if out.complete else " (incomplete)"))
        head = "**Done** (complete)" if out.complete else "**Cancelled: showing the best so far (incomplete)**"
        status = (f"{head} · {s.method} · best reward {out.best.reward:.4g} · NFE {st.nfe}/{s.nfe_budget} · "
                  f"{st.reward_calls} reward calls · {st.seconds.get('total', 0.0):.1f}s")
        yield status, best_path, final_gallery, plot_path, rec_path


# ----------------------------------------------------------------------------- UI


def _theme():
    gr = _gradio()
    system = ["ui-sans-serif", "system-ui", "sans-serif"]
    mono = ["ui-monospace", "monospace"]
    return gr.themes.Default(font=system, font_mono=mono)  # no web fonts: the app works offline


def build_app(*, max_nfe_budget: int = DEFAULT_MAX_NFE_BUDGET, max_population: int = DEFAULT_MAX_POPULATION,
              concurrency_limit: int = 1, max_queue_size: int | None = 32, device: str = "cpu",
              max_batch_size: int = 16, models: Mapping[str, Callable[[str], Any]] | None = None,
              rewards: Mapping[str, Callable[[str], Any]] | None = None, default_model: str | None = None,
              default_reward: str | None = None, default_nfe_budget: int | None = None,
              allow_local_models: bool = True, work_dir: str | os.PathLike | None = None):
    """The Gradio ``Blocks`` of the app, with its queue configured.

    Args:
        max_nfe_budget: the largest NFE budget one request may ask for.
        max_population: the largest population (candidates held at once) one request may use,
            whether given explicitly or sized by the method from the budget.
        concurrency_limit: searches running at once; others wait in the queue.
        max_queue_size: requests waiting at most (None: unbounded).
        device, max_batch_size: where models run and the micro-batch size.
        models: name -> ``loader(device)`` returning a diffusers pipeline (default: the
            bundled ``digits`` model). Any other value typed into the model box is loaded
            as a local diffusers folder unless ``allow_local_models`` is False.
        rewards: name -> ``loader(device)`` returning a Reward (default: digits, clip, aesthetic
            through the CLI's loader).
    """
    gr = _gradio()
    from evosearch.cli import METHOD_CHOICES

    if not isinstance(concurrency_limit, int) or concurrency_limit < 1:
        raise ValueError(f"concurrency_limit: must be a positive integer, got {concurrency_limit!r}")
    app = SearchApp(max_nfe_budget=max_nfe_budget, max_population=max_population, device=device,
                    max_batch_size=max_batch_size, models=models, rewards=rewards,
                    allow_local_models=allow_local_models, work_dir=work_dir)
    model_names = list(app.models)
    reward_names = list(app.rewards)
    default_model = default_model or model_names[0]
    default_reward = default_reward or ("digits" if "digits" in reward_names else reward_names[0])
    budget0 = default_nfe_budget or min(max_nfe_budget, 400)

    def run(model, prompt, method, population, nfe_budget, steps, seed, rewards_sel, weights, guidance, eta,
            mutation_rate, request: gr.Request):
        yield from app.run(model, prompt, method, population, nfe_budget, steps, seed, rewards_sel, weights,
                           guidance, eta, mutation_rate, request=request)

    def cancel(request: gr.Request):
        n = app.cancel(getattr(request, "session_hash", None) or "")
        if n:
            gr.Info("Stopping: the best sample found so far will be shown, marked incomplete.")
        else:
            gr.Info("No search of yours is running.")

    with gr.Blocks(title="evosearch", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# evosearch — test-time search\nSpend extra denoising compute (NFE) to find a sample "
                    "with a higher reward. The bundled **digits** model draws the digit in the prompt.")
        with gr.Row():
            with gr.Column(scale=1):
                model_in = gr.Dropdown(model_names, value=default_model, allow_custom_value=allow_local_models,
                                       label="model", info="bundled model, or a local diffusers folder path"
                                       if allow_local_models else "model")
                prompt_in = gr.Textbox(value=DEFAULT_PROMPT, label="prompt / target",
                                       info="digits model: the digit to draw (e.g. 3)")
                method_in = gr.Dropdown(list(METHOD_CHOICES), value="evosearch", label="method")
                population_in = gr.Number(value=0, precision=0, minimum=0, label="population (0: auto)",
                                          info=POPULATION_HELP + f" At most {max_population}.")
                budget_in = gr.Number(value=budget0, precision=0, label="NFE budget",
                                      info=f"denoiser evaluations to spend; at most {max_nfe_budget}")
                with gr.Row():
                    steps_in = gr.Number(value=0, precision=0, minimum=0, label="steps",
                                         info="0: the model's default")
                    seed_in = gr.Number(value=0, precision=0, label="seed")
                rewards_in = gr.CheckboxGroup(reward_names, value=[default_reward], label="reward",
                                              info="several: a rank-normalised weighted ensemble")
                weights_in = gr.Textbox(value="", label="reward weights",
                                        info="comma-separated, one per selected reward (empty: equal)")
                with gr.Accordion("sampler and method details", open=False):
                    guidance_in = gr.Number(value=0, minimum=0, label="guidance scale", info="0: the model's default")
                    eta_in = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="eta (sampler noise)")
                    rate_in = gr.Slider(0.01, 1.0, value=0.2, step=0.01, label="evosearch mutation rate")
                with gr.Row():
                    run_btn = gr.Button("Run", variant="primary", elem_id="run-button")
                    cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel-button")
            with gr.Column(scale=2):
                status_out = gr.Markdown("Ready.", elem_id="status")
                with gr.Row():
                    best_out = gr.Image(label="best sample", type="filepath", elem_id="best-image",
                                        interactive=False, height=300)
                    plot_out = gr.Image(label="reward vs NFE", type="filepath", elem_id="reward-plot",
                                        interactive=False, height=300)
                gallery_out = gr.Gallery(label="population (latest generation, best first)", columns=8,
                                         height=320, object_fit="contain", elem_id="population",
                                         interactive=False)
                record_out = gr.File(label="JSON record", elem_id="record", interactive=False)

        inputs = [model_in, prompt_in, method_in, population_in, budget_in, steps_in, seed_in, rewards_in,
                  weights_in, guidance_in, eta_in, rate_in]
        outputs = [status_out, best_out, gallery_out, plot_out, record_out]
        run_btn.click(run, inputs, outputs, api_name="run", show_progress="minimal")
        cancel_btn.click(cancel, None, None, api_name="cancel", concurrency_limit=None, queue=True)

    demo.queue(default_concurrency_limit=concurrency_limit, max_size=max_queue_size)
    demo.evosearch_app = app  # for tests and embedding
    return demo


def launch(demo, server_name: str = "127.0.0.1", server_port: int | None = None, prevent_thread_lock: bool = False,
           **kwargs):
    """``demo.launch`` with the app's offline settings: no share link, no SSR, quiet analytics,
    system fonts. Returns what ``launch`` returns."""
    gr = _gradio()
    params = inspect.signature(gr.Blocks.launch).parameters
    opts = dict(server_name=server_name, server_port=server_port, share=False, prevent_thread_lock=prevent_thread_lock,
                show_error=True, ssr_mode=False, theme=_theme(), footer_links=["api", "settings"], quiet=True)
    opts.update(kwargs)
    opts["share"] = False
    return demo.launch(**{k: v for k, v in opts.items() if k in params})


# ----------------------------------------------------------------------------- CLI


def add_parser(subparsers) -> None:
    """Register ``evosearch app`` on the CLI's subparsers."""
    p = subparsers.add_parser("app", help='launch the Gradio demo app (needs: pip install "evosearch[app]")')
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-nfe-budget", type=int, default=DEFAULT_MAX_NFE_BUDGET, help="per-request NFE limit")
    p.add_argument("--max-population", type=int, default=DEFAULT_MAX_POPULATION, help="per-request population limit")
    p.add_argument("--concurrency", type=int, default=1, help="searches running at once (others queue)")
    p.add_argument("--max-queue", type=int, default=32, help="requests waiting at most")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--no-local-models", action="store_true", help="only the bundled model (no folder paths)")
    p.set_defaults(func=cmd_app)


def cmd_app(args) -> int:
    demo = build_app(max_nfe_budget=args.max_nfe_budget, max_population=args.max_population,
                     concurrency_limit=args.concurrency, max_queue_size=args.max_queue, device=args.device,
                     max_batch_size=args.max_batch_size, allow_local_models=not args.no_local_models)
    print(f"evosearch app on http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    launch(demo, server_name=args.host, server_port=args.port)
    return 0
