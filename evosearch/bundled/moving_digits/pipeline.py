"""The moving-digits world's generator: a digit sliding across a 16x16 canvas, made segment by segment.

A class-conditional diffusers ``UNet2DModel`` in pixel space whose channels are frames: it
denoises one segment of ``segment_frames`` (4) frames, with ``context_frames`` (2) more input
channels holding the last frames of the previous segment (channel concatenation) and one flag
channel (1 = a continuation, 0 = the first segment, whose context channels are zero). Label
10 (:data:`~evosearch.bundled.digits.prompt.NULL_CLASS_LABEL`) is the unconditional class for
classifier-free guidance. ``DDIMScheduler`` (v-prediction, DDPM linear betas, trailing
spacing). Trained by ``scripts/train_moving_digits.py`` on the videos of
:mod:`evosearch.bundled.moving_digits.data`; weights in
``evosearch/bundled/assets/moving_digits/`` together with a frame classifier (the reward:
:func:`~evosearch.bundled.moving_digits.reward.moving_digits_reward`).

    >>> pipe = load_moving_digits_pipeline()
    >>> frames = pipe("digit 3", generator=torch.Generator().manual_seed(0)).frames[0]  # 16 PIL frames
    >>> search = SearchPipeline.from_pipe(pipe, reward=moving_digits_reward(), method=TreeOfFrames())

With evosearch, ``stepper_for(pipe)`` is a :class:`~evosearch.pipelines.segments.SegmentStepper`
over :class:`MovingDigitsSegments` (``num_inference_steps`` per segment, ``num_segments=``).
:class:`~evosearch.bundled.moving_digits.judge.MovingDigitJudge` (an SVC on the 8x8 window
around the digit) is the independent judge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DModel
from diffusers.utils import BaseOutput

from ...core.records import Request
from ...core.validation import check_choice
from ...pipelines.diffusion import vp_schedule
from ...pipelines.segments import SegmentModel
from ..digits.prompt import NULL_CLASS_LABEL, parse_digit
from ..paths import asset_path
from .data import CANVAS, CONTEXT_FRAMES, NUM_SEGMENTS, SEGMENT_FRAMES


def make_unet(segment_frames: int = SEGMENT_FRAMES, context_frames: int = CONTEXT_FRAMES) -> UNet2DModel:
    return UNet2DModel(
        sample_size=CANVAS, in_channels=segment_frames + context_frames + 1, out_channels=segment_frames,
        layers_per_block=1, block_out_channels=(16, 32, 32), down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3, norm_num_groups=8, num_class_embeds=NULL_CLASS_LABEL + 1)


def make_scheduler() -> DDIMScheduler:
    # v-prediction: at the noisiest steps x0 = -v is predicted directly (an epsilon model would have to
    # predict eps to ~0.5% there to get x0 right, which a briefly trained small model does not)
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                         prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=True,
                         timestep_spacing="trailing")


@dataclass
class MovingDigitsOutput(BaseOutput):
    """``frames``: one list of PIL frames per video ("pil"), or an array (N, F, H, W, 1) ("np") / a tensor
    (N, F, 1, H, W) ("pt") in [0, 1]."""

    frames: object


class MovingDigitsPipeline(DiffusionPipeline):
    """Segment-by-segment DDIM sampling of moving-digit videos (see the module docstring)."""

    stepper_family = "segments"
    default_num_inference_steps: int = 20
    default_guidance_scale: float = 2.0  # classifier-free guidance: readable digits twice as often as 1.0
    null_class_label: int = NULL_CLASS_LABEL
    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: DDIMScheduler, segment_frames: int = SEGMENT_FRAMES,
                 context_frames: int = CONTEXT_FRAMES, num_segments: int = NUM_SEGMENTS):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(segment_frames=segment_frames, context_frames=context_frames,
                                num_segments=num_segments)

    parse_digit = staticmethod(parse_digit)

    def check_prompt(self, prompt) -> int:
        """The digit ``prompt`` asks for, or a ValueError naming ``prompt`` (before any compute)."""
        return parse_digit(prompt)

    def default_judge(self):
        """The world's judge (a SearchPipeline uses it unless told otherwise)."""
        from .judge import MovingDigitJudge

        return MovingDigitJudge()

    def segment_model(self) -> "MovingDigitsSegments":
        return MovingDigitsSegments(self)

    def context_from(self, previous: torch.Tensor | None, n: int) -> torch.Tensor:
        """Context channels (n, c + 1, H, W) from the previous segment (n, f, H, W) in [-1, 1], or None (first)."""
        c, size = self.config.context_frames, self.unet.config.sample_size
        if previous is None:
            return torch.zeros(n, c + 1, size, size, device=self.unet.device, dtype=self.unet.dtype)
        last = previous[:, -c:].clamp(-1, 1)
        return torch.cat([last, torch.ones_like(last[:, :1])], dim=1).to(self.unet.dtype)

    def predict_noise(self, x: torch.Tensor, t, context: torch.Tensor, label: int, guidance_scale: float = 1.0):
        """Guided model output (the scheduler's ``prediction_type``: v or epsilon) for segments x (n, f, H, W)
        with context (n, c + 1, H, W)."""
        n = x.shape[0]
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(n)
        inp = torch.cat([x, context.to(x.dtype)], dim=1).to(self.unet.dtype)
        labels = torch.full((n,), int(label), dtype=torch.long, device=x.device)
        if guidance_scale == 1.0:
            return self.unet(inp, t, class_labels=labels).sample.to(x.dtype)
        null = torch.full_like(labels, self.null_class_label)
        eps = self.unet(torch.cat([inp, inp]), torch.cat([t, t]), class_labels=torch.cat([null, labels])).sample
        u, c = eps.to(x.dtype).chunk(2)
        return u + guidance_scale * (c - u)

    @torch.no_grad()
    def __call__(self, prompt, num_videos: int = 1, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, num_segments: int | None = None, eta: float = 0.0,
                 generator: torch.Generator | None = None, output_type: str = "pil", return_dict: bool = True):
        label = parse_digit(prompt)
        steps = num_inference_steps or self.default_num_inference_steps
        g = self.default_guidance_scale if guidance_scale is None else float(guidance_scale)
        S = num_segments or self.config.num_segments
        check_choice("output_type", output_type, ("pil", "np", "pt"))
        f, size = self.config.segment_frames, self.unet.config.sample_size
        device = self.unet.device
        segments, previous = [], None
        for _ in range(S):
            x = torch.randn((num_videos, f, size, size), generator=generator).to(device)
            context = self.context_from(previous, num_videos)
            self.scheduler.set_timesteps(steps, device=device)
            for t in self.scheduler.timesteps:
                eps = self.predict_noise(x, t, context, label, g)
                x = self.scheduler.step(eps, t, x, eta=eta, generator=generator).prev_sample
            segments.append(x)
            previous = x
        video = (torch.cat(segments, dim=1)[:, :, None] / 2 + 0.5).clamp(0, 1).cpu()  # (N, F, 1, H, W)
        if output_type == "pt":
            frames = video
        elif output_type == "np":
            frames = video.permute(0, 1, 3, 4, 2).numpy()
        else:
            frames = [self.numpy_to_pil(v.permute(0, 2, 3, 1).numpy()) for v in video]
        return MovingDigitsOutput(frames=frames) if return_dict else (frames,)


class MovingDigitsSegments(SegmentModel):
    """The SegmentModel of :class:`MovingDigitsPipeline`: segment latents are the segment's frames
    (f, 16, 16) in [-1, 1]; the VP schedule (vp_schedule) and v/epsilon -> (x0, eps) are DiffusionStepper's."""

    context_segments = 1

    def __init__(self, pipe: MovingDigitsPipeline):
        self.pipe = pipe

    @property
    def denoiser(self):
        return self.pipe.unet

    @property
    def default_num_inference_steps(self) -> int:
        return self.pipe.default_num_inference_steps

    @property
    def default_guidance_scale(self) -> float:
        return self.pipe.default_guidance_scale

    @property
    def default_num_segments(self) -> int:
        return int(self.pipe.config.num_segments)

    def prepare(self, request: Request, eta: float) -> None:
        size = self.pipe.unet.config.sample_size
        if (request.height or size) != size or (request.width or size) != size:
            raise ValueError(f"height/width: this model draws {size}x{size} frames only")
        request.height = request.width = size
        self.label = parse_digit(request.prompt)
        self.guidance = request.guidance_scale
        schedule, ddim = vp_schedule(self.pipe.scheduler.config, request.num_inference_steps, eta, self.pipe.device)
        self.prediction_type = ddim.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"scheduler: prediction_type {self.prediction_type!r} is not supported "
                             "(allowed: epsilon, v_prediction)")
        self.num_segments = int(request.extra["num_segments"])
        self.schedules = [schedule] * self.num_segments
        self.segment_shape = (self.pipe.config.segment_frames, size, size)

    def context(self, prefix: torch.Tensor):
        previous = prefix[:, -1] if prefix.shape[1] else None
        return self.pipe.context_from(previous, prefix.shape[0])

    def predict(self, x: torch.Tensor, d: int, j: int, context):
        sched = self.schedules[d]
        out = self.pipe.predict_noise(x, sched.timesteps[j], context, self.label, self.guidance)
        a, s = float(sched.a[j]), float(sched.s[j])
        if self.prediction_type == "v_prediction":  # as DiffusionStepper
            return a * x - s * out, s * x + a * out
        return (x - s * out) / a, out

    def decode(self, segments: torch.Tensor) -> torch.Tensor:
        n, d, f, h, w = segments.shape
        return (segments.reshape(n, d * f, 1, h, w).float() / 2 + 0.5).clamp(0, 1)


def load_moving_digits_pipeline(device: str | torch.device = "cpu",
                                path: str | Path | None = None) -> MovingDigitsPipeline:
    """The bundled moving-digits pipeline (or one saved at ``path``), on ``device``."""
    path = Path(path) if path is not None else asset_path("moving_digits")
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"path: no moving-digits pipeline at {path} (expected model_index.json); "
                                "run scripts/train_moving_digits.py")
    pipe = MovingDigitsPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
