"""Writing results: atomic files, image grids and the reward-vs-NFE plot."""

from __future__ import annotations

import json
import math
import os
import re
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
    """Write ``obj`` as JSON, atomically, with every absolute path made portable (:func:`portable`,
    relative to the file's folder): a shared record never reveals the folder it was made in."""
    text = json.dumps(obj, indent=2, default=_json_default)
    return atomic_write_bytes(path, (json.dumps(portable(json.loads(text), Path(path).parent), indent=2) + "\n").encode())


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


def plot_reward_vs_nfe(histories: dict[str, list[dict]], path: str | os.PathLike, title: str = "",
                       reward_name: str | None = None) -> Path:
    """Best-so-far reward (line) and every scored candidate (dots) against cumulative NFE from
    NFE 0, one colour per run; ``histories`` maps a label to a SearchPipelineOutput.history;
    ``reward_name`` labels the reward axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, history in histories.items():
        nfe = [h["nfe"] for h in history]
        line = ax.step(nfe, [h["best_reward"] for h in history], where="post", label=f"{label}: best so far")[0]
        for h in history:
            ax.scatter([h["nfe"]] * len(h["rewards"]), h["rewards"], s=8, alpha=0.35, color=line.get_color())
    ax.set_xlim(left=0)
    ax.set_xlabel("cumulative NFE (denoiser evaluations)")
    ax.set_ylabel(f"reward: {reward_name}" if reward_name else "reward")
    ax.set_title(title or "reward vs compute")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    import io as _io

    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


TEXT_KEYS = frozenset({"prompt", "negative_prompt", "prompts"})
# an absolute path inside a string: at its start or after a space, quote, bracket or "="
_ABS_PATH = re.compile(r"(?:(?<=^)|(?<=[\s'\"(\[=]))(/[^\s'\"(),\[\]]+|[A-Za-z]:\\[^\s'\"(),\[\]]+)")


def portable(obj, out_dir: str | os.PathLike):
    """``obj`` (a record: dicts, lists, strings) with every absolute path replaced, so a shared
    record does not reveal the folder it was made in: files of the bundled assets become
    ``bundled:<world>/<part>``, any other path becomes relative to ``out_dir``. Prompts (the
    values of :data:`TEXT_KEYS`) are the user's text and stay as they are."""
    from .bundled.paths import ASSETS

    assets, out = str(ASSETS), os.path.abspath(out_dir)

    def fix(match: re.Match) -> str:
        path = os.path.normpath(match.group(0))
        if path == assets or path.startswith(assets + os.sep):
            return "bundled:" + Path(os.path.relpath(path, assets)).as_posix()
        try:
            return Path(os.path.relpath(path, out)).as_posix()
        except ValueError:  # another drive (Windows): keep only the name
            return Path(path).name

    def walk(x):
        if isinstance(x, str):
            return _ABS_PATH.sub(fix, x)
        if isinstance(x, dict):
            return {k: v if k in TEXT_KEYS else walk(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v) for v in x]
        return x

    return walk(obj)
