"""PickScore (Kirstain et al. 2023): a CLIP ViT-H/14 fine-tuned on Pick-a-Pic human preferences.

The model is a transformers ``CLIPModel`` (``yuvalkirstain/PickScore_v1``) used with the
processor of the CLIP it was fine-tuned from (``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``).
The score is what the authors compute::

    image_embs = normalize(model.get_image_features(pixel_values))
    text_embs  = normalize(model.get_text_features(input_ids, attention_mask))
    score      = model.logit_scale.exp() * (image_embs * text_embs).sum(-1)

Images are preprocessed with torch ops on the (N, 3, H, W) [0, 1] tensors — the same code
path as :meth:`evosearch.rewards.clip_backbone.CLIPBackbone.preprocess` (via
:class:`TensorImagePreprocess`), configured from the processor's ``size`` / ``crop_size`` /
``image_mean`` / ``image_std`` / ``resample`` — instead of the processor's PIL pipeline.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F

from ..core.validation import check_int
from .base import Reward
from .clip import CLIPScore
from .clip_backbone import CLIPBackbone, _resolve_device, _to_pair

__all__ = ["PICKSCORE_MODEL", "PICKSCORE_PROCESSOR", "PickScore", "TensorImagePreprocess"]

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class TensorImagePreprocess:
    """Tensor image preprocessing for models that are not open_clip models.

    Runs :meth:`CLIPBackbone.preprocess` (the method itself, not a copy) with explicitly
    given settings: ``resize_mode`` ``"shortest"`` (resize the shorter side, centre-crop),
    ``"longest"`` (resize the longer side, pad with ``fill`` in [0, 1] units) or
    ``"squash"``; antialiased ``interpolation`` (``"bicubic"`` / ``"bilinear"``); then
    ``(x - mean) / std`` and a cast to ``dtype`` on ``device``.
    """

    _resize = CLIPBackbone._resize
    preprocess = CLIPBackbone.preprocess

    def __init__(self, size, mean: Sequence[float], std: Sequence[float], device, *, dtype=torch.float32,
                 interpolation: str = "bicubic", resize_mode: str = "shortest", fill: float = 0.0):
        if interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation: expected 'bicubic' or 'bilinear', got {interpolation!r}")
        if resize_mode not in ("shortest", "longest", "squash"):
            raise ValueError(f"resize_mode: expected 'shortest', 'longest' or 'squash', got {resize_mode!r}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.image_size = _to_pair(size)
        self.interpolation = interpolation
        self.resize_mode = resize_mode
        self.fill = float(fill)
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.preprocess(images)


def _from_pretrained(cls, source, param: str, **kwargs):
    """``cls.from_pretrained(source)`` with errors that name ``param``.

    ``source`` is a local ``save_pretrained`` folder or a Hugging Face hub id.
    """
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source:
        raise ValueError(f"{param}: expected a local folder or a Hugging Face hub id, got {source!r}")
    local = os.path.expanduser(source)
    if os.path.isdir(local):
        try:
            return cls.from_pretrained(local, **kwargs)
        except Exception as e:
            raise ValueError(f"{param}: could not load a transformers {cls.__name__} from folder {local}: {e}") from e
    if os.path.exists(local):
        raise ValueError(f"{param}: expected a save_pretrained folder or a hub id, got the file {local}")
    if not _HUB_ID.match(source):
        raise FileNotFoundError(f"{param}: folder not found (and not a hub id 'org/name'): {source}")
    try:
        return cls.from_pretrained(source, **kwargs)
    except Exception as e:
        raise OSError(f"{param}: {source!r} is not a local folder and could not be loaded from the Hugging Face "
                      f"hub as a transformers {cls.__name__}: {e}") from e


def _get(cfg, key):
    if cfg is None:
        return None
    if isinstance(cfg, dict):
        return cfg.get(key)
    return getattr(cfg, key, None)


def preprocess_from_image_processor(ip, device, dtype=torch.float32, param: str = "processor") -> TensorImagePreprocess:
    """A :class:`TensorImagePreprocess` equivalent to a transformers ``CLIPImageProcessor``'s inference path.

    Supported: ``size={"shortest_edge": s}`` with a centre crop to ``s x s`` (every CLIP
    processor on the hub), or ``size={"height": h, "width": w}`` (squash) with no crop or
    the same crop size. Anything else raises ValueError naming ``param``.
    """
    mean, std = getattr(ip, "image_mean", None), getattr(ip, "image_std", None)
    if mean is None or std is None or not getattr(ip, "do_normalize", True):
        raise ValueError(f"{param}: the image processor must normalise with image_mean/image_std, got "
                         f"do_normalize={getattr(ip, 'do_normalize', None)}, image_mean={mean}, image_std={std}")
    if isinstance(mean, (int, float)):
        mean = [float(mean)] * 3
    if isinstance(std, (int, float)):
        std = [float(std)] * 3
    resample = getattr(ip, "resample", 3)
    try:
        resample = int(resample)
    except (TypeError, ValueError):
        resample = -1
    interpolation = {2: "bilinear", 3: "bicubic"}.get(resample)
    if interpolation is None:
        raise ValueError(f"{param}: unsupported image processor resample={getattr(ip, 'resample', None)!r} "
                         "(allowed: 2 = bilinear, 3 = bicubic)")
    if not getattr(ip, "do_resize", True):
        raise ValueError(f"{param}: image processors with do_resize=False are not supported")
    size = getattr(ip, "size", None)
    crop = getattr(ip, "crop_size", None) if getattr(ip, "do_center_crop", False) else None
    crop_hw = (_get(crop, "height"), _get(crop, "width")) if crop is not None else None
    if isinstance(size, int):
        size = {"shortest_edge": size}
    shortest = _get(size, "shortest_edge")
    h, w = _get(size, "height"), _get(size, "width")
    if shortest is not None and crop_hw == (shortest, shortest):
        target, mode = (shortest, shortest), "shortest"
    elif h is not None and w is not None and crop_hw in (None, (h, w)):
        target, mode = (h, w), "squash"
    else:
        raise ValueError(f"{param}: unsupported image processor geometry size={size}, crop_size={crop} "
                         f"(do_center_crop={getattr(ip, 'do_center_crop', None)}); supported: shortest_edge "
                         "s with an s x s centre crop, or height/width without a different crop")
    return TensorImagePreprocess(target, mean, std, device, dtype=dtype, interpolation=interpolation,
                                 resize_mode=mode)


def _features(out) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers 4.x) or an output with ``pooler_output`` (5.x)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class PickScore(Reward):
    """PickScore: ``logit_scale.exp() * cos(image, text)`` under the PickScore CLIP.

    Scale: the released model's ``logit_scale.exp()`` is 100 (the CLIP training clamp), so
    scores are 100 x a cosine, in [-100, 100]; typical values for generated images are
    about 18-24, and differences of a fraction of a point are meaningful (the authors turn
    score differences into preference probabilities with a softmax over them).

    Args:
        model: a local ``CLIPModel.save_pretrained`` folder or a hub id (default
            ``yuvalkirstain/PickScore_v1``).
        processor: a local ``CLIPProcessor.save_pretrained`` folder or a hub id (default
            ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, the processor the authors use); its
            tokenizer encodes prompts (padding to the longest, truncation to the model's
            context length) and its image settings configure the tensor preprocessing.
        device: torch device; default CUDA when available, else CPU.
        batch_size: images (and new prompts) per forward pass.

    Text embeddings are cached per distinct prompt, as in :class:`CLIPScore`.
    """

    name = "pickscore"
    registry_name = "pickscore"
    summary = "PickScore human-preference score (CLIP ViT-H/14; hub weights or a model folder)"
    needs_weights = True

    @classmethod
    def from_checkpoint(cls, checkpoint=None, device="cpu") -> "PickScore":
        """PickScore from the hub, or a local model folder as ``model``."""
        return cls(model=checkpoint or PICKSCORE_MODEL, device=device)
    text_cache_size = CLIPScore.text_cache_size
    # the same per-prompt LRU cache as CLIPScore (it only needs self.clip.encode_texts)
    text_embeddings = CLIPScore.text_embeddings
    clear_text_cache = CLIPScore.clear_text_cache

    def __init__(self, model: str | os.PathLike = PICKSCORE_MODEL,
                 processor: str | os.PathLike = PICKSCORE_PROCESSOR, device=None, batch_size: int = 16):
        from transformers import CLIPModel, CLIPProcessor

        self.batch_size = check_int("batch_size", batch_size, lo=1)
        dev = _resolve_device(device)
        proc = _from_pretrained(CLIPProcessor, processor, "processor")
        net = _from_pretrained(CLIPModel, model, "model")
        self.model = net.to(dev).eval().requires_grad_(False)
        self.tokenizer = proc.tokenizer
        self.preprocess = preprocess_from_image_processor(proc.image_processor, dev, next(net.parameters()).dtype)
        self.max_length = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))
        vocab = int(self.model.config.text_config.vocab_size)
        if len(self.tokenizer) > vocab:
            raise ValueError(f"processor: its tokenizer has {len(self.tokenizer)} tokens but the model's text "
                             f"encoder only {vocab}; model and processor do not belong together")
        self._device = dev
        self.clip = self  # CLIPScore.text_embeddings calls self.clip.encode_texts
        self.model_source, self.processor_source = os.fspath(model), os.fspath(processor)
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().float().exp())

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (N, D), float32, on the model's device."""
        feats = _features(self.model.get_image_features(pixel_values=self.preprocess(images)))
        return F.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings (N, D), float32, on the model's device."""
        tok = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self._device)
        feats = _features(self.model.get_text_features(input_ids=tok["input_ids"],
                                                       attention_mask=tok["attention_mask"]))
        return F.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        text = self.text_embeddings(prompts)
        scale = self.model.logit_scale.detach().float().exp()
        scores = []
        for i in range(0, images.shape[0], self.batch_size):
            img = self.encode_images(images[i:i + self.batch_size])
            scores.append(scale * (img * text[i:i + img.shape[0]]).sum(-1))
        return torch.cat(scores).float().cpu()

    def __repr__(self) -> str:
        return (f"PickScore(model={self.model_source!r}, processor={self.processor_source!r}, "
                f"device='{self.device}')")
