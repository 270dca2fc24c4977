"""The search record: JSON for EvoSearchSampler's ``record_json`` output, the few lines the Save
Record node shows in the UI (best reward, NFE, the judge's verdict), and the node itself.

The node returns ``{"ui": {"text": [summary]}}`` — the convention of ComfyUI's own Preview Any
node — and the pack's web extension (``web/evosearch.js``) shows that text in the node.
"""

from __future__ import annotations

import json
import os

import torch

from .inputs import CATEGORY


def _json_default(o):
    if isinstance(o, torch.Tensor) or hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def record_json(record: dict) -> str:
    return json.dumps(record, indent=2, default=_json_default)


def _number(v) -> str:
    return "—" if v is None else f"{v:.4g}"


def judge_line(judge: dict | None) -> str:
    """The judge's verdict in one line."""
    if not judge:
        return "judge: none (connect a held-out reward to the sampler's judge input)"
    best, plain = judge.get("best", {}), judge.get("plain", {})
    if "correct" in best:
        verdict = f"best sample {'correct' if best['correct'] else 'incorrect'}"
        if plain.get("n"):
            verdict += f"; plain samples {plain.get('correct', 0):.0%} correct (of {plain['n']})"
    else:
        verdict = f"best sample scores {_number(best.get('score'))}"
        if plain.get("n"):
            verdict += f"; plain samples {_number(plain.get('score'))} on average (of {plain['n']})"
    return "judge: " + verdict


def record_summary(record: dict) -> str:
    """Best reward, NFE and the judge's verdict of a record (one search, or ``items`` for a batch)."""
    items = record.get("items") or [record]
    lines = []
    for k, rec in enumerate(items):
        prefix = f"latent {k}: " if len(items) > 1 else ""
        stats = rec.get("stats", {})
        state = "complete" if rec.get("complete") else f"stopped early: {stats.get('stopped') or 'interrupted'}"
        preview = rec.get("preview")
        if rec.get("best_reward") is None and preview:
            steps = rec.get("settings", {}).get("request", {}).get("num_inference_steps")
            lines.append(f"{prefix}best x0 preview reward {_number(preview.get('reward'))} at step "
                         f"{preview.get('step', 0) + 1} of {steps}, best of {preview.get('rows')} previews "
                         f"(no sample finished; {state})")
        else:
            lines.append(f"{prefix}best reward {_number(rec.get('best_reward'))} ({state})")
        lines.append(f"{prefix}NFE {stats.get('nfe')} of {stats.get('planned_nfe')} planned "
                     f"(budget {stats.get('nfe_budget')}), {stats.get('reward_calls')} samples scored")
        lines.append(prefix + judge_line(rec.get("judge")))
        lines.extend(f"{prefix}warning: {w}" for w in rec.get("warnings") or [])
    missing = int(record.get("batch_size", len(items))) - len(items)
    if missing > 0:
        lines.append(f"{missing} latent(s) of the batch not searched (interrupted)")
    return "\n".join(lines)


class EvoSearchSaveRecord:
    """Writes a JSON record (EvoSearchSampler's record_json) into ComfyUI's output folder and shows
    its summary (best reward, NFE, judge) in the node."""

    CATEGORY = CATEGORY
    FUNCTION = "save"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    DESCRIPTION = ("Saves the search record (JSON) next to the images, as <prefix>_<counter>_.json, and shows the "
                   "best reward, the NFE spent and the judge's verdict.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "record_json": ("STRING", {"forceInput": True,
                                       "tooltip": "The record_json output of an EvoSearch Sampler."}),
            "filename_prefix": ("STRING", {"default": "evosearch/record",
                                           "tooltip": "Where to write, under ComfyUI's output folder "
                                                      "(a subfolder/name prefix)."}),
        }}

    def save(self, record_json, filename_prefix="evosearch/record"):
        import folder_paths

        from evosearch.io import atomic_write_bytes

        try:
            parsed = json.loads(record_json)
        except (TypeError, ValueError) as e:
            raise ValueError(f"record_json: not valid JSON: {e}") from e
        if not isinstance(parsed, dict):
            raise ValueError(f"record_json: expected a JSON object (an EvoSearch Sampler record), got "
                             f"{type(parsed).__name__}")
        output_dir = folder_paths.get_output_directory()
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output_dir)
        name = f"{filename}_{counter:05}_.json"
        atomic_write_bytes(os.path.join(folder, name), (json.dumps(parsed, indent=2) + "\n").encode())
        return {"ui": {"text": [record_summary(parsed)],
                       "evosearch_records": [{"filename": name, "subfolder": subfolder, "type": "output"}]}}


__all__ = ["EvoSearchSaveRecord", "record_json", "record_summary", "judge_line"]
