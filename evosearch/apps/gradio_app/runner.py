"""The work behind the Run and Cancel buttons: load (and keep) models and rewards, check a
request before any compute, run the search on a worker thread, and turn its events into page
updates as they come — every scored wave of candidates, progress after every micro-batch.
No gradio import: refusals are ParameterErrors, the page turns them into one line."""

from __future__ import annotations

import logging
import queue
import shutil
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ... import registry
from ...core.validation import ParameterError
from ...io import atomic_write_json
from . import views
from .catalog import Catalog
from .request import Limits, RunSettings, parse_request

logger = logging.getLogger("evosearch.app")
PLAIN_SAMPLES = 8  # as many plain samples as the search keeps for the judge
_DONE = object()


@dataclass(frozen=True)
class X0Preview:
    """The denoiser's x0 estimates of the latest micro-batch, decoded (no NFE): what the page shows
    while the first generation denoises, before any sample is scored."""

    images: Any
    step: int
    steps: int
    nfe: int
    type: str = "x0"
    planned_nfe: int | None = None


class X0Previewer:
    """A search callback's helper: after a micro-batch, at most every ``interval`` seconds (and with
    decoding at most a fifth of the time: slow decoders, such as video VAEs, preview less often), only
    until the first sample is scored, decodes the Stepper's ``last_x0`` (up to ``rows`` of it) and
    hands it to ``put``. A preview that fails to decode is skipped: it never stops the search."""

    def __init__(self, stepper, put, interval: float, rows: int = PLAIN_SAMPLES):
        self.stepper, self.put, self.interval, self.rows = stepper, put, interval, rows
        self.seen = getattr(stepper, "last_x0", None)  # a previous run's: not this one's
        self.scored, self.next = False, 0.0

    def __call__(self, event) -> None:
        self.put(event)
        self.scored = self.scored or event.type in ("generation", "preview")
        if self.scored or event.type != "progress" or time.perf_counter() < self.next:
            return
        held = getattr(self.stepper, "last_x0", None)
        if held is None or held is self.seen:
            return
        self.seen, t0 = held, time.perf_counter()
        step, x0 = held
        try:
            images = self.stepper.finish(x0[: self.rows])
        except Exception as err:  # a preview is a courtesy: never the search's end
            logger.warning("x0 preview skipped: %s", views.one_line(f"{type(err).__name__}: {err}"))
            self.scored = True
            return
        now = time.perf_counter()
        self.next = now + max(self.interval, 4 * (now - t0))
        self.put(X0Preview(images, int(step), int(self.stepper.num_steps), int(event.nfe)))
#: an output the page leaves as it is (the previous run's results stay until a new run is accepted)
KEEP = object()


class Live:
    """What the page knows of a running search, from its events."""

    def __init__(self, judge, prompt):
        self.judge, self.prompt = judge, prompt
        self.nfe, self.planned, self.history = 0, None, []
        self.generation = None
        self.current: list[tuple] = []  # (sample, reward, verdict) of the latest generation
        self.best = self.plain = None  # (sample, reward, verdict)
        self.x0: X0Preview | None = None  # the latest x0 previews, until a sample is scored
        self.plain_rewards: list[float] = []
        self.changed = False  # samples or plot changed since the last page update

    def verdicts(self, samples) -> list:
        if self.judge is None:
            return [None] * len(samples)
        try:
            return list(self.judge(samples, self.prompt))
        except Exception:  # a broken judge costs the marks, never the search
            return [None] * len(samples)

    def add(self, event) -> None:
        self.nfe = max(self.nfe, int(event.nfe))
        self.planned = event.planned_nfe or self.planned
        if event.type == "x0":
            self.x0, self.changed = event, self.best is None
            return
        if event.type not in ("generation", "preview"):
            return
        self.history.append(event.entry)
        self.changed = True
        if event.type != "generation":
            return
        entry, samples = event.entry, event.images.float().cpu()
        scored = list(zip(samples, entry.rewards, self.verdicts(samples)))
        self.current = self.current + scored if entry.generation == self.generation else scored
        self.generation = entry.generation
        top = max(scored, key=lambda c: c[1])
        if self.best is None or top[1] > self.best[1]:
            self.best = top
        if entry.generation == 0 and len(self.plain_rewards) < PLAIN_SAMPLES:
            self.plain = self.plain or scored[0]
            self.plain_rewards += [c[1] for c in scored[: PLAIN_SAMPLES - len(self.plain_rewards)]]

    @property
    def plain_mean(self) -> float | None:
        return float(np.mean(self.plain_rewards)) if self.plain_rewards else None


class SearchApp:
    """Loaded models and rewards, running requests (for Cancel), output folders.

    Args:
        catalog: what is offered (:class:`~.catalog.Catalog`).
        limits: per-request limits (:class:`~.request.Limits`).
        device, max_batch_size: where models run, and rows per denoiser call.
        work_dir: where each run's files go (default: a temporary folder); the newest
            ``keep_runs`` runs are kept.
    """

    update_interval = 0.4  # seconds between page updates while a search runs

    def __init__(self, catalog: Catalog, limits: Limits, device: str = "cpu", max_batch_size: int = 16,
                 work_dir=None, keep_runs: int = 64):
        self.catalog, self.limits, self.device, self.max_batch_size = catalog, limits, device, max_batch_size
        self._cache: dict = {}
        self._load_lock = threading.Lock()
        self._runs_lock = threading.Lock()
        self._stops: dict[str, set[threading.Event]] = {}
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.gettempdir()) / "evosearch-app"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._run_dirs: deque[Path] = deque()
        self.keep_runs = keep_runs

    # -- loading -------------------------------------------------------------------------
    def _load(self, kind: str, name: str, loader):
        with self._load_lock:
            if (kind, name) not in self._cache:
                try:
                    self._cache[kind, name] = loader()
                except (OSError, ValueError, TypeError, ImportError, RuntimeError) as err:
                    raise ParameterError(f"{kind}: could not load {name}: {views.one_line(err, 200)}") from None
            return self._cache[kind, name]

    def loaded(self, s: RunSettings) -> bool:
        """Whether the model and rewards of ``s`` are loaded already (no "Loading" status needed)."""
        with self._load_lock:
            return ("model", s.model) in self._cache and all(("reward", n) in self._cache for n in s.rewards)

    def load_model(self, name: str):
        return self._load("model", name, lambda: registry.MODELS[name].load(device=self.device))

    def load_reward(self, s: RunSettings):
        from ...rewards import Ensemble

        loaded = [self._load("reward", n, lambda n=n: self.catalog.load_reward(n, self.device)) for n in s.rewards]
        return loaded[0] if len(loaded) == 1 else Ensemble(list(zip(loaded, s.weights)))

    # -- cancel --------------------------------------------------------------------------
    def _register(self, session: str, stop: threading.Event, add: bool = True) -> None:
        with self._runs_lock:
            stops = self._stops.setdefault(session, set())
            if add:
                stops.add(stop)
            else:
                stops.discard(stop)
            if not stops:
                del self._stops[session]

    def cancel(self, session: str) -> int:
        """Ask every running search of ``session`` to stop (each returns its best so far within one
        micro-batch); returns how many were running."""
        with self._runs_lock:
            stops = list(self._stops.get(session, ()))
        for stop in stops:
            stop.set()
        return len(stops)

    def _new_run_dir(self) -> Path:
        d = Path(tempfile.mkdtemp(prefix="run-", dir=self.work_dir))
        with self._runs_lock:
            self._run_dirs.append(d)
            while len(self._run_dirs) > self.keep_runs:
                shutil.rmtree(self._run_dirs.popleft(), ignore_errors=True)
        return d

    # -- the run -------------------------------------------------------------------------
    def prepare(self, s: RunSettings):
        """The SearchPipeline for ``s``, its plan and the settings it runs with, every check done before
        any compute. A population left to the budget ("auto") is capped at the server's limit."""
        from ...pipeline import SearchPipeline

        method = s.build_method()
        pipe, reward = self.load_model(s.model), self.load_reward(s)
        try:
            search = SearchPipeline.from_pipe(pipe, reward=reward, method=method, max_batch_size=self.max_batch_size,
                                              eta=s.eta)
            plan = search.plan(s.prompt, nfe_budget=s.nfe_budget, num_inference_steps=s.steps,
                               guidance_scale=s.guidance_scale)
        except (ValueError, TypeError) as err:  # the model's and the method's own checks
            raise ParameterError(views.for_page(views.one_line(err))) from None
        biggest = registry.largest_population(plan)
        param = registry.POPULATION_PARAMETER.get(s.method)
        if biggest > self.limits.max_population and s.population is None and param is not None:
            # "auto": the budget would size a population past this server's limit, so the limit sizes it
            # (the plan says how much of the budget stays unspent)
            s = replace(s, population=self.limits.max_population)
            search.method = s.build_method()
            try:
                plan = search.plan(s.prompt, nfe_budget=s.nfe_budget, num_inference_steps=s.steps,
                                   guidance_scale=s.guidance_scale)
            except (ValueError, TypeError) as err:
                raise ParameterError(views.one_line(err)) from None
            biggest = registry.largest_population(plan)
        if biggest > self.limits.max_population:
            raise ParameterError(f"population: {s.method} would hold {biggest} candidates at once with "
                                 f"nfe_budget={s.nfe_budget} and {search.stepper.num_steps} steps; this server's limit is "
                                 f"max_population={self.limits.max_population} (lower nfe_budget or set population)")
        return search, plan, s

    def run(self, *inputs, session: str | None = None) -> Iterator[tuple]:
        """Page updates (status, plain, best, plot, verdict, gallery, record, seed) for one request;
        ``inputs`` as :func:`~.request.parse_request` takes them. Raises ParameterError for a
        request it refuses (before any compute)."""
        s = parse_request(self.catalog, self.limits, *inputs)
        if not self.loaded(s):  # the previous results stay until this request is accepted
            yield (views.status_html("Loading", [f"model {s.model}", f"reward {s.reward_label}", f"seed {s.seed}"]),
                   KEEP, KEEP, KEEP, KEEP, KEEP, KEEP, s.seed)
        search, plan, s = self.prepare(s)
        run_dir = self._new_run_dir()
        events: queue.Queue = queue.Queue()
        stop = threading.Event()
        session = session or f"anonymous-{id(stop)}"
        result: dict = {}

        previewer = X0Previewer(search.stepper, events.put, self.update_interval)

        def work():
            try:
                result["out"] = search(s.prompt, seed=s.seed, num_inference_steps=s.steps,
                                       guidance_scale=s.guidance_scale, nfe_budget=s.nfe_budget, output_type="pt",
                                       callback=previewer, stop=stop.is_set, progress=False)
            except BaseException as err:  # shown on the page below
                result["error"] = err
            finally:
                events.put(_DONE)

        live = Live(search.judge, s.prompt)
        live.planned = plan.nfe
        t0 = time.perf_counter()
        self._register(session, stop)
        worker = threading.Thread(target=work, name="evosearch-app-run", daemon=True)
        worker.start()
        try:
            page = (None, None, None, [])  # plain, best, plot, gallery as last shown
            shown, done, last = 0, False, 0.0
            while not done:
                try:
                    batch = [events.get(timeout=self.update_interval)]
                except queue.Empty:
                    batch = []
                while True:
                    try:
                        batch.append(events.get_nowait())
                    except queue.Empty:
                        break
                for event in batch:
                    if event is _DONE:
                        done = True
                    else:
                        live.add(event)
                if done or time.perf_counter() - last < self.update_interval:
                    continue
                if live.changed:
                    shown += 1
                    page = self._live_files(live, s, run_dir, f"live{shown:04d}", page)
                    live.changed = False
                last = time.perf_counter()
                generation = "–" if live.generation is None else live.generation
                facts = [f"{s.method} on {s.model}", f"generation {generation}",
                         f"NFE {live.nfe}/{live.planned}", f"seed {s.seed}", f"{last - t0:.1f}s"]
                if live.best is not None:
                    facts.insert(3, f"best r={views.number(live.best[1])}")
                elif live.x0 is not None:
                    facts.insert(2, f"x0 previews at step {live.x0.step + 1}/{live.x0.steps}")
                yield (views.status_html("Running", facts, live.nfe, live.planned), page[0], page[1], page[2],
                       self._verdict(live), page[3], None, s.seed)
        finally:
            stop.set()  # the page went away or the event was cancelled: stop the worker too
            self._register(session, stop, add=False)
        worker.join()
        yield self._final(s, search, live, result, run_dir)

    # -- page updates --------------------------------------------------------------------
    @staticmethod
    def _verdict(live: Live, plain_summary: dict | None = None) -> str:
        return views.verdict_html(None if live.best is None else live.best[1:], None if live.plain is None else
                                  live.plain[1:], plain_summary, has_judge=live.judge is not None)

    @staticmethod
    def _live_files(live: Live, s: RunSettings, run_dir: Path, tag: str, page: tuple) -> tuple:
        plain, best, plot, _ = page
        if live.best is None and live.x0 is not None:  # the first generation denoising: its x0 previews
            x0 = live.x0
            return (views.save_sample(x0.images[0], run_dir / f"plain_x0_{tag}"), None, plot,
                    views.x0_gallery(x0.images, x0.step, x0.steps, run_dir, tag))
        if live.plain is not None and (plain is None or Path(plain).stem.startswith("plain_x0_")):
            plain = views.save_sample(live.plain[0], run_dir / "plain")
        if live.best is not None:
            best = views.save_sample(live.best[0], run_dir / f"best_{tag}")
        plot = views.plot(live.history, run_dir / f"rewards_{tag}.png", s.reward_label, live.planned or s.nfe_budget,
                          live.plain_mean) or plot
        samples, rewards, verdicts = zip(*live.current) if live.current else ((), (), ())
        return plain, best, plot, views.gallery(samples, rewards, verdicts, run_dir, tag)

    def _final(self, s: RunSettings, search, live: Live, result: dict, run_dir: Path) -> tuple:
        err = result.get("error")
        out = result.get("out") if err is None else getattr(err, "partial", None)
        if err is not None and (out is None or out.best is None):
            if isinstance(err, (ValueError, TypeError)):
                raise ParameterError(views.one_line(err)) from None  # refused before anything was scored
            raise err
        record = out.to_record()
        record["app"] = s.to_dict()
        record_path = str(atomic_write_json(run_dir / "record.json", record))
        st = out.stats
        facts = [f"{s.method} on {s.model}", f"NFE {st.nfe}/{s.nfe_budget}", f"seed {s.seed}",
                 f"{st.reward_calls} scored", f"{st.seconds.get('total', 0.0):.1f}s"]
        if out.best is None:
            return (views.status_html("Cancelled before any sample was scored", facts), None, None, None, "", [],
                    record_path, s.seed)
        facts.insert(1, f"best r={views.number(out.best.reward)}")
        if err is not None:
            head = "Stopped by an error: the best so far (incomplete)"
            logger.error("search stopped by an error after %d NFE (best so far shown): %s", st.nfe,
                         views.one_line(f"{type(err).__name__}: {err}"))
        elif not out.complete:
            head = "Cancelled: the best so far (incomplete)"
        elif st.stopped:
            head = f"Done ({st.stopped})"
        else:
            head = "Done (complete)"
        samples = out.videos if out.videos is not None else out.images
        best_sample = out.best.video if out.best.video is not None else out.best.image
        judge = out.judge or {}
        plain = live.plain and (live.plain[0], out.plain_rewards[0] if out.plain_rewards else live.plain[1],
                                (judge.get("plain", {}).get("verdicts") or [live.plain[2]])[0])
        if plain is None and out.plain is not None and len(out.plain):  # a screening search: plain x0 previews
            plain = (out.plain[0], out.plain_rewards[0], (judge.get("plain", {}).get("verdicts") or [None])[0])
        best = (best_sample, out.best.reward, judge.get("best"))
        return (views.status_html(head, facts, st.nfe, st.planned_nfe, out.warnings, None if err is None else
                                  f"{type(err).__name__}: {err}"),
                None if plain is None else views.save_sample(plain[0], run_dir / "plain"),
                views.save_sample(best[0], run_dir / "best"),
                views.plot(out.history, run_dir / "rewards.png", s.reward_label, st.planned_nfe or s.nfe_budget,
                           live.plain_mean),
                views.verdict_html(best[1:], None if plain is None else plain[1:], judge.get("plain"),
                                   has_judge=search.judge is not None),
                views.gallery(list(samples), out.rewards, live.verdicts(samples), run_dir, "final"),
                record_path, s.seed)
