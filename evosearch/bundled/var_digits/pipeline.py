"""The VAR digits world's pipeline: plain next-scale sampling, and the adapter search drives.

    >>> pipe = VARDigitsPipeline.from_pretrained()          # the bundled weights
    >>> out = pipe("digit 3", num_images_per_prompt=4, generator=torch.Generator().manual_seed(0))
    >>> out.images                                          # 4 PIL images, 16x16

With the default settings (guidance 1, temperature 1, no top-k/top-p) the model draws
the requested digit only part of the time, so test-time search has room; search drives
it through :class:`~evosearch.pipelines.var.VARStepper` (``stepper_family = "var"``),
which sees the model through :class:`VARDigitsAdapter`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...core.validation import check_choice, check_int, check_number
from ...pipelines.var import VARAdapter, VARState, filter_logits
from ..digits.prompt import NULL_CLASS_LABEL, parse_digit
from .model import VARDigitsModel


# -------------------------------------------------------------------------- adapter


class VARDigitsAdapter(VARAdapter):
    """The bundled model as a VARStepper sees it. KV rows are sample-major: a chunk of n
    samples runs as n * G rows (sample 0 cond, sample 0 uncond, sample 1 cond, ...), so the
    state's (n, G, heads, L, head_dim) caches are plain views of the module's rows."""

    def __init__(self, model: VARDigitsModel):
        self.model = model
        self.module = model.transformer
        self.num_scales = len(model.patch_nums)
        self.categories = model.vq.vocab_size
        c = model.config
        self.default_guidance_scale = float(c.get("default_guidance_scale", 1.0))
        self.default_temperature = float(c.get("default_temperature", 1.0))
        self.default_top_k = int(c.get("default_top_k", 0))
        self.default_top_p = float(c.get("default_top_p", 0.0))
        self.default_cfg_schedule = "constant"

    def tokens_at(self, k: int) -> int:
        return self.model.patch_nums[k] ** 2

    def encode(self, prompt, negative_prompt=None):
        if negative_prompt not in (None, ""):
            raise ValueError("negative_prompt: the digits model has no negative prompt (guidance uses the null "
                             "class); pass None")
        return torch.tensor([parse_digit(prompt)], dtype=torch.long)

    def init_state(self, n: int, cond) -> VARState:
        vq = self.model.vq
        return VARState(0, torch.zeros(n, vq.latent_channels, vq.grid, vq.grid, device=self.device))

    def forward(self, state, k, cond, cfg):
        n, g = len(state), (2 if cfg else 1)
        label = cond.to(self.device).reshape(1)
        labels = torch.stack([label.expand(n), torch.full((n,), NULL_CLASS_LABEL, device=self.device)], 1) if cfg \
            else label.expand(n)[:, None]
        labels = labels.reshape(n * g)
        nxt = None if state.next_input is None else state.next_input.repeat_interleave(g, dim=0)
        cache = None
        if state.kv:
            cache = [(state.kv[2 * j].reshape(n * g, *state.kv[2 * j].shape[2:]),
                      state.kv[2 * j + 1].reshape(n * g, *state.kv[2 * j + 1].shape[2:]))
                     for j in range(len(state.kv) // 2)]
        logits, new = self.module.forward_scale(k, labels, nxt, cache)
        kv = []
        for kk, vv in new:
            kv += [kk.reshape(n, g, *kk.shape[1:]), vv.reshape(n, g, *vv.shape[1:])]
        logits = logits.reshape(n, g, *logits.shape[1:])
        return logits[:, 0], (logits[:, 1] if cfg else None), tuple(kv)

    def update(self, state, k, idx, kv):
        vq = self.model.vq
        f_hat = state.f_hat + vq.scale_features(k, idx)
        return VARState(k + 1, f_hat, vq.next_input(f_hat, k), kv, state.tokens + (idx,), dict(state.extra))

    def decode(self, state):
        return self.model.vq.decode(state.f_hat)


# ------------------------------------------------------------------------- pipeline


class VARDigitsPipeline:
    """Class-conditional next-scale sampling of 16x16 digits (a diffusers-style pipeline object).

    ``VARDigitsPipeline.from_pretrained()`` loads the bundled weights; ``pipe(prompt,
    num_images_per_prompt, guidance_scale, top_k, top_p, temperature, generator,
    output_type)`` samples plainly (``torch.multinomial`` with ``generator``);
    ``SearchPipeline.from_pipe(pipe, reward, method=TTSVAR())`` searches (``stepper_family = "var"``).
    """

    stepper_family = "var"
    null_class_label = NULL_CLASS_LABEL
    parse_digit = staticmethod(parse_digit)

    def check_prompt(self, prompt) -> int:
        """The digit ``prompt`` asks for, or a ValueError naming ``prompt`` (before any compute)."""
        return parse_digit(prompt)

    def default_judge(self):
        """The world's judge (a SearchPipeline uses it unless told otherwise)."""
        from ..digits.judge import DigitJudge

        return DigitJudge()

    def __init__(self, model: VARDigitsModel):
        self.model = model.eval()
        self._progress = {}

    # -- loading ------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | torch.device = "cpu") -> "VARDigitsPipeline":
        return cls(VARDigitsModel.from_pretrained(path, device=device))

    def save_pretrained(self, path: str | Path, **kwargs) -> Path:
        return self.model.save_pretrained(path, **kwargs)

    def to(self, device) -> "VARDigitsPipeline":
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def set_progress_bar_config(self, **kwargs) -> None:  # diffusers-pipeline compatibility (no bar here)
        self._progress.update(kwargs)

    @property
    def default_num_inference_steps(self) -> int:
        return len(self.model.patch_nums)

    @property
    def default_guidance_scale(self) -> float:
        return float(self.model.config.get("default_guidance_scale", 1.0))

    def var_adapter(self) -> VARDigitsAdapter:
        return VARDigitsAdapter(self.model)

    # -- plain sampling ------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt, num_images_per_prompt: int = 1, guidance_scale: float | None = None,
                 top_k: int | None = None, top_p: float | None = None, temperature: float | None = None,
                 generator: torch.Generator | None = None, output_type: str = "pil", return_dict: bool = True):
        from diffusers import ImagePipelineOutput

        prompts = list(prompt) if isinstance(prompt, (list, tuple)) else [prompt]
        if not prompts:
            raise ValueError("prompt: expected at least one prompt, got an empty list")
        check_int("num_images_per_prompt", num_images_per_prompt, lo=1)
        check_choice("output_type", output_type, ("pil", "np", "pt"))
        c = self.model.config
        g = check_number("guidance_scale", c.get("default_guidance_scale", 1.0) if guidance_scale is None
                         else guidance_scale, lo=0)
        top_k = check_int("top_k", c.get("default_top_k", 0) if top_k is None else top_k, lo=0)
        top_p = check_number("top_p", c.get("default_top_p", 0.0) if top_p is None else top_p, lo=0, hi=1)
        temperature = check_number("temperature", c.get("default_temperature", 1.0) if temperature is None
                                   else temperature, lo=0)
        device = self.device
        labels = torch.tensor([parse_digit(p) for p in prompts], device=device).repeat_interleave(num_images_per_prompt)
        n = labels.shape[0]
        tf, vq = self.model.transformer, self.model.vq
        cfg = g != 1.0
        rows = torch.stack([labels, torch.full_like(labels, NULL_CLASS_LABEL)], 1).reshape(-1) if cfg else labels
        f_hat = torch.zeros(n, vq.latent_channels, vq.grid, vq.grid, device=device)
        cache, nxt = None, None
        for k in range(tf.num_scales):
            x_in = None if nxt is None else (nxt.repeat_interleave(2, 0) if cfg else nxt)
            logits, cache = tf.forward_scale(k, rows, x_in, cache)
            if cfg:
                lc, lu = logits.reshape(n, 2, *logits.shape[1:]).unbind(1)
                logits = lu + g * (lc - lu)
            if temperature == 0 or top_k == 1:
                idx = logits.argmax(-1)
            else:
                probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(-1)
                idx = torch.multinomial(probs.reshape(-1, probs.shape[-1]).cpu(), 1, generator=generator)
                idx = idx.reshape(n, -1).to(device)
            f_hat = f_hat + vq.scale_features(k, idx)
            nxt = vq.next_input(f_hat, k)
        image = vq.decode(f_hat).cpu()
        if output_type == "pt":
            images = image
        else:
            images = image.permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                from PIL import Image

                images = [Image.fromarray((a[..., 0] * 255).round().clip(0, 255).astype(np.uint8), mode="L")
                          for a in images]
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


def load_var_digits_pipeline(device: str | torch.device = "cpu", path: str | Path | None = None) -> VARDigitsPipeline:
    """The bundled VAR digits pipeline (or one saved at ``path``), on ``device``."""
    return VARDigitsPipeline.from_pretrained(path, device=device)
