"""ImageReward (Xu et al. 2023): a BLIP image-text encoder with an MLP head, trained on human rankings.

The network (BLIP's ViT-L/16 image encoder, its "MED" BERT text encoder cross-attending to the
image tokens, and an MLP head) and the released checkpoint's layout are described in
:mod:`evosearch.rewards.imagereward_model`, which also holds the builtin loader.

``score = (mlp(text_encoder(prompt, cross-attending to visual_encoder(image))[:, 0]) - mean) / std``
with ``mean = 0.16717362830052426`` and ``std = 1.0333394966054072``.

Two loaders:

- ``backend="package"``: the ``image-reward`` package (module ``ImageReward``) and its
  ``ImageReward.load``; our tensor preprocessing and batching drive its modules.
- ``backend="builtin"``: no extra dependency; :func:`~evosearch.rewards.imagereward_model.load_imagereward_builtin`
  maps the checkpoint onto transformers' ``BlipVisionModel`` and ``BlipTextModel``.

``backend="auto"`` uses the package when it can be imported, else the builtin loader.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import warnings
from typing import Sequence

import torch

from ..core.validation import check_choice, check_int
from .base import Reward
from .clip_backbone import _resolve_device
from .imagereward_model import ImageRewardModel, _prepare_tokenizer, load_imagereward_builtin
from .pickscore import TensorImagePreprocess

__all__ = [
    "IMAGEREWARD_HUB_REPO",
    "IMAGEREWARD_MEAN",
    "IMAGEREWARD_STD",
    "ImageReward",
    "ImageRewardModel",
    "load_imagereward_builtin",
]

IMAGEREWARD_HUB_REPO = "THUDM/ImageReward"
IMAGEREWARD_CHECKPOINT = "ImageReward.pt"
IMAGEREWARD_MED_CONFIG = "med_config.json"
IMAGEREWARD_TOKENIZER = "bert-base-uncased"
IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072
TEXT_MAX_LENGTH = 35  # ImageReward pads/truncates prompts to 35 tokens
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BACKENDS = ("auto", "package", "builtin")


class _PackageModel:
    """Adapter giving the ``image-reward`` package's model the builtin interface."""

    def __init__(self, model):
        self.model = model
        self.visual_encoder = model.blip.visual_encoder
        self.text_encoder = model.blip.text_encoder
        self.mlp = model.mlp

    def encode_images(self, pixel_values):
        return self.visual_encoder(pixel_values)

    def text_features(self, input_ids, attention_mask, image_embeds):
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = self.text_encoder(input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds,
                                encoder_attention_mask=image_atts, return_dict=True)
        return out.last_hidden_state[:, 0, :]


class ImageReward(Reward):
    """ImageReward: a learned human-preference score for text-to-image generations.

    Scale: the MLP output standardised with the training-set mean/std, so scores are
    roughly z-scores over generated images — typically in [-2, 2], about 0 for an average
    generation, higher is better (unbounded in principle).

    Args:
        checkpoint: a local ``ImageReward.pt`` (the released state dict with keys
            ``blip.visual_encoder.*``, ``blip.text_encoder.*``, ``mlp.layers.*``), or None to
            download ``ImageReward.pt`` from the hub repo ``THUDM/ImageReward``.
        med_config: the BLIP text-encoder config: a path to ``med_config.json`` or a dict. None:
            with ``checkpoint=None`` download ``med_config.json`` from ``THUDM/ImageReward``; with
            a local checkpoint the builtin loader infers it from the weights' shapes (BERT
            conventions: 64-dim heads, GELU, LayerNorm eps 1e-12 — the released config's values).
        device: torch device; default CUDA when available, else CPU.
        batch_size: (image, prompt) pairs per forward pass.
        tokenizer: a ``BertTokenizer`` folder or hub id (default ``bert-base-uncased``, as
            ImageReward), or a tokenizer object. Ignored by the package backend (it brings its own).
        backend: ``"auto"`` (the ``image-reward`` package when importable, else builtin),
            ``"package"`` or ``"builtin"``.

    Prompts cross-attend to the image inside the text encoder, so there is no per-prompt
    embedding to cache; each distinct prompt is tokenised once per call.
    """

    name = "imagereward"
    registry_name = "imagereward"
    summary = "ImageReward human-preference score (BLIP; ImageReward.pt from the hub or a checkpoint)"
    needs_weights = True

    def __init__(self, checkpoint: str | os.PathLike | None = None, med_config=None, device=None,
                 batch_size: int = 16, tokenizer=IMAGEREWARD_TOKENIZER, backend: str = "auto"):
        check_choice("backend", backend, BACKENDS)
        self.batch_size = check_int("batch_size", batch_size, lo=1)
        dev = _resolve_device(device)
        if checkpoint is not None:
            if isinstance(checkpoint, os.PathLike):
                checkpoint = os.fspath(checkpoint)
            if not isinstance(checkpoint, str) or not checkpoint:
                raise ValueError(f"checkpoint: expected a path to ImageReward.pt or None, got {checkpoint!r}")
            checkpoint = os.path.abspath(os.path.expanduser(checkpoint))
            if not os.path.isfile(checkpoint):
                raise FileNotFoundError(f"checkpoint: ImageReward checkpoint file not found: {checkpoint}")
        if med_config is not None and not isinstance(med_config, dict):
            med_config = os.path.abspath(os.path.expanduser(os.fspath(med_config)))
            if not os.path.isfile(med_config):
                raise FileNotFoundError(f"med_config: BLIP text-encoder config (med_config.json) not found: "
                                        f"{med_config}")

        package = None
        if backend in ("auto", "package"):
            try:
                import ImageReward as package  # noqa: N813 - the image-reward package's module name
            except ImportError as e:
                if backend == "package":
                    raise ImportError("backend: 'package' needs the image-reward package "
                                      f"(pip install image-reward): {e}") from e
                if importlib.util.find_spec("ImageReward") is not None:
                    warnings.warn(f"the image-reward package is installed but failed to import ({e}); "
                                  "using evosearch's builtin ImageReward loader", RuntimeWarning, stacklevel=2)
                package = None
        self.backend = "package" if package is not None else "builtin"

        if package is not None:
            if isinstance(med_config, dict):
                fd, tmp = tempfile.mkstemp(suffix=".json")
                with os.fdopen(fd, "w") as f:
                    json.dump(med_config, f)
                med_config = tmp
            model = package.load(checkpoint or "ImageReward-v1.0", device=dev, med_config=med_config)
            self.net = _PackageModel(model.eval().requires_grad_(False))
            self.tokenizer = model.blip.tokenizer
            self.mean = float(getattr(model, "mean", IMAGEREWARD_MEAN))
            self.std = float(getattr(model, "std", IMAGEREWARD_STD))
            size = getattr(getattr(model.blip.visual_encoder, "patch_embed", None), "img_size", 224)
        else:
            if checkpoint is None:
                from huggingface_hub import hf_hub_download

                checkpoint = hf_hub_download(IMAGEREWARD_HUB_REPO, IMAGEREWARD_CHECKPOINT)
                if med_config is None:
                    med_config = hf_hub_download(IMAGEREWARD_HUB_REPO, IMAGEREWARD_MED_CONFIG)
            net = load_imagereward_builtin(checkpoint, med_config)
            self.net = net.to(dev)
            self.tokenizer = _prepare_tokenizer(tokenizer)
            vocab = net.text_encoder.config.vocab_size
            if len(self.tokenizer) > vocab:
                raise ValueError(f"tokenizer: {len(self.tokenizer)} tokens (with [DEC]/[ENC]) but the text "
                                 f"encoder's vocabulary has {vocab}; use the checkpoint's tokenizer "
                                 f"({IMAGEREWARD_TOKENIZER!r} for the release)")
            self.mean, self.std = IMAGEREWARD_MEAN, IMAGEREWARD_STD
            size = net.visual_encoder.config.image_size
        dtype = next(self.net.mlp.parameters()).dtype
        # ImageReward's transform: Resize(224, bicubic) of the shorter side, CenterCrop(224), CLIP mean/std
        self.preprocess = TensorImagePreprocess(size, CLIP_MEAN, CLIP_STD, dev, dtype=dtype,
                                                interpolation="bicubic", resize_mode="shortest")
        self._device = dev
        self.checkpoint, self.med_config = checkpoint, med_config

    @property
    def device(self) -> torch.device:
        return self._device

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask (N, 35), as ImageReward: pad to 35, truncate."""
        unique = list(dict.fromkeys(prompts))
        tok = self.tokenizer(unique, padding="max_length", truncation=True, max_length=TEXT_MAX_LENGTH,
                             return_tensors="pt")
        index = torch.tensor([unique.index(p) for p in prompts])
        return tok["input_ids"][index].to(self._device), tok["attention_mask"][index].to(self._device)

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        ids, mask = self.tokenize(prompts)
        scores = []
        for i in range(0, images.shape[0], self.batch_size):
            j = min(i + self.batch_size, images.shape[0])
            image_embeds = self.net.encode_images(self.preprocess(images[i:j]))
            feats = self.net.text_features(ids[i:j], mask[i:j], image_embeds)
            raw = self.net.mlp(feats.float()).squeeze(-1)
            scores.append((raw - self.mean) / self.std)
        return torch.cat(scores).float().cpu()

    def __repr__(self) -> str:
        return f"ImageReward(checkpoint={self.checkpoint!r}, backend={self.backend!r}, device='{self.device}')"
