"""Writing results: atomic files, image grids and the reward-vs-NFE plot."""

from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

from PIL import Image


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp"):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically
    (``os.replace``), on any error it is removed: a crash never leaves a half-written file.
    ``suffix`` lets writers that pick a format by extension (imageio) see the right one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results should read like any file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`), fsynced."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def save_image(image: Image.Image, path: str | os.PathLike, upscale_to: int | None = None) -> Path:
    """Save a PIL image atomically as PNG; tiny images are enlarged (nearest) to ``upscale_to`` px."""
    if upscale_to and max(image.size) < upscale_to:
        k = max(1, upscale_to // max(image.size))
        image = image.resize((image.width * k, image.height * k), Image.NEAREST)
    import io as _io

    buf = _io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def image_grid(images: Sequence[Image.Image], cols: int | None = None) -> Image.Image:
    """A grid of equally sized images (diffusers' make_image_grid), padded with black cells."""
    from diffusers.utils import make_image_grid

    images = list(images)
    if not images:
        raise ValueError("images: need at least one image for a grid")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    blank = Image.new(images[0].mode, images[0].size)
    return make_image_grid(images + [blank] * (rows * cols - len(images)), rows=rows, cols=cols)


def plot_reward_vs_nfe(histories: dict[str, list[dict]], path: str | os.PathLike, title: str = "") -> Path:
    """Best-so-far reward (line) and every scored candidate (dots) against cumulative NFE,
    one colour per run; ``histories`` maps a label to a SearchPipelineOutput.history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, history in histories.items():
        nfe = [h["nfe"] for h in history]
        line = ax.step(nfe, [h["best_reward"] for h in history], where="post", label=f"{label}: best so far")[0]
        for h in history:
            ax.scatter([h["nfe"]] * len(h["rewards"]), h["rewards"], s=8, alpha=0.35, color=line.get_color())
    ax.set_xlabel("cumulative NFE")
    ax.set_ylabel("reward")
    ax.set_title(title or "reward vs compute")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    import io as _io

    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
