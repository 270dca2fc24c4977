"""SearchPipeline: a diffusers pipeline + a reward + a search method (+ a judge)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .core.lineage import Lineage, replay
from .core.records import Plan, Preview, SearchEvent, SearchStats
from .core.stepper import check_capabilities
from .core.validation import ParameterError, check_choice, check_int, describe
from .judging import JudgeReport, as_judge, judge_output
from .rewards.base import as_reward, check_reward_prompt
from .rewards.device import RewardOnDevice
from .search.context import EarlyStop, SearchInterrupted, SearchStopped
from .search.distributed import DISTRIBUTED_CHOICES, REFUSED_METHODS, resolve_collective
from .search.engine import SearchRun
from .search.method import SearchMethod

OUTPUT_TYPES = ("pil", "np", "pt")


def convert_images(images: torch.Tensor, output_type: str):
    """(N, 3, H, W) uint8 or float [0, 1] -> list of PIL images, (N, H, W, 3) float numpy, or a float tensor."""
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    if output_type == "pt":
        return images
    arr = images.permute(0, 2, 3, 1).numpy()
    if output_type == "np":
        return arr
    return [Image.fromarray((a * 255).round().clip(0, 255).astype(np.uint8)) for a in arr]


def convert_videos(videos: torch.Tensor, output_type: str):
    """(N, F, 3, H, W) uint8 or float [0, 1] -> N lists of PIL frames, (N, F, H, W, 3) float numpy, or a float
    tensor (N, F, 3, H, W)."""
    if videos.dtype == torch.uint8:
        videos = videos.float() / 255.0
    if output_type == "pt":
        return videos
    if output_type == "np":
        return videos.permute(0, 1, 3, 4, 2).numpy()
    return [convert_images(v, "pil") for v in videos]


@dataclass
class BestCandidate:
    """The best sample: ``image`` (for a video model its first frame), ``video`` (video models:
    the frames, in the output type), reward, lineage."""

    image: Any
    reward: float
    lineage: Lineage
    video: Any = None


@dataclass
class SearchPipelineOutput:
    """``images``/``rewards``: the final population, best first (the best-ever candidate on
    top even when an earlier generation found it); ``best``; ``stats`` (``stats.stopped`` says
    why a search ended early); ``history`` (one :class:`~evosearch.core.HistoryEntry` per scored
    generation or wave); ``complete`` is False after an interrupt or error; ``judge`` the held-out
    judge's report (``{"best", "plain", "population"}``, None without a judge); ``warnings``
    (e.g. "reward hacking suspected: ..."); ``plain``: plain samples of the first generation
    (unselected, so they cost no extra NFE), in the output type. ``preview``: when a stop came
    before any sample was scored (``best`` None), the best x0 preview of the rows in hand
    (:class:`~evosearch.core.records.Preview`, its image in the output type), else None.

    Video models: ``videos`` holds the population's videos in the same order — for
    ``output_type="pil"`` one list of PIL frames per video, for ``"np"`` an array
    (N, F, H, W, 3), for ``"pt"`` a tensor (N, F, 3, H, W) — and ``images`` each video's
    first frame. ``videos`` is None for image models."""

    images: Any
    rewards: list[float]
    best: BestCandidate | None
    stats: SearchStats
    history: list
    complete: bool = True
    settings: dict = field(default_factory=dict)
    videos: Any = None
    judge: dict | None = None
    warnings: list[str] = field(default_factory=list)
    plain: Any = None
    plain_rewards: list[float] = field(default_factory=list)
    preview: Preview | None = None

    def to_record(self) -> dict:
        """A JSON-serialisable record (no images)."""
        return {"best_reward": None if self.best is None else self.best.reward, "complete": self.complete,
                "settings": self.settings, "stats": self.stats.to_dict(),
                "lineage": None if self.best is None else self.best.lineage.to_dict(),
                "rewards": self.rewards, "plain_rewards": self.plain_rewards, "judge": self.judge,
                "warnings": self.warnings, "history": [h.to_dict() for h in self.history],
                "preview": None if self.preview is None else self.preview.to_dict()}


def check_method(method, name: str = "method") -> SearchMethod:
    if isinstance(method, type) and issubclass(method, SearchMethod):
        raise ParameterError(f"{name}: pass an instance such as {method.__name__}(), not the class {method.__name__}")
    if not isinstance(method, SearchMethod):
        raise ParameterError(f"{name}: expected a search method such as EvoSearch(...) or BestOfN(...), "
                             f"got {describe(method)}")
    return method


def check_prompt(stepper, prompt) -> None:
    """Before any compute: the model's own prompt check where it has one, else a string (anything
    for unconditional models, which ignore it)."""
    own = getattr(stepper.pipe, "check_prompt", None)
    if callable(own):
        own(prompt)
    elif getattr(stepper, "kind", None) != "unconditional" and not isinstance(prompt, str):
        raise ParameterError(f"prompt: must be a string (or a list of strings with a list of seeds), "
                             f"got {describe(prompt)}")


def with_unspent_note(plan: Plan, nfe_budget: int | None, trajectory_nfe: int) -> Plan:
    """``plan`` with a note (``details["unspent"]``, and a warning in the output) when it leaves more
    than one trajectory (``trajectory_nfe`` NFE) of ``nfe_budget`` unspent: fixed sizes (a population
    given) cap a search below its budget, and a user should not think the budget was used."""
    if nfe_budget is None or nfe_budget - plan.nfe <= trajectory_nfe:
        return plan
    left = nfe_budget - plan.nfe
    sizes = {k: v for k, v in plan.details.items() if isinstance(v, int) and not isinstance(v, bool)}
    fixed = ", ".join(f"{k}={v}" for k, v in sizes.items()) or "its fixed sizes"
    note = (f"{plan.method} plans {plan.nfe} of the {nfe_budget} NFE budget: {left} NFE ({left // trajectory_nfe} "
            f"trajectories) stay unspent with {fixed}; leave the population unset to size the search from the budget")
    return replace(plan, details={**plan.details, "unspent": left, "note": note})


def check_same_request(dist, method, prompt, seed, nfe_budget, plan: Plan) -> None:
    """Distributed: every process must search the same thing, else a ParameterError (on every
    process) naming what differs."""
    mine = {"prompt": prompt, "seed": int(seed), "nfe_budget": nfe_budget, "method": method.config(),
            "plan": plan.to_dict()}
    everyone = dist.all_gather_objects(mine)
    differ = sorted({k for other in everyone for k in mine if other[k] != mine[k]})
    if differ:
        raise ParameterError(f"{differ[0]}: the processes of a distributed search must run the same call; they "
                             f"differ in {', '.join(differ)} ({[o[differ[0]] for o in everyone]})")


class SearchPipeline:
    """Test-time search around a diffusers pipeline.

    >>> search = SearchPipeline.from_pipe(pipe, reward=reward, method=EvoSearch(), max_batch_size=16)
    >>> out = search("a cat", seed=0, num_inference_steps=50, nfe_budget=2000)

    ``method`` defaults to ``BestOfN(n=4)``, whose size is fixed: ``nfe_budget`` only caps it. Pass
    a method without sizes (``EvoSearch()``, ``BestOfN()``) to size the search from the budget.
    """

    def __init__(self, pipe, reward, method=None, max_batch_size: int = 16, eta: float = 1.0, *, stepper=None,
                 judge=None, early_stop: EarlyStop | None = None, distributed=False, reward_device=None):
        from .pipelines import stepper_for  # the families import diffusers: only once a model is wrapped
        from .search.best_of_n import BestOfN

        self.pipe = pipe
        self.reward = as_reward(reward)
        self.method = check_method(method) if method is not None else BestOfN(n=4)
        if not any(distributed is c for c in DISTRIBUTED_CHOICES):
            raise ParameterError(f"distributed: must be True, False or 'auto', got {describe(distributed)}")
        if early_stop is not None and not isinstance(early_stop, EarlyStop):
            raise ParameterError(f"early_stop: expected EarlyStop(...) or None, got {describe(early_stop)}")
        self.early_stop = early_stop
        # a ready Stepper (from_stepper) brings its own max_batch_size and eta
        self.stepper = stepper if stepper is not None else stepper_for(pipe, max_batch_size=max_batch_size, eta=eta)
        self.judge = as_judge(judge, pipe)
        if reward_device is not None:
            self.reward = RewardOnDevice(self.reward, reward_device, self.stepper.max_batch_size)
        self.reward_device = reward_device
        #: the process group a distributed search runs on (None: this process alone)
        self.dist = resolve_collective(distributed, self.stepper.device)
        self._lock = threading.Lock()

    @classmethod
    def from_pipe(cls, pipe, reward, method=None, max_batch_size: int = 16, eta: float = 1.0, judge=None,
                  early_stop: EarlyStop | None = None, distributed=False, reward_device=None) -> "SearchPipeline":
        """Wrap an existing diffusers pipeline object (its modules are shared, not copied).

        ``eta`` is the sampler's noise level in [0, 1] (1: ancestral; EvoSearch needs > 0).
        ``judge``: a held-out judge, a callable ``(images, prompts) -> [{"correct", "valid", ...}]`` or
        a Reward; None = the bundled world's own judge when the pipeline has one; False = none.

        ``distributed``: spread the population of each search over the processes of a
        torch.distributed group (``accelerate launch`` / ``torchrun``; accelerate's ``PartialState``
        sets it up): True, False, or "auto" (on whenever there is a group of more than one process).
        Every process runs the same call (same prompt, seed and settings, checked) and gets the same
        output; the winner does not depend on the number of processes (to float rounding).

        ``reward_device``: the device the reward runs on (e.g. "cuda:1" beside a generator on
        "cuda:0"); the reward's modules are moved there and it scores micro-batches of
        ``max_batch_size`` samples."""
        return cls(pipe, reward=reward, method=method, max_batch_size=max_batch_size, eta=eta, judge=judge,
                   early_stop=early_stop, distributed=distributed, reward_device=reward_device)

    @classmethod
    def from_stepper(cls, stepper, reward, method=None, judge=None, early_stop=None, distributed=False,
                     reward_device=None) -> "SearchPipeline":
        """Wrap a ready Stepper (e.g. :class:`~evosearch.pipelines.kdiffusion.KDiffusionStepper` over
        ComfyUI's model call); its ``max_batch_size`` and ``eta`` apply."""
        if not all(hasattr(stepper, a) for a in ("prepare", "start", "step", "finish", "noise_scale")):
            raise ParameterError(f"stepper: expected an evosearch Stepper, got {describe(stepper)}")
        return cls(getattr(stepper, "pipe", None), reward=reward, method=method, stepper=stepper, judge=judge,
                   early_stop=early_stop, distributed=distributed, reward_device=reward_device)

    @property
    def max_batch_size(self) -> int:
        return self.stepper.max_batch_size

    def __call__(self, prompt, seed: int | Sequence[int] = 0, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, nfe_budget: int | None = None, negative_prompt=None,
                 height: int | None = None, width: int | None = None, output_type: str = "pil",
                 callback: Callable | None = None, stop: Callable[[], bool] | None = None,
                 progress: bool = True, method=None, early_stop: EarlyStop | None = None,
                 first_noise_seed: int | None = None, **extra):
        """Search for one prompt (returns a SearchPipelineOutput) or a list of prompts with a
        list of seeds of the same length (returns a list of outputs).

        ``first_noise_seed``: the initial-noise seed of the first candidate (ComfyUI: KSampler's noise
        seed, so that a search of one candidate samples as the stock sampler); None: drawn from ``seed``.

        ``extra`` keyword arguments go to the Stepper's ``prepare`` and are recorded in each
        lineage's request: ``num_frames`` (video models), ``num_segments`` (segment models),
        ``max_sequence_length``, ..."""
        if isinstance(prompt, (list, tuple)):
            seeds = list(seed) if isinstance(seed, (list, tuple)) else None
            if seeds is None or len(seeds) != len(prompt):
                raise ParameterError(f"seed: with a list of {len(prompt)} prompts, pass a list of {len(prompt)} "
                                     f"seeds, got {describe(seed)}")
            return [self(p, seed=s, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                         nfe_budget=nfe_budget, negative_prompt=negative_prompt, height=height, width=width,
                         output_type=output_type, callback=callback, stop=stop, progress=progress, method=method,
                         early_stop=early_stop, first_noise_seed=first_noise_seed, **extra)
                    for p, s in zip(prompt, seeds)]
        if isinstance(seed, (list, tuple)):
            raise ParameterError("seed: a list of seeds needs a list of prompts of the same length, got one prompt")
        check_int("seed", seed, lo=0, hi=2 ** 64 - 1)
        check_int("first_noise_seed", first_noise_seed, lo=0, hi=2 ** 64 - 1, allow_none=True)
        check_int("nfe_budget", nfe_budget, lo=1, allow_none=True)
        check_choice("output_type", output_type, OUTPUT_TYPES)
        for name, fn in (("callback", callback), ("stop", stop)):
            if fn is not None and not callable(fn):
                raise ParameterError(f"{name}: must be a callable or None, got {describe(fn)}")
        if early_stop is not None and not isinstance(early_stop, EarlyStop):
            raise ParameterError(f"early_stop: expected EarlyStop(...) or None, got {describe(early_stop)}")
        method = self.method if method is None else check_method(method)
        check_prompt(self.stepper, prompt)
        check_reward_prompt(self.reward, prompt)
        early_stop = early_stop or self.early_stop
        if early_stop is not None and early_stop.target_judge and self.judge is None:
            raise ParameterError("early_stop: target_judge=True needs a judge (SearchPipeline(..., judge=...))")
        with self._lock:
            plan = self._plan(method, prompt, nfe_budget, num_inference_steps=num_inference_steps,
                              guidance_scale=guidance_scale, negative_prompt=negative_prompt, height=height,
                              width=width, **extra)
            if self.dist is not None:
                check_same_request(self.dist, method, prompt, seed, nfe_budget, plan)
            run = SearchRun(self.stepper, self.reward, prompt, int(seed), nfe_budget=nfe_budget, callback=callback,
                            stop=stop, progress=progress, planned_nfe=plan.nfe, early_stop=early_stop,
                            judge=self.judge, dist=self.dist, first_seed=first_noise_seed)
            run.plan = plan
            complete, failure = True, None
            try:
                run.emit(SearchEvent("plan", 0, plan.nfe))
                method.run(run)
            except (SearchInterrupted, KeyboardInterrupt) as err:
                run.announce(err)  # distributed: every rank stops at its next sync
                complete, run.stats.stopped = False, "interrupted"
                if isinstance(err, SearchInterrupted):
                    try:
                        run.keep_preview()
                    except Exception as preview_err:  # the search was stopped: no preview, and say why
                        run.preview_error = f"no x0 preview: {type(preview_err).__name__}: {preview_err}"
            except SearchStopped as stopped:
                run.stats.stopped = stopped.reason
            except Exception as err:  # a user's reward or callback, or a bug: keep the best so far
                failure = run.announce(err)  # distributed: every rank raises the same error
                complete = False
                run.stats.stopped = f"error: {type(failure).__name__}"
            finally:
                run.finalize()
        out = self._output(run, method, seed, nfe_budget, output_type, complete)
        if failure is not None:
            failure.partial = out
            raise failure
        return out

    def _plan(self, method: SearchMethod, prompt, nfe_budget, **request) -> Plan:
        if self.dist is not None and method.name in REFUSED_METHODS:
            raise ParameterError(f"method: {method.name} cannot spread its population over processes "
                                 f"({REFUSED_METHODS[method.name]}); run it with distributed=False")
        self.stepper.prepare(prompt, **request)
        plan = method.plan(nfe_budget, self.stepper.num_steps, getattr(self.stepper, "num_segments", None))
        check_capabilities(method.name, method.requirements(plan), self.stepper)
        return with_unspent_note(plan, nfe_budget, self.stepper.num_steps)

    def plan(self, prompt, nfe_budget: int | None = None, method=None, **request) -> Plan:
        """What a search for ``prompt`` would do — its :class:`~evosearch.core.Plan` (NFE, sizes) — checked
        against the model's capabilities, with no NFE spent (the prompt is encoded). ``request``:
        ``num_inference_steps``, ``guidance_scale``, ... as for a search."""
        method = self.method if method is None else check_method(method)
        check_int("nfe_budget", nfe_budget, lo=1, allow_none=True)
        check_prompt(self.stepper, prompt)
        check_reward_prompt(self.reward, prompt)
        with self._lock:
            return self._plan(method, prompt, nfe_budget, **request)

    def _output(self, run: SearchRun, method, seed, nfe_budget, output_type, complete) -> SearchPipelineOutput:
        ranked = run.ranked()
        settings = {"request": run.request, "seed": int(seed), "nfe_budget": nfe_budget, "method": method.config(),
                    "plan": None if run.plan is None else run.plan.to_dict(), "max_batch_size": self.max_batch_size,
                    "reward": repr(self.reward), "pipeline": type(self.pipe).__name__, "family": self.stepper.family}
        if run.first_seed is not None:
            settings["first_noise_seed"] = int(run.first_seed)
        is_video = bool(ranked) and ranked[0].image.ndim == 4  # candidates hold (F, 3, H, W) videos
        videos = None
        if is_video:
            stacked = torch.stack([c.image for c in ranked])
            videos = convert_videos(stacked, output_type)
            images = convert_images(stacked[:, 0], output_type)
        else:
            images = convert_images(torch.stack([c.image for c in ranked]), output_type) if ranked else []
        best = None
        if run.best is not None:
            if is_video:
                best = BestCandidate(convert_images(run.best.image[:1], output_type)[0], run.best.reward,
                                     run.best.lineage, video=convert_videos(run.best.image[None], output_type)[0])
            else:
                best = BestCandidate(convert_images(run.best.image[None], output_type)[0], run.best.reward,
                                     run.best.lineage)
        plain = None
        if run.plain:
            frames = torch.stack([c.image if c.image.ndim == 3 else c.image[0] for c in run.plain])
            plain = convert_images(frames, output_type)
        report: JudgeReport = judge_output(self.judge, run, ranked)
        note = None if run.plan is None else run.plan.details.get("note")
        notes = [n for n in (note, run.preview_error) if n]
        return SearchPipelineOutput(images=images, rewards=[c.reward for c in ranked], best=best, stats=run.stats,
                                    history=list(run.history), complete=complete, settings=settings, videos=videos,
                                    judge=report.verdicts, warnings=notes + report.warnings,
                                    plain=plain, plain_rewards=[c.reward for c in run.plain],
                                    preview=self._preview(run, output_type))

    @staticmethod
    def _preview(run: SearchRun, output_type: str) -> Preview | None:
        p = run.preview
        if p is None:
            return None
        frame = p.image if p.image.ndim == 3 else p.image[0]
        return replace(p, image=convert_images(frame[None], output_type)[0])

    @torch.no_grad()
    def replay_states(self, lineage: Lineage | dict):
        """The final state (1, ...) of ``lineage``, re-generated alone (a ParameterError naming
        ``lineage`` for one of another model or sampler, or one that cannot be replayed)."""
        lineage = Lineage.from_dict(lineage)
        if not lineage.request:
            raise ParameterError("lineage: has no request settings; pass a lineage taken from a search output")
        r = dict(lineage.request)
        extra = r.pop("extra", {}) or {}
        if r.pop("eta", None) != self.stepper.eta:
            raise ParameterError(f"lineage: was made with eta={lineage.request.get('eta')}, this pipeline has "
                                 f"eta={self.stepper.eta}")
        mine = self.stepper.fingerprint()
        if not lineage.model:
            raise ParameterError("lineage: has no 'model' fingerprint, so it cannot be told apart from a lineage of "
                                 "another model; pass a lineage taken from a search output")
        if lineage.model != mine:
            raise ParameterError(f"lineage: was made by another model ({lineage.model}); this pipeline's model is "
                                 f"{mine}")
        if "prompt" not in r:
            raise ParameterError("lineage: its request has no prompt")
        self.stepper.prepare(r.pop("prompt"), **r, **extra)
        lineage.validate(self.stepper.num_steps, self.stepper.event_kinds_all)  # what is wrong, when it can say
        lineage.check_unedited()
        return replay(self.stepper, lineage)

    def replay(self, lineage: Lineage | dict, output_type: str = "pil"):
        """Re-generate one candidate from its lineage (identical to the search's on CPU, to float
        rounding); for a video model its video (a list of PIL frames, an (F, H, W, 3) array or an
        (F, 3, H, W) tensor)."""
        check_choice("output_type", output_type, OUTPUT_TYPES)
        with self._lock:
            images = self.stepper.finish(self.replay_states(lineage))
        if images.ndim == 5:
            return convert_videos(images, output_type)[0]
        return convert_images(images, output_type)[0]
