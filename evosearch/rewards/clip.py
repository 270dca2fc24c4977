"""CLIP-based rewards on open_clip: :class:`CLIPScore` and the LAION :class:`Aesthetic` predictor.

Both share one backbone loader (:func:`load_clip`) and one tensor preprocessing path
(:meth:`CLIPBackbone.preprocess`), in :mod:`evosearch.rewards.clip_backbone`; the aesthetic
head lives in :mod:`evosearch.rewards.aesthetic`. Every name is importable from here too.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Sequence

import torch

from ..core.validation import check_int
from .aesthetic import AESTHETIC_HUB_FILENAME, AESTHETIC_HUB_REPO, Aesthetic, AestheticMLP, load_aesthetic_mlp
from .base import Reward
from .clip_backbone import CLIPBackbone, load_clip

__all__ = [
    "AESTHETIC_HUB_FILENAME",
    "AESTHETIC_HUB_REPO",
    "Aesthetic",
    "AestheticMLP",
    "CLIPBackbone",
    "CLIPScore",
    "load_aesthetic_mlp",
    "load_clip",
]


class CLIPScore(Reward):
    """Image-text alignment: ``100 * cos(image_embedding, text_embedding)`` under an open_clip model.

    The score is the cosine similarity of the L2-normalised CLIP image and text embeddings,
    times 100 (the scale torchmetrics' CLIPScore uses), *without* clamping at 0: a clamp
    would discard ranking information between poor candidates, which search needs. Range
    [-100, 100]; typical values for a matching prompt are about 25-35 for OpenAI ViT-B/32.

    Args:
        model_name: an open_clip architecture (see ``open_clip.list_models()``), or
            ``"hf-hub:org/repo"`` / ``"local-dir:/path"``.
        pretrained: an open_clip pretrained tag for ``model_name`` (downloaded from the hub
            by open_clip) or a local checkpoint file (torch state dict or .safetensors).
        device: torch device for the model; default CUDA when available, else CPU.
        batch_size: images (and new prompts) encoded per forward pass.

    Text embeddings are cached per distinct prompt (up to ``text_cache_size`` entries,
    least recently used evicted), so scoring many candidates for one prompt encodes it once.
    """

    #: the cosine similarity is multiplied by this (CLIPScore's usual 100)
    score_scale: float = 100.0

    name = "clip_score"
    text_cache_size = 4096
    registry_name = "clip"
    summary = "CLIPScore (open_clip ViT; weights from the hub or --reward-checkpoint)"
    needs_weights = True

    @classmethod
    def from_checkpoint(cls, checkpoint=None, device="cpu") -> "CLIPScore":
        """ViT-B-32 with OpenAI's weights from the hub; a checkpoint file (open_clip or OpenAI state
        dict, .pt/.bin/.safetensors) of that architecture; or an open_clip model folder
        (open_clip_config.json + weights, the layout of hub repos), whose config names the architecture."""
        if checkpoint is None:
            return cls(device=device)
        if os.path.isdir(checkpoint):
            return cls(model_name=f"local-dir:{checkpoint}", device=device)
        return cls(pretrained=checkpoint, device=device)

    def __init__(self, model_name: str = "ViT-B-32", pretrained: str | os.PathLike | None = "openai",
                 device=None, batch_size: int = 32):
        self.batch_size = check_int("batch_size", batch_size, lo=1)
        self.model_name = model_name
        self.pretrained = pretrained
        self.clip = load_clip(model_name, pretrained, device)
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return self.clip.device

    def clear_text_cache(self) -> None:
        self._text_cache.clear()

    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """Normalised text embeddings (N, D) for ``prompts``, encoding only prompts not cached yet."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        for i in range(0, len(missing), self.batch_size):
            chunk = missing[i:i + self.batch_size]
            for p, e in zip(chunk, self.clip.encode_texts(chunk)):
                self._text_cache[p] = e
        out = []
        for p in prompts:
            self._text_cache.move_to_end(p)
            out.append(self._text_cache[p])
        while len(self._text_cache) > self.text_cache_size:
            self._text_cache.popitem(last=False)
        return torch.stack(out)

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        text = self.text_embeddings(prompts)
        scores = []
        for i in range(0, images.shape[0], self.batch_size):
            img = self.clip.encode_images(images[i:i + self.batch_size])
            scores.append(self.score_scale * (img * text[i:i + img.shape[0]]).sum(-1))
        return torch.cat(scores).float().cpu()

    def __repr__(self) -> str:
        return f"CLIPScore(model_name={self.model_name!r}, pretrained={self.pretrained!r}, device='{self.device}')"

