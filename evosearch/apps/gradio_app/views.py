"""What the page shows, as files and HTML: samples (PNG, or GIF for videos), gallery captions
with the judge's mark, the reward-vs-NFE plot, the status line, the verdict and warnings.
User text is escaped before it reaches HTML. No gradio import."""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Sequence

import torch

from ...io import atomic_write_bytes, save_image
from ...pipeline import convert_images
from ...video_io import export_video

GALLERY_PX = 128  # thumbnails are enlarged (nearest) to about this size
SAMPLE_PX = 256
MAX_MESSAGE = 300  # characters of an error shown or logged


#: library advice in messages, as the page words it (the page has fields, not Python calls or flags)
PAGE_WORDS = {"(SearchPipeline.from_pipe(..., eta=1.0))": "(set eta above 0 under sampler details)",
              "SearchPipeline(..., judge=...)": "a model with a judge"}


def for_page(text: str) -> str:
    """``text`` with library advice re-worded for the page (:data:`PAGE_WORDS`)."""
    for library, page in PAGE_WORDS.items():
        text = text.replace(library, page)
    return text


def one_line(text, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------------------------ samples
def save_sample(sample: torch.Tensor, path: Path, px: int = SAMPLE_PX) -> str:
    """A sample, float (3, H, W) image or (F, 3, H, W) video in [0, 1], as a PNG (or an animated GIF)
    enlarged to about ``px``; returns the path written."""
    if sample.ndim == 4:
        return str(export_video(sample, path.with_suffix(".gif"), fps=8.0, min_size=px))
    return str(save_image(convert_images(sample[None].float().cpu(), "pil")[0], path.with_suffix(".png"),
                          upscale_to=px))


def mark(verdict: dict | None) -> str:
    """The judge's verdict as one mark: ✓ correct, ✗ not (⚠ when not even valid), or its score."""
    if not verdict:
        return ""
    if "correct" in verdict:
        return "✓" if verdict["correct"] else ("✗" if verdict.get("valid", True) else "⚠")
    score = verdict.get("score")
    return "" if score is None else f"judge {number(score)}"


def number(x: float) -> str:
    """Three significant digits, the exponent without padding: 0.834, -12.5, -5.45e-5."""
    text = f"{x:.3g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def caption(reward: float, verdict: dict | None = None) -> str:
    """A gallery caption: the reward and the judge's mark, e.g. ``r=0.834 ✓``."""
    return f"r={number(reward)} {mark(verdict)}".strip()


def gallery(samples: Sequence[torch.Tensor], rewards: Sequence[float], verdicts: Sequence[dict | None] | None,
            run_dir: Path, tag: str) -> list[tuple[str, str]]:
    """(file, caption) per sample, best reward first."""
    verdicts = verdicts if verdicts is not None else [None] * len(samples)
    order = sorted(range(len(samples)), key=lambda k: -float(rewards[k]))
    return [(save_sample(samples[k], run_dir / f"{tag}_{rank:03d}", GALLERY_PX), caption(rewards[k], verdicts[k]))
            for rank, k in enumerate(order)]


def x0_gallery(samples: Sequence[torch.Tensor], step: int, steps: int, run_dir: Path,
               tag: str) -> list[tuple[str, str]]:
    """(file, caption) per x0 preview of a generation still denoising (not scored yet)."""
    return [(save_sample(x, run_dir / f"{tag}_x0_{k:03d}", GALLERY_PX), f"x0 preview, step {step + 1}/{steps}")
            for k, x in enumerate(samples)]


# --------------------------------------------------------------------------------------- plot
def reward_figure(history: Sequence, reward_label: str, x_max: int, plain_mean: float | None = None):
    """Reward against NFE, the x-axis from 0 to ``x_max``, the y-axis named after the reward: every
    scored candidate (dots; previews fainter), the best so far (line), the plain samples' mean
    (dashed). A matplotlib Figure (no pyplot: nothing shared between requests), or None before
    anything was scored."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scored = [h for h in history if h["rewards"] and not h.get("preview")]
    if not scored:
        return None
    fig = Figure(figsize=(4.4, 3.3), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for h in history:
        if h["rewards"]:
            ax.scatter([h["nfe"]] * len(h["rewards"]), h["rewards"], s=9, alpha=0.15 if h.get("preview") else 0.4,
                       color="tab:blue", linewidths=0)
    ax.step([h["nfe"] for h in scored], [h["best_reward"] for h in scored], where="post", color="tab:orange",
            marker="o", markersize=3, label="best so far")
    if plain_mean is not None:
        ax.axhline(plain_mean, color="grey", linestyle="--", linewidth=1, label="plain samples (mean)")
    ax.set_xlim(0, max(x_max, scored[-1]["nfe"]) * 1.02)
    ax.set_title("reward vs NFE", fontsize=10)
    ax.set_xlabel("NFE (denoiser evaluations)")
    ax.set_ylabel(f"reward: {reward_label}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig


def plot(history: Sequence, path: Path, reward_label: str, x_max: int, plain_mean: float | None = None) -> str | None:
    """:func:`reward_figure` as a PNG at ``path`` (None before anything was scored)."""
    fig = reward_figure(history, reward_label, x_max, plain_mean)
    if fig is None:
        return None
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return str(atomic_write_bytes(path, buf.getvalue()))


# --------------------------------------------------------------------------------------- text
def status_html(head: str, facts: Sequence[str], nfe: int = 0, total: int | None = None,
                warnings: Sequence[str] = (), error: str | None = None) -> str:
    """The status line: what is happening (``head``, bold), facts, a progress bar over ``total`` NFE,
    and the warnings and the error each on a line of their own."""
    parts = [f'<div class="es-status"><b>{html.escape(head)}</b>']
    parts += [f" · {html.escape(f)}" for f in facts]
    if total:
        parts.append(f' <progress value="{min(nfe, total)}" max="{total}"></progress>')
    parts.append("</div>")
    parts += [f'<div class="es-warning">⚠ {html.escape(one_line(w, 600))}</div>' for w in warnings]
    if error:
        parts.append(f'<div class="es-error">✗ {html.escape(one_line(error))}</div>')
    return "".join(parts)


def _verdict_words(verdict: dict | None) -> str:
    if not verdict:
        return ""
    if "correct" in verdict:
        if verdict["correct"]:
            return "✓ correct"
        why = verdict.get("reason")
        return ("✗ wrong" if verdict.get("valid", True) else "⚠ invalid") + (f" ({why})" if why else "")
    return f"judge score {number(verdict.get('score', float('nan')))}"


def verdict_html(best: tuple[float, dict | None] | None, plain: tuple[float, dict | None] | None,
                 plain_summary: dict | None = None, has_judge: bool = True) -> str:
    """One line under the plain and the searched sample: their rewards and the judge's verdicts,
    and how many plain samples the judge calls correct."""
    cells = []
    for name, item in (("plain", plain), ("searched", best)):
        if item is not None:
            reward, verdict = item
            cells.append(f"<b>{name}</b> r={number(reward)} {html.escape(_verdict_words(verdict))}".rstrip())
    if plain_summary and "correct" in plain_summary and plain_summary.get("n"):
        n = plain_summary["n"]
        right = round(plain_summary["correct"] * n)
        cells.append(f"plain accuracy {right}/{n} ({plain_summary['correct']:.0%})")
    elif plain_summary and "score" in plain_summary:
        cells.append(f"plain judge score {number(plain_summary['score'])}")
    if not has_judge:
        cells.append("no judge for this model")
    return f'<div class="es-verdict">{" · ".join(cells)}</div>' if cells else ""
