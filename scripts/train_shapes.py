#!/usr/bin/env python
"""Train the shapes world's generators (and export them into the package).

    python scripts/train_shapes.py --variant diffusion            # ~1.5-2 h on 2 CPU cores
    python scripts/train_shapes.py --variant flow --init-from evosearch/bundled/assets/shapes/diffusion

Resumable: every ``--checkpoint-every`` steps the full training state (weights, EMA,
optimizer, step) is written atomically to ``--checkpoint-dir``; rerunning the same
command continues from there. Data are rendered on the fly (``shapes.render``), one
fixed random stream per step (seed, step), so a resumed run sees the same data as an
uninterrupted one.

Diffusion: v-prediction on the cosine VP schedule, t uniform in [0, 1000).
Flow: velocity eps - x0 on x_t = (1 - t) x0 + t eps, t logit-normal (SD3's choice);
``--init-from`` starts from another shapes pipeline's text encoder and UNet (the flow
variant is fine-tuned from the diffusion one, which learns the scenes once).
The prompt is replaced by the empty prompt with probability ``--p-uncond`` (for
classifier-free guidance). The exported weights are the EMA weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evosearch.bundled.shapes.grammar import sample_spec  # noqa: E402
from evosearch.bundled.shapes.model import (  # noqa: E402
    MAX_LENGTH, ShapesFlowPipeline, ShapesPipeline, build_scheduler, build_text_encoder, build_tokenizer, build_unet,
)
from evosearch.bundled.shapes.render import render_array  # noqa: E402
from evosearch.bundled.paths import asset_path  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=("diffusion", "flow"), default="diffusion", help="which generator (default: diffusion)")
    p.add_argument("--out", type=Path, default=None, help="export folder (default: the bundled assets shapes/<variant>)")
    p.add_argument("--checkpoint-dir", type=Path, default=None, help="resumable state (default: .cache/train_shapes/<variant>)")
    p.add_argument("--checkpoint-every", type=int, default=250, help="steps between checkpoints (default: 250)")
    p.add_argument("--init-from", type=Path, default=None, help="start from this shapes pipeline's text encoder and UNet")
    p.add_argument("--steps", type=int, default=7000, help="optimizer steps (default: 7000)")
    p.add_argument("--batch-size", type=int, default=64, help="scenes per step (default: 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (default: 1e-3)")
    p.add_argument("--warmup", type=int, default=200, help="linear warm-up steps, then cosine decay (default: 200)")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the exported weights (default: 0.999)")
    p.add_argument("--p-uncond", type=float, default=0.1, help="probability of the empty prompt (default: 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, noise and initial weights (default: 0)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    p.add_argument("--export-only", action="store_true", help="export the last checkpoint to --out and stop")
    return p.parse_args(argv)


def batch(step: int, args, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (B, 3, 32, 32) in [-1, 1], token ids (B, 12)) of one step, from the step's own stream."""
    rng = np.random.default_rng([args.seed, step])
    images, texts = [], []
    for k in range(args.batch_size):
        spec = sample_spec(rng)
        img, _ = render_array(spec, seed=int(rng.integers(2**62)))
        images.append(img)
        texts.append("" if rng.random() < args.p_uncond else spec.prompt())
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) * 2 - 1
    ids = tokenizer(texts, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt").input_ids
    return x, ids


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def export(unet, text_encoder, tokenizer, variant: str, out: Path, ema: dict, summary: dict) -> None:
    unet_state = {k: v.clone() for k, v in unet.state_dict().items()}
    te_state = {k: v.clone() for k, v in text_encoder.state_dict().items()}
    unet.load_state_dict({k[5:]: v for k, v in ema.items() if k.startswith("unet.")})
    text_encoder.load_state_dict({k[3:]: v for k, v in ema.items() if k.startswith("te.")})
    cls = ShapesPipeline if variant == "diffusion" else ShapesFlowPipeline
    pipe = cls(unet=unet.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, scheduler=build_scheduler(variant))
    out.mkdir(parents=True, exist_ok=True)
    pipe.to(torch.float16).save_pretrained(str(out), safe_serialization=True)  # half the size; loaded as float32
    pipe.to(torch.float32)
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for f in out.rglob("*"):  # safetensors writes 0600 files; assets ship in the wheel, readable by all
        if f.is_file():
            f.chmod(0o644)
    unet.load_state_dict(unet_state)
    text_encoder.load_state_dict(te_state)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or asset_path("shapes", args.variant)
    ckdir = args.checkpoint_dir or ROOT / ".cache" / "train_shapes" / args.variant
    ckdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    tokenizer = build_tokenizer()
    text_encoder, unet = build_text_encoder(tokenizer), build_unet()
    if args.init_from is not None:
        src = ShapesPipeline.from_pretrained(str(args.init_from))
        text_encoder.load_state_dict(src.text_encoder.state_dict())
        unet.load_state_dict(src.unet.state_dict())
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    lr_at = lambda s: args.lr * min(1.0, (s + 1) / max(1, args.warmup)) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))  # noqa: E731
    named = {**{"unet." + k: v for k, v in unet.state_dict().items()},
             **{"te." + k: v for k, v in text_encoder.state_dict().items()}}
    ema = {k: v.detach().clone() for k, v in named.items()}
    start, seconds, log = 0, 0.0, []
    ck = ckdir / "state.pt"
    if ck.is_file():
        state = torch.load(ck, weights_only=False)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["te"])
        opt.load_state_dict(state["opt"])
        ema, start, seconds, log = state["ema"], state["step"], state["seconds"], state["log"]
        print(f"resumed from {ck} at step {start}", flush=True)
    if args.export_only:
        summary = json.loads((ckdir / "pipeline" / "training_summary.json").read_text())
        export(unet, text_encoder, tokenizer, args.variant, out, ema, summary)
        print(f"exported step {start} to {out}", flush=True)
        return
    scheduler = build_scheduler(args.variant)
    acp = scheduler.alphas_cumprod if args.variant == "diffusion" else None
    unet.train()
    text_encoder.train()
    t_last = time.time()
    losses = []
    for step in range(start, args.steps):
        x0, ids = batch(step, args, tokenizer)
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        noise = torch.randn(x0.shape, generator=g)
        if args.variant == "diffusion":
            t = torch.randint(0, 1000, (len(x0),), generator=g)
            a, s = acp[t].sqrt()[:, None, None, None], (1 - acp[t]).sqrt()[:, None, None, None]
            xt, target, timestep = a * x0 + s * noise, a * noise - s * x0, t
        else:
            sig = torch.sigmoid(torch.randn(len(x0), generator=g))[:, None, None, None]
            xt, target, timestep = (1 - sig) * x0 + sig * noise, noise - x0, sig.flatten() * 1000
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        enc = text_encoder(ids)
        pred = unet(xt, timestep, encoder_hidden_states=enc.last_hidden_state, class_labels=enc.pooler_output).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            cur = {**{"unet." + k: v for k, v in unet.state_dict().items()},
                   **{"te." + k: v for k, v in text_encoder.state_dict().items()}}
            for k, v in cur.items():
                if v.dtype.is_floating_point:
                    ema[k].mul_(args.ema).add_(v.detach(), alpha=1 - args.ema)
                else:
                    ema[k].copy_(v)
        losses.append(loss.item())
        if (step + 1) % 50 == 0:
            now = time.time()
            seconds += now - t_last
            t_last = now
            entry = {"step": step + 1, "loss": float(np.mean(losses)), "lr": lr_at(step), "seconds": round(seconds, 1)}
            log.append(entry)
            losses = []
            print(f"step {step + 1}/{args.steps} loss {entry['loss']:.4f} lr {entry['lr']:.2e} {seconds / 60:.1f} min", flush=True)
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps:
            atomic_save({"unet": unet.state_dict(), "te": text_encoder.state_dict(), "opt": opt.state_dict(), "ema": ema,
                         "step": step + 1, "seconds": seconds, "log": log}, ck)
            summary = {"variant": args.variant, "step": step + 1, "train_minutes": round(seconds / 60, 1),
                       "torch": torch.__version__,
                       "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                                if k not in ("out", "checkpoint_dir", "init_from")},
                       "init_from": None if args.init_from is None else args.init_from.name,
                       "parameters": {"unet": sum(p.numel() for p in unet.parameters()),
                                      "text_encoder": sum(p.numel() for p in text_encoder.parameters())},
                       "loss_log": log}
            export(unet, text_encoder, tokenizer, args.variant, ckdir / "pipeline", ema, summary)
            if step + 1 == args.steps:
                export(unet, text_encoder, tokenizer, args.variant, out, ema, summary)
                print(f"exported to {out}", flush=True)


if __name__ == "__main__":
    main()
