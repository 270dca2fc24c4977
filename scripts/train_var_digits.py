#!/usr/bin/env python
"""Train the bundled next-scale (VAR) digits model into evosearch/bundled/assets/var_digits/.

    python scripts/train_var_digits.py            # a few minutes on one CPU core

Two stages, both on the fixed train split of scikit-learn's load_digits (1200 images,
upsampled to 16x16; evosearch.bundled.digits.load_digits_images):

1. the multi-scale residual tokenizer (MultiScaleVQ: conv encoder 16x16 -> 8x8x8, one
   shared codebook of 64 entries, token maps 1, 2, 3, 4, 6, 8; conv decoder), trained on
   reconstruction + VQ losses with straight-through gradients; unused codes are restarted
   from encoder features;
2. the class-conditional transformer (NextScaleTransformer, adaLN, block-causal), trained
   by teacher forcing on the token maps of the training images, with the label replaced
   by the null class 10 with probability --p-uncond (classifier-free guidance).

Writes config.json + model.safetensors (float16 weights) and training_summary.json
(seeds, timings, losses, and the hit rate of plain sampling measured by the independent
judge, an SVC on the 8x8 digits, for a few guidance scales).

Everything is seeded, single-threaded by default and the data order is fixed, so a rerun
on the same machine / torch build reproduces the weights. The model is deliberately small
and briefly trained: plain sampling draws the requested digit only part of the time.
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

from evosearch.bundled.digits import NULL_CLASS_LABEL, DigitJudge, load_digits_images  # noqa: E402
from evosearch.bundled.paths import asset_path  # noqa: E402
from evosearch.bundled.var_digits import VARDigitsModel, VARDigitsPipeline  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=asset_path("var_digits"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--patch-nums", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8])
    p.add_argument("--vocab-size", type=int, default=64)
    p.add_argument("--latent-channels", type=int, default=8)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    # tokenizer
    p.add_argument("--vq-steps", type=int, default=600)
    p.add_argument("--vq-batch-size", type=int, default=64)
    p.add_argument("--vq-lr", type=float, default=2e-3)
    # transformer
    p.add_argument("--steps", type=int, default=350)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--p-uncond", type=float, default=0.1)
    # evaluation
    p.add_argument("--eval-per-digit", type=int, default=30)
    p.add_argument("--eval-guidance", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    p.add_argument("--default-guidance", type=float, default=1.0)
    return p.parse_args(argv)


def train_tokenizer(model: VARDigitsModel, x: torch.Tensor, args, log) -> dict:
    vq = model.vq
    g = torch.Generator().manual_seed(args.seed + 1)
    opt = torch.optim.Adam(vq.parameters(), lr=args.vq_lr)
    usage = torch.zeros(vq.vocab_size)
    hist = []
    for step in range(args.vq_steps):
        lr = args.vq_lr * 0.5 * (1 + math.cos(math.pi * step / args.vq_steps))
        for group in opt.param_groups:
            group["lr"] = lr
        batch = x[torch.randint(0, len(x), (args.vq_batch_size,), generator=g)]
        f = vq.encode(batch)
        f_hat, idx, vq_loss = vq.quantize(f)
        recon = vq.decoder(f_hat)
        rec_loss = F.mse_loss(recon, batch * 2 - 1)
        loss = rec_loss + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for t in idx:
            usage += torch.bincount(t.reshape(-1), minlength=vq.vocab_size).float()
        if (step + 1) % 50 == 0:
            dead = (usage == 0).nonzero().reshape(-1)
            if len(dead) and step + 1 < args.vq_steps * 0.8:  # restart unused codes from encoder features
                with torch.no_grad():
                    feats = f.detach().permute(0, 2, 3, 1).reshape(-1, vq.latent_channels)
                    pick = torch.randint(0, len(feats), (len(dead),), generator=g)
                    vq.embedding.weight[dead] = feats[pick] * 0.5
            hist.append({"step": step + 1, "recon_mse": rec_loss.item(), "vq_loss": vq_loss.item(),
                         "dead_codes": int(len(dead))})
            log(f"  tokenizer step {step + 1}: recon {rec_loss.item():.4f} vq {vq_loss.item():.4f} dead {len(dead)}")
            usage.zero_()
    return {"history": hist}


def train_transformer(model: VARDigitsModel, tokens: list[torch.Tensor], inputs: torch.Tensor, labels: torch.Tensor,
                      args, log) -> dict:
    tf = model.transformer
    g = torch.Generator().manual_seed(args.seed + 2)
    decay = [p for n, p in tf.named_parameters() if p.ndim >= 2 and "pos" not in n and "emb" not in n]
    no_decay = [p for n, p in tf.named_parameters() if not (p.ndim >= 2 and "pos" not in n and "emb" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    targets = torch.cat(tokens, dim=1)  # (N, L)
    hist, running = [], []
    for step in range(args.steps):
        if step < args.warmup:
            lr = args.lr * (step + 1) / args.warmup
        else:
            angle = math.pi * (step - args.warmup) / (args.steps - args.warmup)
            lr = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(angle)))
        for group in opt.param_groups:
            group["lr"] = lr
        b = torch.randint(0, len(labels), (args.batch_size,), generator=g)
        lab = labels[b].clone()
        lab[torch.rand(len(b), generator=g) < args.p_uncond] = NULL_CLASS_LABEL
        logits = tf(lab, inputs[b])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[b].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tf.parameters(), 2.0)
        opt.step()
        running.append(loss.item())
        if (step + 1) % 50 == 0:
            hist.append({"step": step + 1, "loss": float(np.mean(running))})
            log(f"  transformer step {step + 1}: loss {np.mean(running):.4f} lr {lr:.2e}")
            running = []
    return {"history": hist}


@torch.no_grad()
def hit_rates(pipe: VARDigitsPipeline, judge: DigitJudge, per_digit: int, guidance: list[float], seed: int) -> dict:
    out = {}
    for gs in guidance:
        gen = torch.Generator().manual_seed(seed)
        images = pipe([str(d) for d in range(10)], num_images_per_prompt=per_digit, guidance_scale=gs,
                      generator=gen, output_type="pt").images
        targets = np.repeat(np.arange(10), per_digit)
        pred = judge.predict(images)
        per = {str(d): float((pred[targets == d] == d).mean()) for d in range(10)}
        out[str(gs)] = {"hit_rate": float((pred == targets).mean()), "per_digit": per}
    return out


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)  # noqa: E731

    x, y = load_digits_images("train", size=16)
    log(f"data: {len(x)} training images 16x16")
    model = VARDigitsModel(hidden=args.hidden, latent_channels=args.latent_channels, vocab_size=args.vocab_size,
                           patch_nums=args.patch_nums, dim=args.dim, depth=args.depth, heads=args.heads,
                           default_guidance_scale=args.default_guidance)
    log(f"tokenizer: {sum(p.numel() for p in model.vq.parameters())} parameters; transformer: "
        f"{sum(p.numel() for p in model.transformer.parameters())} parameters, {model.transformer.L} tokens")

    t = time.perf_counter()
    model.train()
    vq_info = train_tokenizer(model, x, args, log)
    model.eval()
    with torch.no_grad():
        tokens = model.vq.tokenize(x)
        inputs = model.vq.teacher_inputs(tokens)
        f = model.vq.encode(x)
        recon = model.vq.decode(model.vq.quantize(f)[0])
        recon_mse = float(F.mse_loss(recon, x))
        used = len(torch.unique(torch.cat([t.reshape(-1) for t in tokens])))
    judge = DigitJudge()
    recon_acc = judge.accuracy(recon, y.tolist())
    vq_seconds = time.perf_counter() - t
    log(f"tokenizer done in {vq_seconds:.0f}s: recon mse {recon_mse:.4f}, codes used {used}/{args.vocab_size}, "
        f"judge accuracy on reconstructions {recon_acc:.3f}")

    t = time.perf_counter()
    model.transformer.train()
    tf_info = train_transformer(model, tokens, inputs, y, args, log)
    model.eval()
    tf_seconds = time.perf_counter() - t
    log(f"transformer done in {tf_seconds:.0f}s")
    train_seconds = time.perf_counter() - t0

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    pipe = VARDigitsPipeline.from_pretrained(args.out)  # evaluate what was saved (float16 weights)
    rates = hit_rates(pipe, judge, args.eval_per_digit, args.eval_guidance, args.seed)
    for gs, r in rates.items():
        log(f"hit rate (judge) at guidance {gs}: {r['hit_rate']:.3f}")
    summary = {
        "seed": args.seed, "threads": args.threads, "torch": torch.__version__,
        # --out by its folder name: the summary ships in the wheel, where an absolute path means nothing
        "args": {k: (v.name if k == "out" else str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seconds": {"tokenizer": round(vq_seconds, 1), "transformer": round(tf_seconds, 1),
                    "train_total": round(train_seconds, 1), "total": round(time.perf_counter() - t0, 1)},
        "tokenizer": {"recon_mse": recon_mse, "codes_used": used, "judge_accuracy_on_reconstructions": recon_acc,
                      **vq_info},
        "transformer": tf_info,
        "hit_rate": rates,
        "judge": {"name": repr(judge), "heldout_accuracy": judge.heldout_accuracy()},
        "samples_per_digit": args.eval_per_digit,
    }
    (args.out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"wrote {args.out} ({sum(p.stat().st_size for p in args.out.iterdir()) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
