"""The pack's example workflows (``example_workflows/*.json``): one per search method.

ComfyUI lists a pack's ``example_workflows/*.json`` under Workflow > Browse Templates and
opens them in the editor, so they are in the editor's own (UI) format: nodes with positions,
their link inputs and ``widgets_values`` in the order of the node's inputs, and a link table.
A JPEG of the same name is the template's card. They are generated here from the nodes'
``INPUT_TYPES`` so that they always match the nodes;
``python -m comfyui.workflows`` (from the repository root) rewrites them, and a test checks
that the files equal what this module builds.

Each workflow: checkpoint -> prompts -> empty latent -> a CLIP-score reward -> EvoSearch
Sampler (one method) -> Save Image (best sample, population grid) and Save Record, with a Note
saying which files it needs and where they go. ``evosearch_cpu-check.json`` is CPU-sized: a 64x64
image (8x8 latent), 8 steps, best-of-4 with a model-free reward (no reward weights to download).
"""

from __future__ import annotations

import json
from pathlib import Path

FOLDER = Path(__file__).resolve().parent / "example_workflows"
CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"  # ComfyUI's own default SD1.5 template checkpoint
PROMPT = "a photograph of a red fox sitting in fresh snow, golden hour"
NEGATIVE = "blurry, low quality, watermark"
#: per method: the sampler settings of its example (the rest are the node's defaults)
METHOD_SETTINGS = {
    "evosearch": {"nfe_budget": 600, "eta": 1.0},
    "best-of-n": {"nfe_budget": 320, "eta": 1.0},
    "zero-order": {"nfe_budget": 400, "eta": 1.0, "population": 4},
    "paths": {"nfe_budget": 400, "eta": 1.0},
    "particles": {"nfe_budget": 320, "eta": 1.0, "population": 16},
}
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
#: ComfyUI's core nodes the examples use: link inputs, widgets (in order, with defaults), outputs
CORE_NODES = {
    "CheckpointLoaderSimple": ({}, {"ckpt_name": CHECKPOINT}, ["MODEL", "CLIP", "VAE"]),
    "CLIPTextEncode": ({"clip": "CLIP"}, {"text": ""}, ["CONDITIONING"]),
    "EmptyLatentImage": ({}, {"width": 512, "height": 512, "batch_size": 1}, ["LATENT"]),
    "SaveImage": ({"images": "IMAGE"}, {"filename_prefix": "ComfyUI"}, []),
    "Note": ({}, {"text": ""}, []),  # the editor's note (a frontend-only node: never sent to the server)
}
CHECKPOINT_SOURCE = "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive"
NEEDS_CHECKPOINT = (f"Needs: {CHECKPOINT} in ComfyUI/models/checkpoints/ (download it from {CHECKPOINT_SOURCE}; "
                    "any SD1.5 checkpoint works: pick it in Load Checkpoint).")
NEEDS_CLIP = ("The CLIP score reward needs open_clip_pytorch_model.bin (ViT-B-32, OpenAI's weights) from "
              "https://huggingface.co/timm/vit_base_patch32_clip_224.openai: downloaded on the first run, or "
              "(offline) put it anywhere and give its path in the reward node's checkpoint field.")
#: the CPU-sized example: no reward weights, a 64x64 image, 8 steps, best-of-4
CPU_EXAMPLE = "cpu-check"
CPU_SETTINGS = {"nfe_budget": 32, "eta": 1.0, "steps": 8, "population": 4, "method": "best-of-n", "cfg": 7.0}


def _is_widget(spec) -> bool:
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 else {}
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not opts.get("forceInput")


def node_interface(node_type: str):
    """(link inputs {name: type}, widgets {name: (default, control_after_generate)}, output types)."""
    if node_type in CORE_NODES:
        links, widgets, outputs = CORE_NODES[node_type]
        return dict(links), {k: (v, False) for k, v in widgets.items()}, list(outputs)
    from . import NODE_CLASS_MAPPINGS

    cls = NODE_CLASS_MAPPINGS[node_type]
    spec = cls.INPUT_TYPES()
    links, widgets = {}, {}
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            opts = entry[1] if len(entry) > 1 else {}
            if _is_widget(entry):
                default = opts.get("default", entry[0][0] if isinstance(entry[0], list) else None)
                widgets[name] = (default, bool(opts.get("control_after_generate")))
            else:
                links[name] = entry[0]
    return links, widgets, list(cls.RETURN_TYPES)


def ui_workflow(nodes: list[dict]) -> dict:
    """A workflow in the editor's format from ``nodes``: dicts with ``id``, ``type``, ``pos``, ``size``,
    ``title`` (optional) and ``inputs`` ({name: value, or (node id, output slot) for a link})."""
    links, ui_nodes = [], []
    by_id = {n["id"]: n for n in nodes}
    out_links: dict[tuple[int, int], list[int]] = {}
    for n in nodes:
        link_inputs, _, _ = node_interface(n["type"])
        for name in link_inputs:
            src = n["inputs"].get(name)
            if isinstance(src, tuple):
                link_id = len(links) + 1
                out_types = node_interface(by_id[src[0]]["type"])[2]
                links.append([link_id, src[0], src[1], n["id"], list(link_inputs).index(name), out_types[src[1]]])
                out_links.setdefault(src, []).append(link_id)
    for order, n in enumerate(nodes):
        link_inputs, widgets, outputs = node_interface(n["type"])
        unknown = set(n["inputs"]) - set(link_inputs) - set(widgets)
        if unknown:
            raise ValueError(f"{n['type']}: no inputs named {sorted(unknown)}")
        inputs = []
        for name, kind in link_inputs.items():
            src = n["inputs"].get(name)
            link = next((lk[0] for lk in links if lk[3] == n["id"] and lk[4] == len(inputs)), None) if src else None
            inputs.append({"name": name, "type": kind, "link": link})
        values = []
        for name, (default, control) in widgets.items():
            values.append(n["inputs"].get(name, default))
            if control:
                values.append("fixed")  # the editor's "control after generate" widget
        ui_nodes.append({
            "id": n["id"], "type": n["type"], "pos": list(n["pos"]), "size": list(n.get("size", (320, 120))),
            "flags": {}, "order": order, "mode": 0, "inputs": inputs,
            "outputs": [{"name": kind, "type": kind, "links": out_links.get((n["id"], slot), []), "slot_index": slot}
                        for slot, kind in enumerate(outputs)],
            "properties": {"Node name for S&R": n["type"]}, "widgets_values": values,
            **({"title": n["title"]} if "title" in n else {}),
        })
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links), "nodes": ui_nodes,
            "links": links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
            "version": 0.4}


def example(method: str) -> dict:
    """The example workflow of ``method`` (or of :data:`CPU_EXAMPLE`: the CPU-sized check)."""
    cpu = method == CPU_EXAMPLE
    settings = dict(CPU_SETTINGS if cpu else METHOD_SETTINGS[method])
    sampler_inputs = {"model": (1, 0), "positive": (2, 0), "negative": (3, 0), "latent_image": (4, 0),
                      "vae": (1, 2), "reward": (5, 0), "reward_prompt": "", "method": method, "seed": 0,
                      "steps": 20, "cfg": 7.0, "scheduler": "karras", **settings}
    reward = ({"id": 5, "type": "EvoSearchImageStatReward", "pos": (400, 550), "size": (320, 90),
               "inputs": {"statistic": "contrast", "direction": "maximize"}} if cpu else
              {"id": 5, "type": "EvoSearchReward", "pos": (400, 550), "size": (320, 110),
               "inputs": {"reward": "clip", "checkpoint": "", "device": "auto"}})
    latent = {"width": 64, "height": 64} if cpu else {}
    needs = NEEDS_CHECKPOINT + ("" if cpu else " " + NEEDS_CLIP)
    if cpu:
        needs += (" A check that runs in minutes on a CPU: a 64x64 image, 8 steps, best of 4 samples, rewarded "
                  "for contrast (a model-free reward: nothing to download).")
    name = "cpu" if cpu else method
    nodes = [
        {"id": 1, "type": "CheckpointLoaderSimple", "pos": (40, 160), "size": (320, 100), "inputs": {}},
        {"id": 2, "type": "CLIPTextEncode", "pos": (400, 40), "size": (380, 160), "title": "Prompt",
         "inputs": {"clip": (1, 1), "text": PROMPT}},
        {"id": 3, "type": "CLIPTextEncode", "pos": (400, 240), "size": (380, 120), "title": "Negative prompt",
         "inputs": {"clip": (1, 1), "text": NEGATIVE}},
        {"id": 4, "type": "EmptyLatentImage", "pos": (400, 400), "size": (320, 110), "inputs": latent},
        reward,
        {"id": 6, "type": "EvoSearchSampler", "pos": (820, 40), "size": (400, 620), "inputs": sampler_inputs},
        {"id": 7, "type": "SaveImage", "pos": (1260, 40), "size": (420, 460), "title": "Best sample",
         "inputs": {"images": (6, 1), "filename_prefix": f"evosearch/{name}_best"}},
        {"id": 8, "type": "SaveImage", "pos": (1720, 40), "size": (420, 460), "title": "Final population",
         "inputs": {"images": (6, 2), "filename_prefix": f"evosearch/{name}_population"}},
        {"id": 9, "type": "EvoSearchSaveRecord", "pos": (1260, 540), "size": (460, 260),
         "inputs": {"record_json": (6, 3), "filename_prefix": f"evosearch/{name}_record"}},
        {"id": 10, "type": "Note", "pos": (40, 320), "size": (320, 260), "title": "Files this workflow needs",
         "inputs": {"text": needs}},
    ]
    return ui_workflow(nodes)


def file_name(method: str) -> str:
    return f"evosearch_{method}.json"


def example_names() -> list[str]:
    """Every example: one per method, then the CPU-sized check."""
    from .inputs import method_choices

    return [*method_choices(), CPU_EXAMPLE]


THUMBNAIL_SIZE = (400, 300)


def thumbnail(method: str):
    """The template browser's card for ``method`` (a JPEG next to the workflow, same name): the
    method's name and what it does, from the registry."""
    import textwrap

    from PIL import Image, ImageDraw, ImageFont

    from evosearch.registry import METHOD_SUMMARIES

    w, h = THUMBNAIL_SIZE
    img = Image.new("RGB", (w, h), (29, 36, 51))
    draw = ImageDraw.Draw(img)
    big, small = ImageFont.load_default(size=34), ImageFont.load_default(size=17)
    draw.text((24, 22), "EvoSearch Sampler", font=small, fill=(122, 162, 247))
    draw.text((24, 50), method, font=big, fill=(230, 233, 245))
    cpu = method == CPU_EXAMPLE
    summary = "a quick check on a CPU: best of 4 at 64x64, a model-free reward" if cpu else METHOD_SUMMARIES[method]
    for k, line in enumerate(textwrap.wrap(summary, 38)[:4]):
        draw.text((24, 110 + 24 * k), line, font=small, fill=(192, 202, 245))
    settings = CPU_SETTINGS if cpu else METHOD_SETTINGS[method]
    draw.text((24, h - 44), f"SD1.5 · {'contrast' if cpu else 'CLIP score'} · {settings['nfe_budget']} NFE",
              font=small, fill=(158, 206, 106))
    return img


def dumps(workflow: dict) -> str:
    return json.dumps(workflow, indent=2) + "\n"


def write_examples(folder: Path = FOLDER) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for method in example_names():
        path = folder / file_name(method)
        path.write_text(dumps(example(method)))
        thumbnail(method).save(path.with_suffix(".jpg"), quality=90)
        paths += [path, path.with_suffix(".jpg")]
    return paths


if __name__ == "__main__":
    for p in write_examples():
        print(p)
