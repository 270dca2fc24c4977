"""Wan image-to-video segments: :class:`WanI2VSegments`, the
:class:`~evosearch.pipelines.segment_model.SegmentModel` of diffusers' ``WanImageToVideoPipeline``,
driven by :class:`~evosearch.pipelines.segments.SegmentStepper` (see :mod:`evosearch.pipelines.segments`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.records import Request
from .segment_model import SegmentModel
from .video import PipelineCallDefaults

__all__ = ["WanI2VSegments"]


class WanI2VSegments(PipelineCallDefaults, SegmentModel):
    """Segments from diffusers' ``WanImageToVideoPipeline``: segment d >= 1 is the pipeline's
    image-to-video generation from the last decoded frame of segment d - 1 (its VAE-encoded
    first-frame condition with the frame mask, and CLIP image embeddings when the pipeline has an
    image encoder), exactly as the pipeline builds them from an image. The first segment comes from
    ``first`` (a ``WanPipeline``: text-to-video, sharing the latent space) or, without it, from an
    ``image=`` given to ``prepare`` (image-to-video). Every segment has ``num_frames`` frames; a
    continuation repeats its conditioning frame first, which :meth:`decode` drops when joining.

    Sizes as for :class:`~evosearch.pipelines.video.WanStepper` (``num_frames`` per segment).
    """

    context_segments = 1
    context_decodes = True

    def __init__(self, pipe, first=None):
        from diffusers import WanImageToVideoPipeline, WanPipeline

        if not isinstance(pipe, WanImageToVideoPipeline):
            raise TypeError(f"pipe: expected a WanImageToVideoPipeline, got {type(pipe).__name__}")
        if first is not None and not isinstance(first, WanPipeline):
            raise TypeError(f"first: expected a WanPipeline (text-to-video first segment) or None, "
                            f"got {type(first).__name__}")
        self.pipe = pipe
        self.first = first
        self._first_stepper = None

    @property
    def denoiser(self):
        return self.pipe.transformer

    def prepare(self, request: Request, eta: float) -> None:
        from .flow import flow_schedule
        from .video import WanStepper, video_size

        pipe, device = self.pipe, self.pipe.device
        S = request.extra["num_segments"]
        st, ss = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
        patch = pipe.transformer.config.patch_size
        height, width, frames = video_size(pipe, request, max(16, ss * patch[1]), st)
        self.size = (height, width, frames)
        lat_f, h, w = (frames - 1) // st + 1, height // ss, width // ss
        self.segment_shape = (pipe.vae.config.z_dim, lat_f, h, w)
        self.num_segments = S
        self.cfg = request.guidance_scale > 1.0
        self.guidance = request.guidance_scale
        dtype = pipe.transformer.dtype
        pe, npe = pipe.encode_prompt(prompt=request.prompt, negative_prompt=request.negative_prompt,
                                     do_classifier_free_guidance=self.cfg, num_videos_per_prompt=1,
                                     max_sequence_length=int(request.extra.get("max_sequence_length", 512)),
                                     device=device)
        self.pe, self.npe = pe.to(dtype), None if npe is None else npe.to(dtype)
        schedule = flow_schedule(pipe, request.num_inference_steps, eta, lat_f * (h // patch[1]) * (w // patch[2]),
                                 device)
        self.schedules = [schedule] * S
        self.image = request.extra.get("image")
        if self.first is not None:
            self._first_stepper = WanStepper(self.first, eta=eta)
            self._first_stepper.prepare(request.prompt, request.num_inference_steps, request.guidance_scale,
                                        request.negative_prompt, height, width, num_frames=frames,
                                        **{k: v for k, v in request.extra.items()
                                           if k in ("max_sequence_length",)})
            if self._first_stepper.state_shape != self.segment_shape:
                raise ValueError(f"first: its latents {self._first_stepper.state_shape} differ from the "
                                 f"image-to-video pipeline's {self.segment_shape}")
            self.schedules = [self._first_stepper.schedule] + [schedule] * (S - 1)
        elif self.image is None:
            raise ValueError("image: WanI2VSegments without a first (text-to-video) pipeline needs image= "
                             "(the first segment's conditioning image)")

    # -- conditioning ----------------------------------------------------------------
    def _latent_stats(self, device, dtype):
        vae = self.pipe.vae
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(device, dtype)
        std = torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(device, dtype)
        return mean, std

    def _decode_segment(self, latents: torch.Tensor) -> torch.Tensor:
        """(n, C, F_lat, h, w) -> (n, F, 3, H, W) in [0, 1]."""
        vae = self.pipe.vae
        mean, std = self._latent_stats(latents.device, vae.dtype)
        video = vae.decode(latents.to(vae.dtype) * std + mean, return_dict=False)[0]
        return self.pipe.video_processor.postprocess_video(video, output_type="pt").float()

    def _condition(self, images: torch.Tensor) -> dict:
        """Images (n, 3, H, W) in [0, 1] -> the pipeline's image-to-video conditioning for each row."""
        pipe, vae = self.pipe, self.pipe.vae
        height, width, frames = self.size
        device = pipe.device
        n = images.shape[0]
        image = (images * 2 - 1).to(device=device, dtype=torch.float32)[:, :, None]
        video = torch.cat([image, image.new_zeros(n, 3, frames - 1, height, width)], dim=2).to(vae.dtype)
        from diffusers.pipelines.wan.pipeline_wan_i2v import retrieve_latents

        latent = retrieve_latents(vae.encode(video), sample_mode="argmax").float()
        mean, std = self._latent_stats(device, torch.float32)
        latent = (latent - mean) / std
        _, _, lat_f, h, w = latent.shape
        st = pipe.vae_scale_factor_temporal
        mask = torch.ones(n, 1, frames, h, w, device=device)
        mask[:, :, 1:] = 0
        first = torch.repeat_interleave(mask[:, :, 0:1], dim=2, repeats=st)
        mask = torch.cat([first, mask[:, :, 1:]], dim=2).view(n, -1, st, h, w).transpose(1, 2)
        ctx = {"condition": torch.cat([mask, latent], dim=1).to(pipe.transformer.dtype)}
        if pipe.transformer.config.image_dim is not None:
            from PIL import Image

            pil = [Image.fromarray((im.permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8))
                   for im in images]
            ctx["image_embeds"] = pipe.encode_image(pil, device).to(pipe.transformer.dtype)
        return ctx

    def context(self, prefix: torch.Tensor):
        n, d = prefix.shape[:2]
        if d == 0:
            if self.first is not None:
                return None
            image = self.pipe.video_processor.preprocess(self.image, height=self.size[0], width=self.size[1])
            return _expand_rows(self._condition((image / 2 + 0.5).clamp(0, 1)), n)
        last = self._decode_segment(prefix[:, -1])[:, -1]  # the previous segment's last frame
        return self._condition(last)

    def predict(self, x: torch.Tensor, d: int, j: int, context):
        if context is None:  # the text-to-video first segment
            return self._first_stepper._predict(x, j)
        pipe = self.pipe
        sched = self.schedules[d]
        t = sched.timesteps[j]
        n = x.shape[0]
        dtype = pipe.transformer.dtype
        inp = torch.cat([x, context["condition"].to(x.device)], dim=1).to(dtype)
        img = context.get("image_embeds")
        if self.cfg:
            inp = torch.cat([inp, inp])
            text = torch.cat([self.npe.expand(n, -1, -1), self.pe.expand(n, -1, -1)])
            img = None if img is None else torch.cat([img, img])
        else:
            text = self.pe.expand(n, -1, -1)
        out = pipe.transformer(hidden_states=inp, timestep=t.expand(inp.shape[0]).to(dtype), encoder_hidden_states=text,
                               encoder_hidden_states_image=img, return_dict=False)[0].to(x.dtype)
        if self.cfg:
            u, c = out.chunk(2)
            out = u + self.guidance * (c - u)
        sigma = float(sched.s[j])
        return x - sigma * out, x + (1 - sigma) * out

    def decode(self, segments: torch.Tensor) -> torch.Tensor:
        clips = []
        for d in range(segments.shape[1]):
            frames = self._decode_segment(segments[:, d])
            clips.append(frames[:, 1:] if d > 0 else frames)  # a continuation starts with its condition frame
        return torch.cat(clips, dim=1)


def _expand_rows(ctx: dict, n: int) -> dict:
    return {k: v.expand(n, *v.shape[1:]) if v.shape[0] == 1 else v for k, v in ctx.items()}

