#!/usr/bin/env python
"""Train the bundled "digits" models into evosearch/bundled/assets/digits/.

    python scripts/train_digits.py            # ~3-5 minutes on 2 CPU cores

Writes
  - a DigitsPipeline (diffusers UNet2DModel, class-conditional, 16x16x1 pixels, epsilon
    prediction, DDIMScheduler) via save_pretrained: model_index.json, unet/, scheduler/
  - the reward classifier (small CNN): classifier/config.json + classifier/model.safetensors
  - training_summary.json: seeds, timings, classifier/judge accuracy and the hit-rate table

Data: scikit-learn's load_digits (1797 8x8 images, bundled with scikit-learn), the fixed
split of evosearch.bundled.digits.digits_split (first 1200 of a seed-0 permutation
for training, 597 held out), upsampled to 16x16 (bilinear) and scaled to [-1, 1].

Everything is seeded and the data order is fixed, so a rerun on the same machine /
torch build reproduces the weights.

The generator is weakly conditioned on purpose: its label is replaced by the null class
80% of the time during a short training run (500 steps), so it draws well-formed digits
but, with the default sampling settings (guidance_scale 1.0 = no classifier-free
guidance), the requested one only part of the time, as measured by the independent
judge (an SVC on the 8x8 data). Test-time search therefore has something to improve;
guidance raises the hit rate too (the unconditional model is well trained).
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

from diffusers import DDIMScheduler, UNet2DModel  # noqa: E402

from evosearch.bundled.digits import (  # noqa: E402
    NULL_CLASS_LABEL,
    DigitClassifierReward,
    DigitCNN,
    DigitJudge,
    DigitsPipeline,
    load_digits_images,
    load_digits_pipeline,
    save_digit_classifier,
)
from evosearch.bundled.paths import asset_path  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=asset_path("digits"), help="output folder (default: the bundled assets)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for reproducibility; 1 is also the fastest on a busy 2-core machine)")
    # generator
    p.add_argument("--gen-steps", type=int, default=500, help="optimizer steps for the diffusion UNet (batch 64: ~27 epochs)")
    p.add_argument("--gen-batch-size", type=int, default=64)
    p.add_argument("--gen-lr", type=float, default=2e-3)
    p.add_argument("--p-uncond", type=float, default=0.8, help="probability of replacing the label by the null class (high on purpose: a weakly conditioned model)")
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay of the saved weights (0 = no EMA)")
    # classifier
    p.add_argument("--clf-epochs", type=int, default=20)
    p.add_argument("--clf-lr", type=float, default=2e-3)
    # evaluation
    p.add_argument("--eval-per-digit", type=int, default=20, help="samples per digit per setting (x10 digits)")
    p.add_argument("--eval-steps", type=int, nargs="+", default=[25, 50])
    p.add_argument("--eval-guidance", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    p.add_argument("--eval-every", type=int, default=0, help="also measure the hit rate every N generator steps (tuning)")
    p.add_argument("--default-steps", type=int, default=DigitsPipeline.default_num_inference_steps)
    p.add_argument("--default-guidance", type=float, default=DigitsPipeline.default_guidance_scale)
    return p.parse_args(argv)


def make_unet() -> UNet2DModel:
    return UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=32,
        num_class_embeds=NULL_CLASS_LABEL + 1,
    )


def make_scheduler() -> DDIMScheduler:
    # Standard DDPM linear schedule; "trailing" spacing starts sampling at t=999 (pure noise).
    # clip_sample=True (the DDIMScheduler default for pixel-space models): x0-predictions are
    # clamped to [-1, 1], and DigitsPipeline steps with use_clipped_model_output=True (eps
    # re-derived from the clamped x0). Without the clamp, early-step errors of this briefly
    # trained model are amplified by 1/sqrt(alphabar_t) (~150 at t=999) and about a quarter
    # of the deterministic samples diverge into saturated noise. Steppers built on this
    # scheduler must clamp x0 (and re-derive eps from it) too.
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type="epsilon",
        clip_sample=True,
        clip_sample_range=1.0,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )


def shift_augment(x: torch.Tensor, g: torch.Generator, max_shift: int = 1, noise: float = 0.05) -> torch.Tensor:
    """Random integer translations (zero padded) and a little Gaussian noise; x in [0, 1]."""
    n, _, h, w = x.shape
    pad = F.pad(x[:, 0], (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    out = pad[torch.arange(n)[:, None, None], rows, cols][:, None]
    out = out + noise * torch.rand(n, 1, 1, 1, generator=g) * torch.randn(out.shape, generator=g)
    return out.clamp(0, 1)


def train_classifier(args, x_tr, y_tr, x_te, y_te) -> tuple[DigitCNN, dict]:
    torch.manual_seed(args.seed + 1)
    g = torch.Generator().manual_seed(args.seed + 1)
    model = DigitCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=args.clf_lr, weight_decay=1e-4)
    bs = 64
    steps_per_epoch = math.ceil(len(x_tr) / bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.clf_lr, total_steps=args.clf_epochs * steps_per_epoch)
    for epoch in range(args.clf_epochs):
        model.train()
        perm = torch.randperm(len(x_tr), generator=g)
        for i in range(0, len(x_tr), bs):
            idx = perm[i : i + bs]
            xb = shift_augment(x_tr[idx], g)
            loss = F.cross_entropy(model(xb), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        train_acc = (model(x_tr).argmax(-1) == y_tr).float().mean().item()
        test_acc = (model(x_te).argmax(-1) == y_te).float().mean().item()
    return model, dict(train_accuracy=train_acc, heldout_accuracy=test_acc, epochs=args.clf_epochs)


@torch.no_grad()
def hit_rates(pipe: DigitsPipeline, judge: DigitJudge, reward: DigitClassifierReward | None, per_digit: int, steps: int, guidance: float, seed: int, eta: float = 0.0) -> dict:
    """Sample per_digit images of each digit; fraction the judge (and the reward classifier) reads as the target."""
    per = []
    reward_hits = []
    images = []
    for d in range(10):
        gen = torch.Generator().manual_seed(seed * 1000 + d)
        x = pipe(str(d), num_images_per_prompt=per_digit, num_inference_steps=steps, guidance_scale=guidance, eta=eta, generator=gen, output_type="pt").images
        per.append(float((judge.predict(x) == d).mean()))
        if reward is not None:
            reward_hits.append(float((reward.predict(x) == d).float().mean()))
        images.append(x)
    out = dict(steps=steps, guidance_scale=guidance, eta=eta, per_digit=per, overall=float(np.mean(per)))
    if reward is not None:
        out["reward_classifier_overall"] = float(np.mean(reward_hits))
    out["_images"] = torch.cat(images)
    return out


def format_row(r: dict) -> str:
    per = " ".join(f"{v:4.2f}" for v in r["per_digit"])
    extra = f"  (reward-CNN agrees {r['reward_classifier_overall']:.2f})" if "reward_classifier_overall" in r else ""
    return f"steps={r['steps']:3d} g={r['guidance_scale']:4.1f} eta={r.get('eta', 0.0):3.1f} | {per} | judge hit rate {r['overall']:.3f}{extra}"


def train_generator(args, x_tr, y_tr, judge=None) -> tuple[UNet2DModel, DDIMScheduler, list]:
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    unet = make_unet()
    scheduler = make_scheduler()
    ema = None
    if args.ema > 0:
        ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    alphas_cumprod = scheduler.alphas_cumprod
    opt = torch.optim.AdamW(unet.parameters(), lr=args.gen_lr, weight_decay=0.0)
    warmup = min(100, args.gen_steps // 10)
    lr_lambda = lambda s: min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.gen_steps)))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    x0_all = x_tr * 2 - 1
    n = len(x0_all)
    perm = torch.randperm(n, generator=g)
    pos = 0
    log = []
    t0 = time.time()
    for step in range(args.gen_steps):
        if pos + args.gen_batch_size > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos : pos + args.gen_batch_size]
        pos += args.gen_batch_size
        x0 = x0_all[idx]
        labels = y_tr[idx].clone()
        labels[torch.rand(len(idx), generator=g) < args.p_uncond] = NULL_CLASS_LABEL
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = alphas_cumprod[t].sqrt()[:, None, None, None]
        s = (1 - alphas_cumprod[t]).sqrt()[:, None, None, None]
        xt = a * x0 + s * noise
        unet.train()
        loss = F.mse_loss(unet(xt, t, class_labels=labels).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        if ema is not None:
            with torch.no_grad():
                for k, v in unet.state_dict().items():
                    ema[k].mul_(args.ema).add_(v.detach(), alpha=1 - args.ema) if v.dtype.is_floating_point else ema[k].copy_(v)
        if (step + 1) % 100 == 0 or step == 0:
            print(f"  gen step {step + 1:5d}/{args.gen_steps}  loss {loss.item():.4f}  lr {sched.get_last_lr()[0]:.2e}  {time.time() - t0:6.1f}s", flush=True)
        if judge is not None and args.eval_every and (step + 1) % args.eval_every == 0:
            pipe = DigitsPipeline(unet=unet.eval(), scheduler=make_scheduler())
            pipe.set_progress_bar_config(disable=True)
            for gs in args.eval_guidance:
                r = hit_rates(pipe, judge, None, 10, args.default_steps, gs, seed=12345)
                print(f"    [step {step + 1}] {format_row(r)}", flush=True)
                log.append(dict(step=step + 1, **{k: v for k, v in r.items() if not k.startswith('_')}))
    if ema is not None:
        unet.load_state_dict(ema)
    return unet.eval(), scheduler, log


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.use_deterministic_algorithms(True)
    t_start = time.time()
    timings = {}

    x_tr, y_tr = load_digits_images("train")
    x_te, y_te = load_digits_images("test")
    print(f"data: {len(x_tr)} train / {len(x_te)} held-out images, {tuple(x_tr.shape[1:])}")

    t = time.time()
    judge = DigitJudge()
    judge_acc = judge.heldout_accuracy()
    judge_acc_16 = judge.accuracy(x_te, y_te)
    timings["judge_s"] = time.time() - t
    print(f"judge (SVC on 8x8): held-out accuracy {judge_acc:.4f} on the 8x8 digits, {judge_acc_16:.4f} on the 16x16 upsampled ones ({timings['judge_s']:.1f}s)")

    t = time.time()
    clf, clf_info = train_classifier(args, x_tr, y_tr, x_te, y_te)
    timings["classifier_s"] = time.time() - t
    print(f"reward classifier: train accuracy {clf_info['train_accuracy']:.4f}, held-out accuracy {clf_info['heldout_accuracy']:.4f} ({timings['classifier_s']:.1f}s)")

    t = time.time()
    unet, scheduler, tuning_log = train_generator(args, x_tr, y_tr, judge)
    timings["generator_s"] = time.time() - t
    print(f"generator: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters, {args.gen_steps} steps ({timings['generator_s']:.1f}s)")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = DigitsPipeline(unet=unet, scheduler=scheduler)
    pipe.save_pretrained(str(out), safe_serialization=True)
    save_digit_classifier(clf, out / "classifier", extra=dict(heldout_accuracy=round(clf_info["heldout_accuracy"], 4), trained_by="scripts/train_digits.py"))
    for f in out.rglob("*"):  # safetensors writes 0600 files; assets ship in the wheel, readable by all
        if f.is_file():
            f.chmod(0o644)

    # reload exactly what users get, then measure
    pipe = load_digits_pipeline(path=out)
    reward = DigitClassifierReward(path=out / "classifier")
    t = time.time()
    table = []
    print(f"hit rate of plain sampling ({args.eval_per_digit} samples per digit; digits 0..9, then overall)")
    settings = [(steps, gs, 0.0) for steps in args.eval_steps for gs in args.eval_guidance]
    # stochastic DDIM (eta=1), the step that search methods mutate/resample with
    settings += [(DigitsPipeline.default_num_inference_steps, gs, 1.0) for gs in args.eval_guidance[:2]]
    for steps, gs, eta in settings:
        r = hit_rates(pipe, judge, reward, args.eval_per_digit, steps, gs, seed=args.seed + 7, eta=eta)
        print("  " + format_row(r), flush=True)
        table.append({k: v for k, v in r.items() if not k.startswith("_")})
    timings["eval_s"] = time.time() - t
    timings["total_s"] = time.time() - t_start

    sizes = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    summary = dict(
        seed=args.seed,
        torch=torch.__version__,
        threads=args.threads,
        args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
        defaults=dict(num_inference_steps=DigitsPipeline.default_num_inference_steps, guidance_scale=DigitsPipeline.default_guidance_scale),
        judge_heldout_accuracy=judge_acc,
        judge_heldout_accuracy_16px=judge_acc_16,
        classifier=clf_info,
        hit_rates=table,
        tuning_log=tuning_log,
        timings_s={k: round(v, 1) for k, v in timings.items()},
        file_sizes=sizes,
    )
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("files: " + ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in sizes.items()))
    print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))


if __name__ == "__main__":
    main()
