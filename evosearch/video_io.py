"""Writing videos: ``export_video(frames, path, fps)`` as MP4 (with imageio-ffmpeg) or GIF.

    >>> from evosearch import export_video
    >>> export_video(out.videos[0], "best.mp4", fps=8)   # falls back to best.gif without imageio-ffmpeg

Frames may be a list of PIL images, a tensor (F, 3, H, W) / (F, H, W) float in [0, 1] or uint8,
or an array (F, H, W, 3) / (F, H, W) float in [0, 1] or uint8. Tiny frames (the bundled
16x16 moving digits) are enlarged with nearest-neighbour to at least ``min_size`` pixels,
and MP4 sizes are padded to a multiple of 16 (what H.264 encoders want). Files are
written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .core.validation import check_choice, check_number
from .io import atomic_path

__all__ = ["export_video", "has_ffmpeg", "frames_to_uint8", "VIDEO_FORMATS"]

VIDEO_FORMATS = ("mp4", "gif")


def has_ffmpeg() -> bool:
    """True when imageio can write MP4 (the ``imageio-ffmpeg`` package, the ``video`` extra, is installed)."""
    try:
        import imageio_ffmpeg  # noqa: F401

        return True
    except ImportError:
        return False


def frames_to_uint8(frames) -> np.ndarray:
    """Frames in any accepted form -> uint8 array (F, H, W, 3)."""
    if isinstance(frames, torch.Tensor):
        x = frames.detach().cpu()
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4:
            raise ValueError(f"frames: expected a tensor (F, C, H, W) or (F, H, W), got shape {tuple(x.shape)}")
        arr = x.permute(0, 2, 3, 1).numpy()
    elif isinstance(frames, np.ndarray):
        arr = frames if frames.ndim == 4 else frames[..., None]
        if arr.ndim != 4:
            raise ValueError(f"frames: expected an array (F, H, W, C) or (F, H, W), got shape {frames.shape}")
    else:
        frames = list(frames)
        if not frames or not all(isinstance(f, Image.Image) for f in frames):
            raise ValueError("frames: expected a non-empty list of PIL images, a tensor or an array")
        arr = np.stack([np.asarray(f.convert("RGB")) for f in frames])
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255).round().astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.shape[-1] != 3 or arr.shape[0] < 1:
        raise ValueError(f"frames: expected at least one frame with 1 or 3 channels, got shape {arr.shape}")
    return arr


def _enlarge(arr: np.ndarray, min_size: int, multiple: int) -> np.ndarray:
    f, h, w, _ = arr.shape
    k = max(1, -(-min_size // max(h, w))) if min_size else 1
    if k > 1:
        arr = arr.repeat(k, axis=1).repeat(k, axis=2)
    if multiple > 1:
        ph, pw = (-arr.shape[1]) % multiple, (-arr.shape[2]) % multiple
        if ph or pw:
            arr = np.pad(arr, ((0, 0), (0, ph), (0, pw), (0, 0)))
    return arr


def export_video(frames: Sequence[Image.Image] | torch.Tensor | np.ndarray, path: str | os.PathLike, fps: float = 8.0,
                 format: str | None = None, min_size: int = 128, loop: int = 0) -> Path:
    """Write ``frames`` to ``path`` and return the path written.

    ``format``: "mp4" or "gif"; None = from the suffix of ``path`` (".mp4" / ".gif"). MP4 needs
    imageio-ffmpeg; without it an MP4 request writes a GIF next to it (same name, ".gif") instead.
    ``loop``: GIF loop count (0 = forever).
    """
    import imageio.v2 as imageio

    check_number("fps", fps, lo=0, lo_open=True)
    path = Path(path)
    fmt = check_choice("format", (format or path.suffix.lstrip(".") or "mp4").lower(), VIDEO_FORMATS,
                       hint=" (or a path ending in .mp4/.gif)")
    if fmt == "mp4" and not has_ffmpeg():
        fmt, path = "gif", path.with_suffix(".gif")
    arr = _enlarge(frames_to_uint8(frames), min_size, 16 if fmt == "mp4" else 1)
    with atomic_path(path, suffix=f".{fmt}") as tmp:
        if fmt == "mp4":
            with imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                    macro_block_size=16, ffmpeg_log_level="error") as w:
                for frame in arr:
                    w.append_data(frame)
        else:
            imageio.mimsave(tmp, list(arr), format="GIF", duration=1000.0 / fps, loop=loop)
    return path
