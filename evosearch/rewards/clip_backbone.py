"""The open_clip backbone shared by the CLIP-based rewards (:mod:`evosearch.rewards.clip`,
:mod:`evosearch.rewards.aesthetic`, :mod:`evosearch.rewards.hps`, :mod:`evosearch.rewards.pickscore`).

One backbone loader (:func:`load_clip`) and one tensor preprocessing path
(:meth:`CLIPBackbone.preprocess`): images arrive as float tensors (N, 3, H, W) in [0, 1]
and are resized / centre-cropped / normalised with torch ops, exactly following the
model's ``preprocess_cfg`` (size, mean, std, interpolation, resize mode) — no PIL round trip,
so no uint8 quantisation and no per-image Python loop.

Weights come from an open_clip pretrained tag (downloaded by open_clip from the hub), from
a local checkpoint file (``.pt``/``.pth``/``.bin`` torch state dict or ``.safetensors``, in
open_clip's own format or OpenAI's), or, with ``model_name="hf-hub:org/repo"`` /
``"local-dir:/path"``, from an open_clip model folder (config + weights).
"""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CLIPBackbone", "load_clip"]

_SCHEMAS = ("hf-hub:", "local-dir:")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")


def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: not a valid torch device: {device!r}") from e


def _looks_like_path(s: str) -> bool:
    return (
        os.sep in s
        or (os.altsep is not None and os.altsep in s)
        or s.startswith(("~", "."))
        or s.lower().endswith(_CHECKPOINT_SUFFIXES)
    )


def _to_pair(size) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    return (size[0], size[0]) if len(size) == 1 else (size[-2], size[-1])


class CLIPBackbone:
    """An open_clip model in eval mode with its tokenizer and tensor preprocessing.

    Built by :func:`load_clip`; shared by every reward that asks for the same model,
    checkpoint and device while any of them is alive.
    """

    def __init__(self, model: nn.Module, tokenizer, device: torch.device, description: str):
        import open_clip

        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = device
        self.description = description
        cfg = dict(open_clip.get_model_preprocess_cfg(model))
        self.preprocess_cfg = cfg
        self.image_size = _to_pair(cfg.get("size", 224))
        self.interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
        self.resize_mode = cfg.get("resize_mode") or "shortest"
        if self.resize_mode not in ("shortest", "longest", "squash"):
            raise ValueError(f"preprocess_cfg: unsupported resize_mode {self.resize_mode!r} "
                             "(allowed: 'shortest', 'longest', 'squash')")
        self.fill = float(cfg.get("fill_color", 0) or 0) / 255.0
        mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.embed_dim = self._find_embed_dim()

    def _find_embed_dim(self) -> int:
        dim = getattr(self.model.visual, "output_dim", None)
        if isinstance(dim, int):
            return dim
        with torch.no_grad():
            probe = torch.zeros(1, 3, *self.image_size, device=self.device)
            return int(self.model.encode_image(probe).shape[-1])

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size=size, mode=self.interpolation, align_corners=False, antialias=True)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float in [0, 1] -> normalised model input (N, 3, S, S) on the model's device.

        Mirrors open_clip's inference transform: ``shortest`` resizes the shorter side to
        the target and centre-crops, ``longest`` resizes the longer side and pads with
        ``fill_color``, ``squash`` resizes both sides; antialiased bicubic (or bilinear)
        interpolation, clamped back to [0, 1] as an 8-bit image would be, then
        ``(x - mean) / std``.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected shape (N, 3, H, W), got {tuple(images.shape)}")
        x = images.to(device=self.device, dtype=torch.float32)
        th, tw = self.image_size
        h, w = x.shape[-2:]
        if self.resize_mode == "squash":
            x = self._resize(x, (th, tw))
        else:
            ratio_h, ratio_w = h / th, w / tw
            ratio = min(ratio_h, ratio_w) if self.resize_mode == "shortest" else max(ratio_h, ratio_w)
            if self.resize_mode == "shortest" and th == tw:
                # torchvision Resize(int): shorter side exactly th, longer side truncated
                new = (th, int(th * w / h)) if h <= w else (int(tw * h / w), tw)
            else:
                new = (round(h / ratio), round(w / ratio))
            x = self._resize(x, new)
            h, w = x.shape[-2:]
            if h < th or w < tw:  # pad to at least the target, centred (open_clip's CenterCropOrPad)
                pad_t, pad_l = max(th - h, 0) // 2, max(tw - w, 0) // 2
                pad_b, pad_r = max(th - h, 0) - pad_t, max(tw - w, 0) - pad_l
                x = F.pad(x, (pad_l, pad_r, pad_t, pad_b), value=self.fill)
                h, w = x.shape[-2:]
            top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
            x = x[..., top:top + th, left:left + tw]
        x = x.clamp(0.0, 1.0)
        return ((x - self.mean) / self.std).to(self.dtype)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (N, D), float32, on the model's device."""
        feats = self.model.encode_image(self.preprocess(images))
        return F.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings (N, D), float32, on the model's device."""
        tokens = self.tokenizer(list(prompts)).to(self.device)
        feats = self.model.encode_text(tokens)
        return F.normalize(feats.float(), dim=-1)


_BACKBONES: "weakref.WeakValueDictionary[tuple, CLIPBackbone]" = weakref.WeakValueDictionary()
_BACKBONES_LOCK = threading.Lock()


def _resolve_pretrained(name: str, pretrained: str | os.PathLike | None):
    """Validate ``pretrained`` for a built-in/registered model name: (value for open_clip, cache key)."""
    import open_clip

    if pretrained is None:
        return None, None
    if isinstance(pretrained, os.PathLike):
        pretrained = os.fspath(pretrained)
    if not isinstance(pretrained, str) or not pretrained:
        raise ValueError(f"pretrained: expected an open_clip pretrained tag or a checkpoint path, got {pretrained!r}")
    expanded = os.path.expanduser(pretrained)
    if os.path.isfile(expanded):
        st = os.stat(expanded)
        path = os.path.abspath(expanded)
        return path, ("file", path, st.st_mtime_ns, st.st_size)
    if open_clip.get_pretrained_cfg(name, pretrained):
        return pretrained, ("tag", pretrained)
    if _looks_like_path(pretrained):
        raise FileNotFoundError(f"pretrained: checkpoint file not found: {pretrained}")
    tags = open_clip.list_pretrained_tags_by_model(name)
    raise ValueError(
        f"pretrained: {pretrained!r} is neither an existing checkpoint file nor a pretrained tag of "
        f"open_clip model {name!r}; allowed tags: {tags or 'none (pass a local checkpoint path)'} "
        "(see open_clip.list_pretrained_tags_by_model(model_name))"
    )


def load_clip(model_name: str, pretrained: str | os.PathLike | None, device=None) -> CLIPBackbone:
    """Load (or reuse) an open_clip model, its tokenizer and preprocessing.

    ``model_name`` is an open_clip architecture (``open_clip.list_models()``, or one
    registered with ``open_clip.add_model_config``), or ``"hf-hub:org/repo"`` /
    ``"local-dir:/path"`` (config and weights from there; ``pretrained`` is then ignored).
    ``pretrained`` is an open_clip pretrained tag (``open_clip.list_pretrained_tags_by_model``),
    a local checkpoint file, or None for random weights (only useful for testing).
    The model is put in eval mode with gradients off. Backbones are shared between rewards
    asking for the same (model, weights, device) while any of them is alive.
    """
    import open_clip

    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"model_name: expected an open_clip model name, got {model_name!r}")
    dev = _resolve_device(device)
    schema = next((s for s in _SCHEMAS if model_name.startswith(s)), None)
    if schema is None:
        name = model_name.replace("/", "-")
        if name not in open_clip.list_models():
            raise ValueError(
                f"model_name: unknown open_clip model {model_name!r}; see open_clip.list_models() for "
                "the allowed names, register a config with open_clip.add_model_config(path), or use "
                "'hf-hub:org/repo' / 'local-dir:/path/to/folder'"
            )
        pretrained_arg, weights_key = _resolve_pretrained(name, pretrained)
    else:
        name, pretrained_arg = model_name, None
        if schema == "local-dir:":
            folder = os.path.expanduser(model_name[len(schema):])
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"model_name: local-dir folder not found: {folder}")
            cfg_file = Path(folder) / "open_clip_config.json"
            if not cfg_file.is_file():
                raise FileNotFoundError(f"model_name: local-dir folder has no open_clip_config.json: {cfg_file}")
            weights_key = ("dir", os.path.abspath(folder), cfg_file.stat().st_mtime_ns)
        else:
            weights_key = ("hub", model_name)

    key = (name, weights_key, str(dev))
    with _BACKBONES_LOCK:
        backbone = _BACKBONES.get(key)
        if backbone is not None:
            return backbone
        try:
            model = open_clip.create_model(name, pretrained=pretrained_arg, device=dev)
        except RuntimeError as e:
            if pretrained_arg is not None and os.path.isfile(pretrained_arg):
                raise ValueError(
                    f"pretrained: checkpoint {pretrained_arg} does not fit open_clip model {name!r}: {e}"
                ) from e
            raise
        tokenizer = open_clip.get_tokenizer(name)
        backbone = CLIPBackbone(model, tokenizer, dev, f"{model_name}:{pretrained}")
        _BACKBONES[key] = backbone
        return backbone
