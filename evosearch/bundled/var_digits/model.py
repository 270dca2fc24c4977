"""The VAR digits world's model: a multi-scale residual tokenizer and a next-scale transformer.

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
  (:data:`~evosearch.bundled.digits.prompt.NULL_CLASS_LABEL`) is the unconditional class
  used by classifier-free guidance;
- :class:`VARDigitsModel`: both, saved together as ``config.json`` + ``model.safetensors``
  (weights: ``evosearch/bundled/assets/var_digits/``).

The pipeline and the adapter search drives are in :mod:`evosearch.bundled.var_digits.pipeline`.
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

from ..digits.prompt import NULL_CLASS_LABEL
from ..paths import asset_path

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ARCHITECTURE = "VARDigits"


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

        path = Path(path) if path is not None else asset_path("var_digits")
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
