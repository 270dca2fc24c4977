"""The bundled next-scale ("VAR") digits model and its pipeline.

A small class-conditional visual autoregressive model in the style of VAR (Tian et al.
2024), trained by ``scripts/train_var_digits.py`` on scikit-learn's ``load_digits``
(the fixed train split, upsampled to 16x16):

- :class:`MultiScaleVQ`: a conv encoder (16x16x1 -> 8x8xC), a multi-scale residual
  quantiser with one shared codebook (token maps of side ``patch_nums``, default
  1, 2, 3, 4, 6, 8; each scale quantises the area-downsampled residual, its embeddings
  are bicubic-upsampled, refined by a shared 3x3 conv ``phi`` and added to ``f_hat``)
  and a conv decoder (8x8xC -> 16x16x1);
- :class:`NextScaleTransformer`: a small transformer with adaptive layer norm on the
  class embedding; scale k's tokens attend to every token of scales <= k (block-causal,
  a KV cache at inference). The first scale's input is the class embedding; scale k's
  input is ``f_hat`` so far, area-downsampled to scale k. Label 10
  (:data:`NULL_CLASS_LABEL`) is the unconditional class used by classifier-free guidance.

Weights: ``evosearch/assets/var_digits/`` (``config.json`` + ``model.safetensors``).

    >>> pipe = VARDigitsPipeline.from_pretrained()          # the bundled weights
    >>> out = pipe("digit 3", num_images_per_prompt=4, generator=torch.Generator().manual_seed(0))
    >>> out.images                                          # 4 PIL images, 16x16

With the default settings (guidance 1, temperature 1, no top-k/top-p) the model draws
the requested digit only part of the time, so test-time search has room; search drives
it through :class:`~evosearch.pipelines.var.VARStepper` (``stepper_family = "var"``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .digits import NULL_CLASS_LABEL, parse_digit
from .var import VARAdapter, VARState, VARStepper

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ARCHITECTURE = "VARDigits"


def bundled_var_digits_path() -> Path:
    """The folder of the bundled VAR digits model."""
    return Path(__file__).resolve().parent.parent / "assets" / "var_digits"


# ------------------------------------------------------------------------ tokenizer


class MultiScaleVQ(nn.Module):
    """Conv autoencoder with a VAR-style multi-scale residual quantiser (one shared codebook)."""

    def __init__(self, image_size: int = 16, hidden: int = 32, latent_channels: int = 8, vocab_size: int = 64,
                 patch_nums: Sequence[int] = (1, 2, 3, 4, 6, 8), phi_ratio: float = 0.5, beta: float = 0.25):
        super().__init__()
        self.image_size, self.latent_channels, self.vocab_size = image_size, latent_channels, vocab_size
        self.patch_nums = tuple(int(p) for p in patch_nums)
        self.grid = image_size // 2
        if self.patch_nums[-1] != self.grid:
            raise ValueError(f"patch_nums: the last scale must be the latent grid {self.grid}, got {self.patch_nums}")
        self.phi_ratio, self.beta = phi_ratio, beta
        h = hidden
        self.encoder = nn.Sequential(
            nn.Conv2d(1, h // 2, 3, padding=1), nn.SiLU(),
            nn.Conv2d(h // 2, h, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(h, h, 3, padding=1), nn.SiLU(),
            nn.Conv2d(h, latent_channels, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, h, 3, padding=1), nn.SiLU(),
            nn.Conv2d(h, h, 3, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(h, h // 2, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(h // 2, 1, 3, padding=1),
        )
        self.embedding = nn.Embedding(vocab_size, latent_channels)
        self.phi = nn.Conv2d(latent_channels, latent_channels, 3, padding=1)

    # -- pieces --------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, H, W) in [0, 1] -> features (B, C, grid, grid)."""
        return self.encoder(images * 2 - 1)

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Features (B, C, grid, grid) -> images (B, 1, H, W) in [0, 1]."""
        return (self.decoder(f_hat).clamp(-1, 1) + 1) / 2

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest codebook entry of each vector of z (B, C, h, w) -> indices (B, h * w)."""
        B, C, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, C)
        e = self.embedding.weight
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)[None]
        return d.argmin(1).reshape(B, h * w)

    def scale_features(self, k: int, idx: torch.Tensor) -> torch.Tensor:
        """The contribution of scale k's tokens (B, pn^2) to f_hat: embed, upsample to the grid, phi."""
        pn = self.patch_nums[k]
        B = idx.shape[0]
        h = self.embedding(idx).transpose(1, 2).reshape(B, self.latent_channels, pn, pn)
        if pn != self.grid:
            h = F.interpolate(h, size=(self.grid, self.grid), mode="bicubic", align_corners=False)
        return h * (1 - self.phi_ratio) + self.phi(h) * self.phi_ratio

    def next_input(self, f_hat: torch.Tensor, k: int) -> torch.Tensor | None:
        """Input of scale k + 1: f_hat area-downsampled to its grid, (B, pn^2, C); None after the last scale."""
        if k + 1 >= len(self.patch_nums):
            return None
        pn = self.patch_nums[k + 1]
        x = f_hat if pn == self.grid else F.interpolate(f_hat, size=(pn, pn), mode="area")
        return x.flatten(2).transpose(1, 2)

    # -- training ------------------------------------------------------------------
    def quantize(self, f: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """(f_hat with straight-through gradients, token maps per scale, VQ loss)."""
        f_rest = f.detach().clone()
        f_hat = torch.zeros_like(f)
        idx_list, loss = [], f.new_zeros(())
        for k, pn in enumerate(self.patch_nums):
            z = f_rest if pn == self.grid else F.interpolate(f_rest, size=(pn, pn), mode="area")
            idx = self.lookup(z)
            h = self.scale_features(k, idx)
            f_hat = f_hat + h
            f_rest = f_rest - h.detach()
            idx_list.append(idx)
            loss = loss + F.mse_loss(f_hat, f.detach()) + self.beta * F.mse_loss(f_hat.detach(), f)
        loss = loss / len(self.patch_nums)
        f_hat = f_hat.detach() - f.detach() + f  # straight-through to the encoder
        return f_hat, idx_list, loss

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Token maps (B, pn^2) per scale of images (B, 1, H, W) in [0, 1]."""
        f_rest = self.encode(images)
        idx_list = []
        for k, pn in enumerate(self.patch_nums):
            z = f_rest if pn == self.grid else F.interpolate(f_rest, size=(pn, pn), mode="area")
            idx = self.lookup(z)
            f_rest = f_rest - self.scale_features(k, idx)
            idx_list.append(idx)
        return idx_list

    @torch.no_grad()
    def teacher_inputs(self, idx_list: list[torch.Tensor]) -> torch.Tensor:
        """Transformer inputs of scales 1..K-1 (B, L - 1, C) from the token maps of every scale."""
        f_hat = torch.zeros(idx_list[0].shape[0], self.latent_channels, self.grid, self.grid)
        out = []
        for k in range(len(self.patch_nums) - 1):
            f_hat = f_hat + self.scale_features(k, idx_list[k])
            out.append(self.next_input(f_hat, k))
        return torch.cat(out, dim=1)


# ---------------------------------------------------------------------- transformer


class AdaLNBlock(nn.Module):
    """Pre-norm self-attention + MLP block, norms modulated by the class embedding (adaLN-zero)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.ada = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x, cond, attn_mask=None, cache: tuple[torch.Tensor, torch.Tensor] | None = None):
        """x (B, L, D), cond (B, D); ``cache`` (k, v) each (B, heads, L0, D/heads) of earlier scales.
        Returns (x, (k, v) including this call's keys and values)."""
        B, L, D = x.shape
        g1, g2, s1, s2, b1, b2 = self.ada(F.silu(cond)).unsqueeze(1).chunk(6, dim=-1)
        h = self.norm(x) * (1 + s1) + b1
        q, k, v = self.qkv(h).reshape(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x + g1 * self.proj(a.transpose(1, 2).reshape(B, L, D))
        x = x + g2 * self.fc2(F.gelu(self.fc1(self.norm(x) * (1 + s2) + b2), approximate="tanh"))
        return x, (k, v)


class NextScaleTransformer(nn.Module):
    """Predicts each scale's tokens from the class and every coarser scale (block-causal)."""

    def __init__(self, patch_nums: Sequence[int], latent_channels: int, vocab_size: int, dim: int = 128,
                 depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0, num_classes: int = 10):
        super().__init__()
        self.patch_nums = tuple(int(p) for p in patch_nums)
        self.num_classes, self.vocab_size, self.dim = num_classes, vocab_size, dim
        lens = [p * p for p in self.patch_nums]
        self.L = sum(lens)
        ends = np.cumsum(lens)
        self.begin_ends = [(int(e - n), int(e)) for n, e in zip(lens, ends)]
        std = math.sqrt(1 / dim / 3)
        self.class_emb = nn.Embedding(num_classes + 1, dim)  # + the null class
        self.pos = nn.Parameter(torch.randn(1, self.L, dim) * std)
        self.lvl = nn.Embedding(len(self.patch_nums), dim)
        self.word_embed = nn.Linear(latent_channels, dim)
        self.blocks = nn.ModuleList([AdaLNBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.head_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.head_ada = nn.Linear(dim, 2 * dim)
        self.head = nn.Linear(dim, vocab_size)
        for emb in (self.class_emb, self.lvl):
            nn.init.trunc_normal_(emb.weight, std=std)
        levels = torch.cat([torch.full((n,), k) for k, n in enumerate(lens)])
        self.register_buffer("levels", levels, persistent=False)
        self.register_buffer("block_mask", levels[:, None] >= levels[None, :], persistent=False)

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    def embed(self, k: int, labels: torch.Tensor, next_input: torch.Tensor | None) -> torch.Tensor:
        """Input tokens of scale k (B, pn_k^2, D): the class embedding (k = 0) or the embedded f_hat."""
        bg, ed = self.begin_ends[k]
        if k == 0:
            x = self.class_emb(labels)[:, None].expand(-1, ed - bg, -1)
        else:
            x = self.word_embed(next_input)
        return x + self.pos[:, bg:ed] + self.lvl.weight[k]

    def logits(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.head_ada(F.silu(cond)).unsqueeze(1).chunk(2, dim=-1)
        return self.head(self.head_norm(x) * (1 + scale) + shift)

    def forward(self, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: labels (B,), inputs of scales 1..K-1 (B, L - 1, C) -> logits (B, L, V)."""
        cond = self.class_emb(labels)
        first = self.begin_ends[0][1]
        x = torch.cat([self.embed(0, labels, None), self.word_embed(inputs) + self.pos[:, first:] +
                       self.lvl(self.levels[first:])[None]], dim=1)
        for blk in self.blocks:
            x, _ = blk(x, cond, attn_mask=self.block_mask)
        return self.logits(x, cond)

    def forward_scale(self, k: int, labels: torch.Tensor, next_input: torch.Tensor | None,
                      cache: list[tuple[torch.Tensor, torch.Tensor]] | None):
        """One scale with a KV cache: (logits (B, pn_k^2, V), the caches with scale k appended)."""
        cond = self.class_emb(labels)
        x = self.embed(k, labels, next_input)
        new = []
        for j, blk in enumerate(self.blocks):
            x, kv = blk(x, cond, cache=None if cache is None else cache[j])
            new.append(kv)
        return self.logits(x, cond), new


class VARDigitsModel(nn.Module):
    """The tokenizer and the transformer, saved together as config.json + model.safetensors."""

    def __init__(self, image_size: int = 16, hidden: int = 32, latent_channels: int = 8, vocab_size: int = 64,
                 patch_nums: Sequence[int] = (1, 2, 3, 4, 6, 8), dim: int = 128, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 4.0, num_classes: int = 10, phi_ratio: float = 0.5, beta: float = 0.25,
                 default_guidance_scale: float = 1.0, default_temperature: float = 1.0, default_top_k: int = 0,
                 default_top_p: float = 0.0, **extra):
        super().__init__()
        self.config = dict(architecture=ARCHITECTURE, image_size=image_size, hidden=hidden,
                           latent_channels=latent_channels, vocab_size=vocab_size, patch_nums=list(patch_nums),
                           dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio, num_classes=num_classes,
                           phi_ratio=phi_ratio, beta=beta, null_class_label=NULL_CLASS_LABEL,
                           default_guidance_scale=default_guidance_scale, default_temperature=default_temperature,
                           default_top_k=default_top_k, default_top_p=default_top_p, **extra)
        self.vq = MultiScaleVQ(image_size, hidden, latent_channels, vocab_size, patch_nums, phi_ratio, beta)
        self.transformer = NextScaleTransformer(patch_nums, latent_channels, vocab_size, dim, depth, heads, mlp_ratio,
                                                num_classes)

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.vq.patch_nums

    def save_pretrained(self, path: str | Path, extra: dict | None = None, dtype: torch.dtype = torch.float16) -> Path:
        """Write config.json and model.safetensors (weights stored as ``dtype``) into the folder ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = dict(self.config, weights_dtype=str(dtype).replace("torch.", ""), **(extra or {}))
        (path / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file({k: v.detach().cpu().to(dtype).contiguous() for k, v in self.state_dict().items()},
                  str(path / WEIGHTS_NAME))
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | torch.device = "cpu") -> "VARDigitsModel":
        """Load from a folder with config.json + model.safetensors (default: the bundled weights); float32."""
        from safetensors.torch import load_file

        path = Path(path) if path is not None else bundled_var_digits_path()
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"path: no VAR digits model at {path} (expected {CONFIG_NAME} + {WEIGHTS_NAME}); "
                                    "run scripts/train_var_digits.py")
        config = json.loads((path / CONFIG_NAME).read_text())
        if config.get("architecture") != ARCHITECTURE:
            raise ValueError(f"path: {path / CONFIG_NAME} is not a {ARCHITECTURE} config "
                             f"(architecture={config.get('architecture')!r})")
        kwargs = {k: v for k, v in config.items() if k not in ("architecture", "null_class_label", "weights_dtype")}
        model = cls(**kwargs)
        state = {k: v.float() for k, v in load_file(str(path / WEIGHTS_NAME)).items()}
        model.load_state_dict(state)
        return model.eval().to(device)


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

        from .var import filter_logits

        prompts = list(prompt) if isinstance(prompt, (list, tuple)) else [prompt]
        if not prompts:
            raise ValueError("prompt: expected at least one prompt, got an empty list")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt: expected an int >= 1, got {num_images_per_prompt!r}")
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type: expected one of 'pil', 'np', 'pt', got {output_type!r}")
        c = self.model.config
        g = float(c.get("default_guidance_scale", 1.0) if guidance_scale is None else guidance_scale)
        if not math.isfinite(g) or g < 0:
            raise ValueError(f"guidance_scale: expected a finite float >= 0, got {guidance_scale!r}")
        top_k = int(c.get("default_top_k", 0) if top_k is None else top_k)
        top_p = float(c.get("default_top_p", 0.0) if top_p is None else top_p)
        temperature = float(c.get("default_temperature", 1.0) if temperature is None else temperature)
        if top_k < 0 or not 0 <= top_p <= 1 or temperature < 0:
            raise ValueError(f"top_k/top_p/temperature: expected top_k >= 0, top_p in [0, 1], temperature >= 0, "
                             f"got {top_k}, {top_p}, {temperature}")
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


__all__ = ["VARDigitsPipeline", "VARDigitsModel", "VARDigitsAdapter", "MultiScaleVQ", "NextScaleTransformer",
           "load_var_digits_pipeline", "bundled_var_digits_path", "VARStepper"]
