#!/usr/bin/env python
"""Train the shapes world's learned reward (a contrastive image-text model) into the package.

    python scripts/train_shapes_reward.py        # ~10 minutes on 2 CPU cores

Data: rendered scenes (``shapes.render``) of random prompts from every category, degraded the
way generated images are (Gaussian blur, pixel noise, brightness and contrast jitter), each
with its prompt. Loss: CLIP's symmetric InfoNCE over the batch, plus, on the image side, one
hard negative per image: its prompt changed in one attribute (``grammar.perturb_spec``).
It never sees a generated image or the judge. Deterministic: one random stream per step.
Writes ``evosearch/bundled/assets/shapes/reward/`` (config.json, weights, training_summary.json).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evosearch.bundled.paths import asset_path  # noqa: E402
from evosearch.bundled.shapes.grammar import CATEGORIES, perturb_spec, sample_spec  # noqa: E402
from evosearch.bundled.shapes.model import MAX_LENGTH, build_tokenizer  # noqa: E402
from evosearch.bundled.shapes.render import render_array  # noqa: E402
from evosearch.bundled.shapes.reward import ShapesCLIPModel  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the bundled assets shapes/reward)")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps (default: 3000)")
    p.add_argument("--batch-size", type=int, default=128, help="scenes per step (default: 128)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (default: 2e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of data and initial weights (default: 0)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    p.add_argument("--eval-scenes", type=int, default=600, help="held-out scenes for the summary (default: 600)")
    return p.parse_args(argv)


def degrade(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """What a small generator does to a clean render: blur, noise, brightness/contrast drift. x in [0, 1]."""
    n, c, h, w = x.shape
    sigma = (torch.rand(n, generator=g) * 1.2).clamp(min=0.05)
    k = torch.arange(-2, 3, dtype=torch.float32)
    kernel = torch.exp(-(k[None] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c, 5): one per image channel
    y = F.pad(x.reshape(1, n * c, h, w), (2, 2, 2, 2), mode="replicate")
    y = F.conv2d(y, kernel.view(n * c, 1, 1, 5), groups=n * c)
    x = F.conv2d(y, kernel.view(n * c, 1, 5, 1), groups=n * c).reshape(n, c, h, w)
    contrast = 1 + (torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 0.3
    bright = (torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 0.1
    noise = torch.randn(x.shape, generator=g) * torch.rand(n, 1, 1, 1, generator=g) * 0.06
    return ((x - 0.5) * contrast + 0.5 + bright + noise).clamp(0, 1)


def batch(step: int, n: int, seed: int, tokenizer, train: bool = True):
    rng = np.random.default_rng([seed, step, 0 if train else 1])
    images, texts, negatives = [], [], []
    for _ in range(n):
        spec = sample_spec(rng)
        img, _ = render_array(spec, seed=int(rng.integers(2**62)))
        images.append(img)
        texts.append(spec.prompt())
        negatives.append(perturb_spec(spec, rng).prompt())
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    tok = lambda t: tokenizer(t, padding="max_length", max_length=MAX_LENGTH, truncation=True,  # noqa: E731
                              return_tensors="pt").input_ids
    return x, tok(texts), tok(negatives), texts


@torch.no_grad()
def evaluate(model, tokenizer, args) -> dict:
    """Held-out scenes: how often the true prompt outscores its one-attribute perturbation, per category."""
    model.eval()
    g = torch.Generator().manual_seed(10_000 + args.seed)
    hits: dict[str, list[bool]] = {c: [] for c in CATEGORIES}
    rng = np.random.default_rng([args.seed, 99])
    for lo in range(0, args.eval_scenes, 100):
        specs = [sample_spec(rng, CATEGORIES[(lo + k) % len(CATEGORIES)]) for k in range(100)]
        x = torch.from_numpy(np.stack([render_array(s, seed=int(rng.integers(2**62)))[0] for s in specs]))
        x = degrade(x.permute(0, 3, 1, 2), g)
        tok = lambda t: tokenizer(t, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids  # noqa
        img = model.encode_image(x)
        pos = (img * model.encode_text(tok([s.prompt() for s in specs]))).sum(-1)
        neg = (img * model.encode_text(tok([perturb_spec(s, rng).prompt() for s in specs]))).sum(-1)
        for s, p, q in zip(specs, pos, neg):
            hits[s.category].append(bool(p > q))
    model.train()
    return {c: round(float(np.mean(v)), 3) for c, v in hits.items()}


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = args.out or asset_path("shapes", "reward")
    tokenizer = build_tokenizer()
    model = ShapesCLIPModel(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    warmup = 100
    t0 = time.time()
    log = []
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        x, pos_ids, neg_ids, _ = batch(step, args.batch_size, args.seed, tokenizer)
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        img = model.encode_image(degrade(x, g))
        txt = model.encode_text(torch.cat([pos_ids, neg_ids]))
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * img @ txt.T  # (B, 2B): true prompts, then one hard negative per image
        target = torch.arange(len(img))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, : len(img)].T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            entry = {"step": step + 1, "loss": round(loss.item(), 4), "seconds": round(time.time() - t0, 1)}
            log.append(entry)
            print(entry, flush=True)
    model.eval()
    heldout = evaluate(model, tokenizer, args)
    print("held-out: true prompt beats its one-attribute perturbation:", heldout, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    summary = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
               "train_minutes": round((time.time() - t0) / 60, 1), "torch": torch.__version__,
               "parameters": sum(p.numel() for p in model.parameters()),
               "heldout_true_beats_perturbed": heldout, "loss_log": log}
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for f in out.rglob("*"):
        if f.is_file():
            f.chmod(0o644)
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
