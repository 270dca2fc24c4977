#!/usr/bin/env python
"""Train the shapes world's learned reward (a contrastive image-text model) into the package.

    python scripts/train_shapes_reward.py --steps 2500 --text-negatives 1 --image-negatives 0 \
        --out evosearch/bundled/assets/shapes/reward-v1                     # shapes-clip-v1 (the weak one)
    python scripts/train_shapes_reward.py --init-from evosearch/bundled/assets/shapes/reward-v1 \
        --steps 700 --lr 1e-3 --seed 1 --out /tmp/reward-v2                 # v2 (not bundled any more)
    python scripts/train_shapes_reward.py --init-from /tmp/reward-v2 --steps 1000 --lr 5e-4 --threads 1 \
        --relation-negatives --focus position --focus-share 0.5 --out /tmp/reward-v3   # v3 (not bundled any more)
    python scripts/train_shapes_reward.py --init-from /tmp/reward-v3 --steps 500 --lr 1e-3 --threads 1 \
        --focus counting --focus-share 0.75 --image-negatives 2 \
        --only-words one two three four circles squares triangles           # shapes-clip (v4, bundled)

Data: rendered scenes (``shapes.render``) of random prompts from every category, degraded the
way generated images are (Gaussian blur, pixel noise, brightness and contrast jitter), each
with its prompt. Loss: CLIP's symmetric InfoNCE over the batch with hard negatives on both sides:
- text side, ``--text-negatives`` per image: its prompt changed in one attribute
  (``grammar.perturb_spec``: a flipped relation, swapped colour binding, a count off by one,
  a colour, a shape);
- image side, ``--image-negatives`` per prompt: a *render* of such a changed scene, or of the
  scene with one object missing or one extra (``hard_negative_scene``), so that the prompt
  must prefer its own picture over the picture of what a generator gets wrong.
``--relation-negatives`` makes the relation flip the first negative on both sides for every
scene with a relation: without it, the flip is one perturbation in eight and the reward learns
to read which objects are there but barely where (v2 preferred a judge-correct generated
sample over the same sample under its flipped relation 60% of the time; v3 93%).
``--only-words`` trains nothing but those words' embeddings: v4 is v3 with the counting words
retuned against renders of five objects for "four" (v3 scored a generated five above a correct four),
so every prompt without them (every category but counting) scores exactly as under v3.
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
from evosearch.bundled.shapes.grammar import (CATEGORIES, COLORS, SHAPES, ObjectSpec, SceneSpec,  # noqa: E402
                                              perturb_spec, sample_spec)
from evosearch.bundled.shapes.model import MAX_LENGTH, build_tokenizer  # noqa: E402
from evosearch.bundled.shapes.render import render_array  # noqa: E402
from evosearch.bundled.shapes.reward import ShapesCLIPModel  # noqa: E402

FLIP = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the bundled assets shapes/reward)")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps (default: 3000)")
    p.add_argument("--batch-size", type=int, default=128, help="scenes per step (default: 128)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (default: 2e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of data and initial weights (default: 0)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    p.add_argument("--eval-scenes", type=int, default=1200, help="held-out scenes for the summary (default: 1200)")
    p.add_argument("--text-negatives", type=int, default=3, help="perturbed prompts per image (default: 3)")
    p.add_argument("--image-negatives", type=int, default=1,
                   help="renders of a perturbed scene per prompt (default: 1; 0 = the v1 recipe)")
    p.add_argument("--init-from", type=Path, default=None, help="start from this saved reward (fine-tune)")
    p.add_argument("--focus", choices=CATEGORIES, default=None, help="draw this category more often")
    p.add_argument("--focus-share", type=float, default=0.5, help="share of --focus scenes in a batch (default 0.5)")
    p.add_argument("--relation-negatives", action="store_true",
                   help="for every scene with a relation, its first text negative is the flipped relation and its "
                        "first image negative a render of the flipped scene (the same objects, places swapped)")
    p.add_argument("--only-words", nargs="+", default=None, metavar="WORD",
                   help="train only these words' token embeddings, everything else frozen: a prompt without them "
                        "scores exactly as before (e.g. the counting words, which no other category uses)")
    return p.parse_args(argv)


def word_embedding_rows(model: ShapesCLIPModel, tokenizer, words: list[str]) -> torch.Tensor:
    """Freeze ``model`` but the token embeddings of ``words``; returns the mask of the rows that stay."""
    unknown = [w for w in words if w not in tokenizer.get_vocab()]
    if unknown:
        raise SystemExit(f"--only-words: {unknown} are not words of the grammar ({', '.join(tokenizer.get_vocab())})")
    for p in model.parameters():
        p.requires_grad_(False)
    table = model.text_encoder.get_input_embeddings().weight
    table.requires_grad_(True)
    frozen = torch.ones(len(table), dtype=torch.bool)
    frozen[tokenizer.convert_tokens_to_ids(words)] = False
    return frozen


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


def hard_negative_scene(spec: SceneSpec, rng: np.random.Generator) -> SceneSpec:
    """A scene a generator gets wrong for ``spec`` (to render, not to say): one attribute changed
    (``perturb_spec``), or, for scenes of two or more objects, one object missing or one extra
    (for counting, one more of the same: five for "four", which no prompt can ask for).
    The result may be outside the grammar (three different objects, five); it is only drawn."""
    objs = spec.objects
    kind = rng.random()
    if kind < 0.15 and len(objs) >= 2:  # one missing
        drop = rng.integers(len(objs))
        keep = [o for i, o in enumerate(objs) if i != drop]
        return SceneSpec("two_object" if len(keep) > 1 else "colors", tuple(keep))
    if kind < 0.3 and len(objs) <= 3 and spec.category != "counting":  # one extra
        extra = ObjectSpec(SHAPES[rng.integers(len(SHAPES))], COLORS[rng.integers(len(COLORS))])
        return SceneSpec("two_object", (*objs, extra))
    if kind < 0.3 and spec.category == "counting" and len(objs) >= 2:  # one more of the same
        return SceneSpec("counting", (*objs, objs[0]))
    return perturb_spec(spec, rng)


def flipped_relation(spec: SceneSpec) -> SceneSpec:
    """The same two objects in the opposite relation ("A left of B" -> "A right of B")."""
    return SceneSpec(spec.category, spec.objects, FLIP[spec.relation])


def batch(step: int, n: int, seed: int, tokenizer, text_negatives: int = 1, image_negatives: int = 0,
          train: bool = True, focus: str | None = None, focus_share: float = 0.5, relation_negatives: bool = False):
    """(images (n,3,32,32), true prompt ids (n,L), negative prompt ids (n*text_negatives,L) in image-major
    order, negative images (n*image_negatives,3,32,32) in prompt-major order, prompts)."""
    rng = np.random.default_rng([seed, step, 0 if train else 1])
    images, texts, negatives, negative_images = [], [], [], []
    for _ in range(n):
        spec = sample_spec(rng, focus if focus and rng.random() < focus_share else None)
        img, _ = render_array(spec, seed=int(rng.integers(2**62)))
        images.append(img)
        texts.append(spec.prompt())
        flip = relation_negatives and spec.relation is not None
        negatives += [(flipped_relation(spec) if flip and k == 0 else perturb_spec(spec, rng)).prompt()
                      for k in range(text_negatives)]
        negative_images += [render_array(flipped_relation(spec) if flip and k == 0 else hard_negative_scene(spec, rng),
                                         seed=int(rng.integers(2**62)))[0] for k in range(image_negatives)]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    xn = (torch.from_numpy(np.stack(negative_images)).permute(0, 3, 1, 2) if negative_images
          else torch.zeros(0, *x.shape[1:]))
    tok = lambda t: tokenizer(t, padding="max_length", max_length=MAX_LENGTH, truncation=True,  # noqa: E731
                              return_tensors="pt").input_ids
    return x, tok(texts), tok(negatives), xn, texts


@torch.no_grad()
def evaluate(model, tokenizer, scenes: int = 1200, seed: int = 0) -> dict:
    """Pairwise accuracy on held-out degraded renders, per category:
    ``text``: the true prompt outscores its one-attribute perturbation on the scene's render;
    ``image``: the scene's render outscores a render of a hard-negative scene for the true prompt.
    The held-out stream is never used in training."""
    model.eval()
    g = torch.Generator().manual_seed(10_000 + seed)
    hits = {side: {c: [] for c in CATEGORIES} for side in ("text", "image")}
    hits["flip"] = {"position": []}  # the true prompt outscores the same prompt with the relation flipped
    rng = np.random.default_rng([seed, 1 << 40, 99])  # no training step draws from this stream
    tok = lambda t: tokenizer(t, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids  # noqa
    for lo in range(0, scenes, 120):
        specs = [sample_spec(rng, CATEGORIES[(lo + k) % len(CATEGORIES)]) for k in range(120)]
        x = torch.from_numpy(np.stack([render_array(s, seed=int(rng.integers(2**62)))[0] for s in specs]))
        xn = torch.from_numpy(np.stack([render_array(hard_negative_scene(s, rng), seed=int(rng.integers(2**62)))[0]
                                        for s in specs]))
        img = model.encode_image(degrade(x.permute(0, 3, 1, 2), g))
        img_neg = model.encode_image(degrade(xn.permute(0, 3, 1, 2), g))
        txt = model.encode_text(tok([s.prompt() for s in specs]))
        pos = (img * txt).sum(-1)
        neg = (img * model.encode_text(tok([perturb_spec(s, rng).prompt() for s in specs]))).sum(-1)
        neg_img = (img_neg * txt).sum(-1)
        flips = [k for k, s in enumerate(specs) if s.relation is not None]
        neg_flip = (img[flips] * model.encode_text(tok([flipped_relation(specs[k]).prompt() for k in flips]))).sum(-1)
        for s, p, q, r in zip(specs, pos, neg, neg_img):
            hits["text"][s.category].append(bool(p > q))
            hits["image"][s.category].append(bool(p > r))
        for k, q in zip(flips, neg_flip):
            hits["flip"]["position"].append(bool(pos[k] > q))
    model.train()
    return {side: {c: round(float(np.mean(v)), 3) for c, v in per.items()} for side, per in hits.items()}


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = args.out or asset_path("shapes", "reward")
    tokenizer = build_tokenizer()
    if args.init_from is not None:
        model = ShapesCLIPModel.from_pretrained(str(args.init_from))
    else:
        model = ShapesCLIPModel(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model.train()
    frozen_rows = word_embedding_rows(model, tokenizer, args.only_words) if args.only_words else None
    table = model.text_encoder.get_input_embeddings().weight
    kept = table.detach()[frozen_rows].clone() if frozen_rows is not None else None
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                            weight_decay=0.0 if frozen_rows is not None else 1e-4)
    warmup = 100
    t0 = time.time()
    log = []
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        x, pos_ids, neg_ids, x_neg, _ = batch(step, args.batch_size, args.seed, tokenizer, args.text_negatives,
                                              args.image_negatives, focus=args.focus, focus_share=args.focus_share,
                                              relation_negatives=args.relation_negatives)
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        with torch.set_grad_enabled(frozen_rows is None):  # a frozen image encoder needs no graph
            images = model.encode_image(degrade(torch.cat([x, x_neg]), g))
        img, img_neg = images[: len(x)], images[len(x):]
        txt = model.encode_text(torch.cat([pos_ids, neg_ids]))
        scale = model.logit_scale.exp().clamp(max=100)
        target = torch.arange(len(img))
        # image -> text: every prompt of the batch plus all perturbed prompts
        per_image = scale * img @ txt.T
        # text -> image: every image of the batch plus all renders of hard-negative scenes
        per_text = scale * txt[: len(img)] @ torch.cat([img, img_neg]).T
        loss = (F.cross_entropy(per_image, target) + F.cross_entropy(per_text, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if frozen_rows is not None:
            with torch.no_grad():
                table[frozen_rows] = kept  # exactly as loaded, whatever the optimizer did
        if (step + 1) % 100 == 0:
            entry = {"step": step + 1, "loss": round(loss.item(), 4), "seconds": round(time.time() - t0, 1)}
            log.append(entry)
            print(entry, flush=True)
    model.eval()
    heldout = evaluate(model, tokenizer, args.eval_scenes, args.seed)
    print("held-out pairwise accuracy (text: true prompt > perturbed prompt; image: true render > hard-negative "
          "render):", heldout, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    summary = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
               "text_negatives": args.text_negatives, "image_negatives": args.image_negatives,
               "init_from": args.init_from.name if args.init_from else None,
               "focus": args.focus, "focus_share": args.focus_share if args.focus else None,
               "relation_negatives": args.relation_negatives, "only_words": args.only_words,
               "train_minutes": round((time.time() - t0) / 60, 1), "torch": torch.__version__,
               "parameters": sum(p.numel() for p in model.parameters()),
               "heldout_pairwise_accuracy": heldout, "loss_log": log}
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for f in out.rglob("*"):
        if f.is_file():
            f.chmod(0o644)
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
