#!/usr/bin/env python
"""Train the bundled "moving digits" segment model into evosearch/bundled/assets/moving_digits/.

    python scripts/train_moving_digits.py            # ~5-7 minutes on one CPU core (7.4 min on a busy one)

Writes
  - a MovingDigitsPipeline (diffusers UNet2DModel over segment frames + context channels,
    class-conditional, v-prediction, DDIMScheduler) via save_pretrained: model_index.json, unet/, scheduler/
  - the reward: a frame classifier (evosearch.bundled.digits.DigitCNN on 16x16 canvases with the
    digit anywhere): classifier/config.json + classifier/model.safetensors
  - training_summary.json: settings, timings, classifier/judge accuracy and sample quality

Data: scikit-learn's load_digits (8x8 sprites, the fixed train split of
evosearch.bundled.digits.digits_split), moving on a 16x16 canvas
(evosearch.bundled.moving_digits.moving_digit_videos). Everything is seeded, the thread
count is fixed (--threads, default 1) and the data stream is a seeded numpy Generator, so a
rerun on the same machine / torch build reproduces the weights.

The generator is trained briefly on purpose: at the default settings it draws a readable,
steadily moving digit only part of the time, so that search has something to improve.
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

from evosearch.bundled.digits import NULL_CLASS_LABEL, DigitClassifierReward, DigitCNN, save_digit_classifier  # noqa: E402
from evosearch.bundled.moving_digits import (  # noqa: E402
    MovingDigitJudge,
    MovingDigitsPipeline,
    load_digit_sprites,
    make_scheduler,
    make_unet,
    moving_digit_videos,
    training_batch,
)
from evosearch.bundled.paths import asset_path  # noqa: E402
from evosearch.rewards.video import TemporalConsistency  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=asset_path("moving_digits"), help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for reproducibility)")
    p.add_argument("--steps", type=int, default=2400, help="optimizer steps for the segment UNet")
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema", type=float, default=0.995, help="EMA decay of the saved weights (0 = none)")
    p.add_argument("--p-uncond", type=float, default=0.1, help="probability of the null class label (for CFG)")
    p.add_argument("--p-first", type=float, default=0.3, help="probability of a first-segment example")
    p.add_argument("--clf-steps", type=int, default=600)
    p.add_argument("--eval-per-digit", type=int, default=6)
    p.add_argument("--eval-steps", type=int, default=20)
    return p.parse_args(argv)


def train_classifier(args, sprites, labels, test_sprites, test_labels):
    """DigitCNN on single 16x16 frames of moving digits (any position), lightly noised."""
    torch.manual_seed(args.seed + 1)
    rng = np.random.default_rng(args.seed + 1)
    model = DigitCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.clf_steps)
    model.train()
    for _ in range(args.clf_steps):
        idx = rng.integers(0, len(sprites), size=64)
        frames = moving_digit_videos(sprites[idx], 1, rng)[:, 0:1]
        x = torch.from_numpy(frames)
        scale = 0.08 * float(rng.random())  # drawn before the noise (the data stream's order)
        noise = torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))
        x = (x + scale * noise).clamp(0, 1)
        loss = F.cross_entropy(model(x), torch.from_numpy(labels[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        frames = torch.from_numpy(moving_digit_videos(test_sprites, 1, np.random.default_rng(123))[:, 0:1])
        acc = (model(frames).argmax(-1).numpy() == test_labels).mean()
    return model, {"heldout_frame_accuracy": float(acc), "steps": args.clf_steps}


def train_generator(args, sprites, labels):
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    unet = make_unet()
    scheduler = make_scheduler()
    acp = scheduler.alphas_cumprod
    v_pred = scheduler.config.prediction_type == "v_prediction"
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()} if args.ema > 0 else None
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=1e-4)
    warm = max(1, args.steps // 20)
    lr_at = lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(args.seed)
    losses = []
    unet.train()
    for step in range(args.steps):
        target, context, y = training_batch(sprites, labels, args.batch_size, rng, p_first=args.p_first)
        drop = torch.rand(len(y), generator=gen) < args.p_uncond
        y = torch.where(drop, torch.full_like(y, NULL_CLASS_LABEL), y)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(y),), generator=gen)
        noise = torch.randn(target.shape, generator=gen)
        a = acp[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - acp[t]).sqrt().view(-1, 1, 1, 1)
        pred = unet(torch.cat([a * target + s * noise, context], dim=1), t, class_labels=y).sample
        loss = F.mse_loss(pred, a * noise - s * target if v_pred else noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        if ema is not None:
            with torch.no_grad():
                for k, v in unet.state_dict().items():
                    if v.dtype.is_floating_point:
                        ema[k].mul_(args.ema).add_(v.detach(), alpha=1 - args.ema)
                    else:
                        ema[k].copy_(v)
        losses.append(loss.item())
        if (step + 1) % 200 == 0:
            print(f"  step {step + 1}/{args.steps}  loss {np.mean(losses[-200:]):.4f}", flush=True)
    if ema is not None:
        unet.load_state_dict(ema)
    unet.eval()
    return MovingDigitsPipeline(unet=unet, scheduler=scheduler), {"final_loss": float(np.mean(losses[-200:]))}


@torch.no_grad()
def evaluate(pipe, args, judge: MovingDigitJudge, reward) -> dict:
    """Sample per-digit videos with the plain pipeline; judge and reward statistics."""
    tc = TemporalConsistency()
    out = {}
    for g in (1.0, 2.0):
        frame_acc, video_acc, rewards, consistency = [], [], [], []
        for digit in range(10):
            gen = torch.Generator().manual_seed(1000 + digit)
            v = pipe(str(digit), num_videos=args.eval_per_digit, num_inference_steps=args.eval_steps,
                     guidance_scale=g, generator=gen, output_type="pt").frames
            frame_acc.append(judge.frame_accuracy(v, digit))
            video_acc.append(judge.video_accuracy(v, digit))
            rewards.append(float(reward(v, str(digit)).mean()))
            consistency.append(float(tc(v).mean()))
        out[f"guidance_{g:g}"] = {"judge_frame_accuracy": float(np.mean(frame_acc)),
                                  "judge_video_accuracy": float(np.mean(video_acc)),
                                  "mean_reward": float(np.mean(rewards)),
                                  "temporal_consistency": float(np.mean(consistency))}
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    sprites, labels = load_digit_sprites("train")
    test_sprites, test_labels = load_digit_sprites("test")

    print("training the frame classifier (reward) ...", flush=True)
    clf, clf_info = train_classifier(args, sprites, labels, test_sprites, test_labels)
    t_clf = time.perf_counter() - t0
    print(f"  held-out frame accuracy {clf_info['heldout_frame_accuracy']:.3f} ({t_clf:.0f}s)", flush=True)

    print("training the segment UNet ...", flush=True)
    pipe, gen_info = train_generator(args, sprites, labels)
    t_gen = time.perf_counter() - t0 - t_clf
    print(f"  done ({t_gen:.0f}s)", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(args.out))
    save_digit_classifier(clf, args.out / "classifier", extra={"trained_on": "moving digits frames (16x16 canvas)"})

    judge = MovingDigitJudge()
    with torch.no_grad():
        frames = torch.from_numpy(moving_digit_videos(test_sprites, 1, np.random.default_rng(7))[:, 0:1])
        judge_acc = float((judge.predict_frames(frames) == test_labels).mean())
    reward = DigitClassifierReward(path=args.out / "classifier")
    quality = evaluate(MovingDigitsPipeline.from_pretrained(str(args.out)), args, judge, reward)
    summary = {
        "seed": args.seed, "threads": args.threads, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "ema": args.ema, "p_uncond": args.p_uncond, "p_first": args.p_first,
        "generator": gen_info, "classifier": clf_info, "judge_heldout_crop_accuracy": judge_acc,
        "samples": quality, "seconds": {"classifier": round(t_clf, 1), "generator": round(t_gen, 1),
                                        "total": round(time.perf_counter() - t0, 1)},
        "torch": torch.__version__,
    }
    (args.out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
