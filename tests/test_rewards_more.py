"""PickScore, HPSv2 and ImageReward loaders on tiny checkpoints written here in the release formats.

Nothing is downloaded: each test builds a tiny configuration of the real architecture, saves
random weights the way the released files are laid out (PickScore: ``CLIPModel`` /
``CLIPProcessor`` ``save_pretrained`` folders; HPSv2: ``torch.save({"state_dict": ...})`` of an
open_clip model, in half precision like the ``*_compressed.pt`` files; ImageReward: a flat
state dict with the release's key names, written out by hand below), and loads it through the
public reward constructors. Scores are checked against independent hand computations.
"""

from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

from evosearch.rewards import HPSv2, ImageReward, PickScore  # noqa: E402
from evosearch.rewards.ensemble import Ensemble  # noqa: E402
from evosearch.rewards.imagereward import IMAGEREWARD_MEAN, IMAGEREWARD_STD  # noqa: E402
from evosearch.testing import CLIP_VOCAB_SIZE, clip_tokenizer  # noqa: E402

OPENAI_MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
OPENAI_STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)


def _images(n, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g)


def _smooth(h, w):
    """A smooth RGB image (1, 3, h, w) in [0, 1], quantised to 8 bits (so PIL paths agree closely)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([xx, yy, (xx * yy) ** 0.5])[None]
    return (img * 255).round() / 255


def _to_pil(img):
    return Image.fromarray((img[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


# ============================================================================ PickScore

PICK_MEAN, PICK_STD = [0.5, 0.45, 0.4], [0.25, 0.27, 0.3]


@pytest.fixture(scope="module")
def pick(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    d = tmp_path_factory.mktemp("pickscore")
    text = dict(vocab_size=CLIP_VOCAB_SIZE, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu", projection_dim=16,
                bos_token_id=CLIP_VOCAB_SIZE - 2, eos_token_id=CLIP_VOCAB_SIZE - 1, pad_token_id=CLIP_VOCAB_SIZE - 1)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=4, hidden_act="gelu", projection_dim=16)
    torch.manual_seed(7)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.logit_scale.fill_(math.log(100.0))  # the released PickScore's value
    model.save_pretrained(d / "model")
    ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True,
                            image_mean=PICK_MEAN, image_std=PICK_STD, resample=3)
    CLIPProcessor(image_processor=ip, tokenizer=clip_tokenizer()).save_pretrained(d / "processor")
    return {"model": model, "dir": d}


def _pick(pick, **kw):
    return PickScore(model=pick["dir"] / "model", processor=str(pick["dir"] / "processor"), device="cpu", **kw)


def _hand_pickscore(model, x, prompts):
    """The PickScore authors' formula, via CLIPModel.forward's logits_per_image diagonal."""
    tok = clip_tokenizer()(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    mean, std = torch.tensor(PICK_MEAN).view(1, 3, 1, 1), torch.tensor(PICK_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], pixel_values=(x - mean) / std)
    return out.logits_per_image.diagonal()


def test_pickscore_loads_folders_and_matches_authors_formula(pick):
    r = _pick(pick, batch_size=4)
    assert not r.model.training
    for k, v in pick["model"].state_dict().items():
        torch.testing.assert_close(r.model.state_dict()[k], v)
    assert r.logit_scale == pytest.approx(100.0)
    x = _images(5)
    prompts = ["a red apple", "a dog", "a red apple", "night sky at the beach", "x"]
    s = r(x, prompts)
    assert s.shape == (5,) and s.dtype == torch.float32
    torch.testing.assert_close(s, _hand_pickscore(pick["model"], x, prompts), atol=1e-4, rtol=1e-4)
    assert s.abs().max() <= 100 and s.std() > 0
    assert not torch.allclose(r(x, "something else"), s)


def test_pickscore_deterministic_chunking_and_text_cache(pick, monkeypatch):
    x = _images(7, seed=1)
    prompts = [f"prompt {i % 3}" for i in range(7)]
    one, chunked = _pick(pick, batch_size=64), _pick(pick, batch_size=2)
    s1 = one(x, prompts)
    torch.testing.assert_close(one(x, prompts), s1, rtol=0, atol=0)
    torch.testing.assert_close(chunked(x, prompts), s1, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(one(x[3:4], prompts[3]), s1[3:4], atol=1e-4, rtol=1e-5)

    encoded = []
    real = chunked.encode_texts
    monkeypatch.setattr(chunked, "encode_texts", lambda p: encoded.extend(p) or real(p))
    chunked.clear_text_cache()
    first = chunked(x[:4], ["a", "b", "a", "c"])
    assert sorted(encoded) == ["a", "b", "c"]
    encoded.clear()
    torch.testing.assert_close(chunked(x[:4], ["a", "b", "a", "c"]), first, rtol=0, atol=0)
    assert encoded == []
    chunked(x[:2], ["d", "a"])
    assert encoded == ["d"]


def test_pickscore_preprocessing_follows_the_processor(pick):
    from transformers import CLIPProcessor

    r = _pick(pick)
    img = _smooth(40, 72)  # non-square: resize shorter side to 32, centre crop 32x32
    ours = r.preprocess(img)
    assert ours.shape == (1, 3, 32, 32)
    ref = CLIPProcessor.from_pretrained(pick["dir"] / "processor").image_processor(
        images=[_to_pil(img)], return_tensors="pt")["pixel_values"]
    assert (ours - ref).abs().max() < 0.1  # normalised units; PIL uint8 bicubic vs torch antialiased bicubic
    # a square input at the model size is only normalised
    x = _images(2, seed=2)
    torch.testing.assert_close(r.preprocess(x), (x - torch.tensor(PICK_MEAN).view(1, 3, 1, 1))
                               / torch.tensor(PICK_STD).view(1, 3, 1, 1))


def test_pickscore_errors_name_the_parameter(pick, tmp_path):
    with pytest.raises(FileNotFoundError, match="model.*absent"):
        PickScore(model=str(tmp_path / "absent"), processor=str(pick["dir"] / "processor"), device="cpu")
    with pytest.raises(FileNotFoundError, match="processor"):
        PickScore(model=str(pick["dir"] / "model"), processor="./no/such/folder", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="model: could not load a transformers CLIPModel"):
        PickScore(model=str(tmp_path / "empty"), processor=str(pick["dir"] / "processor"), device="cpu")
    with pytest.raises(ValueError, match="processor"):  # a model folder is not a processor folder
        PickScore(model=str(pick["dir"] / "model"), processor=str(pick["dir"] / "model"), device="cpu")
    with pytest.raises(OSError, match="model: 'nobody/no-such-model'.*hub"):  # HF_HUB_OFFLINE in conftest
        PickScore(model="nobody/no-such-model", processor=str(pick["dir"] / "processor"), device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        _pick(pick, batch_size=0)


# ============================================================================ HPSv2

HPS_TINY = "evosearch-test-hps-tiny"


@pytest.fixture(scope="module")
def hps(tmp_path_factory):
    d = tmp_path_factory.mktemp("hps")
    (d / "cfg").mkdir()
    (d / "cfg" / f"{HPS_TINY}.json").write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }))
    open_clip.add_model_config(d / "cfg")
    torch.manual_seed(11)
    model = open_clip.create_model(HPS_TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    # the released *_compressed.pt files: {"state_dict": half-precision open_clip state dict}
    sd = {k: v.half() for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd}, d / "HPS_v2.1_compressed.pt")
    model.load_state_dict({k: v.float() for k, v in sd.items()})  # what loading the file must give
    return {"model": model, "pt": d / "HPS_v2.1_compressed.pt", "dir": d}


def _hps_reference_preprocess(x):
    """hpsv2's eval transform (ResizeMaxSize: longest side -> 32, bicubic; pad black; normalise), torchvision ops."""
    import torchvision.transforms.functional as TF

    h, w = x.shape[-2:]
    scale = 32 / max(h, w)
    nh, nw = round(h * scale), round(w * scale)
    y = TF.resize(x, [nh, nw], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    ph, pw = 32 - nh, 32 - nw
    y = TF.pad(y, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0)
    return (y - OPENAI_MEAN) / OPENAI_STD


def _hand_hps(model, x_pre, prompts):
    tok = open_clip.get_tokenizer(HPS_TINY)(prompts)
    with torch.no_grad():
        img = model.encode_image(x_pre, normalize=True)
        txt = model.encode_text(tok, normalize=True)
    return (img @ txt.T).diagonal()  # hpsv2.score: logits_per_image = img @ txt.T, diagonal


def test_hps_loads_release_format_and_matches_hpsv2_scoring(hps):
    r = HPSv2(checkpoint=hps["pt"], model_name=HPS_TINY, device="cpu", batch_size=3)
    for k, v in hps["model"].state_dict().items():
        torch.testing.assert_close(r.clip.model.state_dict()[k], v)
    x = _images(4, seed=3)
    prompts = ["a cat", "a dog", "a cat", "a bird"]
    s = r(x, prompts)
    torch.testing.assert_close(s, _hand_hps(hps["model"], (x - OPENAI_MEAN) / OPENAI_STD, prompts),
                               atol=1e-5, rtol=1e-4)
    assert s.abs().max() <= 1.0  # a plain cosine
    # non-square: longest side to 32 and black padding, as hpsv2's evaluation transform
    img = _smooth(32, 64)
    ref = _hps_reference_preprocess(img)
    assert (r.clip.preprocess(img) - ref).abs().max() < 1e-3
    torch.testing.assert_close(r(img, "a cat"), _hand_hps(hps["model"], ref, ["a cat"]), atol=1e-4, rtol=1e-3)


def test_hps_does_not_change_a_shared_clipscore_backbone(hps):
    from evosearch.rewards import CLIPScore

    clip = CLIPScore(HPS_TINY, pretrained=str(hps["pt"]), device="cpu")
    r = HPSv2(checkpoint=str(hps["pt"]), model_name=HPS_TINY, device="cpu")
    assert r.clip.model is clip.clip.model  # one model in memory
    assert clip.clip.resize_mode == "shortest" and r.clip.resize_mode == "longest"
    x = _images(2, seed=4)
    torch.testing.assert_close(clip(x, "a cat") / 100, r(x, "a cat"), atol=1e-5, rtol=1e-4)


def test_hps_deterministic_chunking_and_text_cache(hps, monkeypatch):
    x = _images(5, seed=5)
    prompts = ["p0", "p1", "p0", "p2", "p1"]
    one = HPSv2(checkpoint=hps["pt"], model_name=HPS_TINY, device="cpu", batch_size=16)
    chunked = HPSv2(checkpoint=hps["pt"], model_name=HPS_TINY, device="cpu", batch_size=2)
    s1 = one(x, prompts)
    torch.testing.assert_close(one(x, prompts), s1, rtol=0, atol=0)
    torch.testing.assert_close(chunked(x, prompts), s1, atol=1e-5, rtol=1e-5)
    encoded = []
    real = one.clip.encode_texts
    monkeypatch.setattr(one.clip, "encode_texts", lambda p: encoded.extend(p) or real(p))
    one(x, prompts)
    assert encoded == []  # all cached
    one(x[:1], "new prompt")
    assert encoded == ["new prompt"]


def test_hps_errors_name_the_parameter(hps, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint.*missing.pt"):
        HPSv2(checkpoint=tmp_path / "missing.pt", model_name=HPS_TINY, device="cpu")
    with pytest.raises(ValueError, match="version.*v2.0.*v2.1.*v3"):
        HPSv2(checkpoint=hps["pt"], model_name=HPS_TINY, device="cpu", version="v3")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint.*garbage.pt"):
        HPSv2(checkpoint=tmp_path / "garbage.pt", model_name=HPS_TINY, device="cpu")
    sd = torch.load(hps["pt"], weights_only=True)["state_dict"]
    torch.save({"state_dict": {k.replace("visual.", "vision."): v for k, v in sd.items()}}, tmp_path / "renamed.pt")
    with pytest.raises(ValueError, match="checkpoint.*renamed.pt.*not an HPS checkpoint"):
        HPSv2(checkpoint=tmp_path / "renamed.pt", model_name=HPS_TINY, device="cpu")
    with pytest.raises(ValueError, match="model_name"):
        HPSv2(checkpoint=hps["pt"], model_name="no-such-arch", device="cpu")


# ============================================================================ ImageReward

IR = dict(vis_width=128, vis_depth=2, patch=8, image=32, txt_hidden=64, txt_layers=2, txt_heads=2, txt_inter=96,
          vocab=64, max_pos=40)
IR_WORDS = ["a", "the", "cat", "dog", "red", "blue", "on", "sky", "at", "night", "photo", "of"]


def _bert_vocab():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + IR_WORDS + list("bcdefghijklmnopqrstuvwxyz")
    vocab += ["##" + c for c in "aeiorstn"]
    return {t: i for i, t in enumerate(vocab)}


def _imagereward_state_dict(seed=0, c=IR):
    """Random tensors under the exact key names of the released ImageReward.pt (for a tiny config)."""
    g = torch.Generator().manual_seed(seed)

    def lin(out, inp, bias=True):
        w = torch.randn(out, inp, generator=g) / math.sqrt(inp)
        return {"weight": w, "bias": 0.1 * torch.randn(out, generator=g)} if bias else {"weight": w}

    def ln(n):
        return {"weight": 1 + 0.1 * torch.randn(n, generator=g), "bias": 0.1 * torch.randn(n, generator=g)}

    sd = {}

    def put(prefix, tensors):
        sd.update({f"{prefix}.{k}": v for k, v in tensors.items()})

    D, V = c["vis_width"], "blip.visual_encoder"
    n_pos = (c["image"] // c["patch"]) ** 2 + 1
    sd[f"{V}.cls_token"] = 0.5 * torch.randn(1, 1, D, generator=g)
    sd[f"{V}.pos_embed"] = 0.5 * torch.randn(1, n_pos, D, generator=g)
    sd[f"{V}.patch_embed.proj.weight"] = torch.randn(D, 3, c["patch"], c["patch"], generator=g) / c["patch"]
    sd[f"{V}.patch_embed.proj.bias"] = 0.1 * torch.randn(D, generator=g)
    for i in range(c["vis_depth"]):
        b = f"{V}.blocks.{i}"
        put(f"{b}.norm1", ln(D))
        put(f"{b}.attn.qkv", lin(3 * D, D))
        put(f"{b}.attn.proj", lin(D, D))
        put(f"{b}.norm2", ln(D))
        put(f"{b}.mlp.fc1", lin(4 * D, D))
        put(f"{b}.mlp.fc2", lin(D, 4 * D))
    put(f"{V}.norm", ln(D))
    H, T = c["txt_hidden"], "blip.text_encoder"
    sd[f"{T}.embeddings.word_embeddings.weight"] = torch.randn(c["vocab"], H, generator=g)
    sd[f"{T}.embeddings.position_embeddings.weight"] = 0.5 * torch.randn(c["max_pos"], H, generator=g)
    sd[f"{T}.embeddings.position_ids"] = torch.arange(c["max_pos"]).expand(1, -1)  # a persistent buffer in BLIP
    put(f"{T}.embeddings.LayerNorm", ln(H))
    for i in range(c["txt_layers"]):
        b = f"{T}.encoder.layer.{i}"
        for att, kv_dim in (("attention", H), ("crossattention", D)):
            put(f"{b}.{att}.self.query", lin(H, H))
            put(f"{b}.{att}.self.key", lin(H, kv_dim))
            put(f"{b}.{att}.self.value", lin(H, kv_dim))
            put(f"{b}.{att}.output.dense", lin(H, H))
            put(f"{b}.{att}.output.LayerNorm", ln(H))
        put(f"{b}.intermediate.dense", lin(c["txt_inter"], H))
        put(f"{b}.output.dense", lin(H, c["txt_inter"]))
        put(f"{b}.output.LayerNorm", ln(H))
    for i, (o, n) in zip((0, 2, 4, 6, 7), ((1024, H), (128, 1024), (64, 128), (16, 64), (1, 16))):
        put(f"mlp.layers.{i}", lin(o, n))
    # BLIP heads the release also carries; ImageReward does not use them
    put("blip.vision_proj", lin(16, D))
    put("blip.text_proj", lin(16, H))
    return sd


def _med_config(c=IR, **over):
    cfg = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
           "hidden_dropout_prob": 0.1, "hidden_size": c["txt_hidden"], "initializer_range": 0.02,
           "intermediate_size": c["txt_inter"], "layer_norm_eps": 1e-12, "max_position_embeddings": c["max_pos"],
           "model_type": "bert", "num_attention_heads": c["txt_heads"], "num_hidden_layers": c["txt_layers"],
           "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": c["vocab"], "encoder_width": 768,
           "add_cross_attention": True}
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def ir(tmp_path_factory):
    from transformers import BertTokenizer

    d = tmp_path_factory.mktemp("imagereward")
    sd = _imagereward_state_dict()
    torch.save(sd, d / "ImageReward.pt")
    (d / "med_config.json").write_text(json.dumps(_med_config()))
    BertTokenizer(vocab=_bert_vocab()).save_pretrained(d / "tokenizer")
    return {"sd": sd, "dir": d, "pt": d / "ImageReward.pt", "med": d / "med_config.json", "tok": d / "tokenizer"}


def _ir(ir, **kw):
    kw.setdefault("med_config", ir["med"])
    kw.setdefault("tokenizer", str(ir["tok"]))
    kw.setdefault("backend", "builtin")
    return ImageReward(checkpoint=ir["pt"], device="cpu", **kw)


def _tokens(ir, prompts):
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(ir["tok"])
    t = tok(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    return t["input_ids"], t["attention_mask"]


def _hand_imagereward(sd, x, ids, mask, c=IR, txt_heads=IR["txt_heads"]):
    """ImageReward's forward written out from the paper code's maths, on the raw state dict."""
    def p(k):
        return sd[k].float()

    def attention(q, k, v, heads, add_mask=None):
        B, Lq, E = q.shape
        q, k, v = (t.reshape(B, t.shape[1], heads, E // heads).transpose(1, 2) for t in (q, k, v))
        a = (q @ k.transpose(-1, -2)) / math.sqrt(E // heads)
        if add_mask is not None:
            a = a + add_mask
        return (a.softmax(-1) @ v).transpose(1, 2).reshape(B, Lq, E)

    # BLIP ViT (timm layout), pre-norm, LayerNorm eps 1e-6, 64-dim heads
    V, D = "blip.visual_encoder.", c["vis_width"]
    pre = (x - OPENAI_MEAN) / OPENAI_STD
    h = F.conv2d(pre, p(V + "patch_embed.proj.weight"), p(V + "patch_embed.proj.bias"), stride=c["patch"])
    h = h.flatten(2).transpose(1, 2)
    h = torch.cat([p(V + "cls_token").expand(h.shape[0], -1, -1), h], 1) + p(V + "pos_embed")
    for i in range(c["vis_depth"]):
        b = f"{V}blocks.{i}."
        y = F.layer_norm(h, (D,), p(b + "norm1.weight"), p(b + "norm1.bias"), 1e-6)
        q, k, v = F.linear(y, p(b + "attn.qkv.weight"), p(b + "attn.qkv.bias")).chunk(3, dim=-1)
        h = h + F.linear(attention(q, k, v, D // 64), p(b + "attn.proj.weight"), p(b + "attn.proj.bias"))
        y = F.layer_norm(h, (D,), p(b + "norm2.weight"), p(b + "norm2.bias"), 1e-6)
        y = F.linear(F.gelu(F.linear(y, p(b + "mlp.fc1.weight"), p(b + "mlp.fc1.bias"))),
                     p(b + "mlp.fc2.weight"), p(b + "mlp.fc2.bias"))
        h = h + y
    img = F.layer_norm(h, (D,), p(V + "norm.weight"), p(V + "norm.bias"), 1e-6)

    # BLIP MED BERT: post-norm, self-attention (padding masked with -10000) + cross-attention to all image tokens
    T, H = "blip.text_encoder.", c["txt_hidden"]

    def ln(t, name):
        return F.layer_norm(t, (H,), p(name + ".weight"), p(name + ".bias"), 1e-12)

    def lin(t, name):
        return F.linear(t, p(name + ".weight"), p(name + ".bias"))

    t = p(T + "embeddings.word_embeddings.weight")[ids] + p(T + "embeddings.position_embeddings.weight")[:ids.shape[1]]
    t = ln(t, T + "embeddings.LayerNorm")
    pad_mask = (1.0 - mask[:, None, None, :].float()) * -10000.0
    for i in range(c["txt_layers"]):
        b = f"{T}encoder.layer.{i}."
        a = attention(lin(t, b + "attention.self.query"), lin(t, b + "attention.self.key"),
                      lin(t, b + "attention.self.value"), txt_heads, pad_mask)
        t = ln(lin(a, b + "attention.output.dense") + t, b + "attention.output.LayerNorm")
        a = attention(lin(t, b + "crossattention.self.query"), lin(img, b + "crossattention.self.key"),
                      lin(img, b + "crossattention.self.value"), txt_heads)
        t = ln(lin(a, b + "crossattention.output.dense") + t, b + "crossattention.output.LayerNorm")
        y = lin(F.gelu(lin(t, b + "intermediate.dense")), b + "output.dense")
        t = ln(y + t, b + "output.LayerNorm")
    r = t[:, 0]
    for i in (0, 2, 4, 6, 7):
        r = lin(r, f"mlp.layers.{i}")
    return (r.squeeze(-1) - IMAGEREWARD_MEAN) / IMAGEREWARD_STD


def test_imagereward_builtin_loads_release_keys_and_matches_hand_computation(ir):
    r = _ir(ir, batch_size=4)
    assert r.backend == "builtin" and not r.net.training
    assert r.net.visual_encoder.config.num_attention_heads == 2 and r.net.visual_encoder.config.image_size == 32
    assert r.net.text_encoder.config.num_attention_heads == 2  # from med_config
    x = _images(5, seed=6)
    prompts = ["a photo of a cat", "the dog", "a red sky at night", "a photo of a cat", "zebra"]
    s = r(x, prompts)
    assert s.shape == (5,) and s.dtype == torch.float32 and s.std() > 0
    ids, mask = _tokens(ir, prompts)
    assert ids.shape == (5, 35) and (ids[:, 0] == 2).all()  # [CLS] first, padded to 35
    torch.testing.assert_close(s, _hand_imagereward(ir["sd"], x, ids, mask), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(r(x, "blue"), s)


def test_imagereward_deterministic_and_chunking_invariant(ir):
    x = _images(6, seed=7)
    prompts = ["a cat", "a dog", "a cat", "sky", "a dog", "the night"]
    one, chunked = _ir(ir, batch_size=64), _ir(ir, batch_size=4)
    s1 = one(x, prompts)
    torch.testing.assert_close(one(x, prompts), s1, rtol=0, atol=0)
    torch.testing.assert_close(chunked(x, prompts), s1, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(one(x[4:5], prompts[4]), s1[4:5], atol=1e-4, rtol=1e-5)
    # no text-embedding cache (the text encoder cross-attends to the image): tokenisation is per distinct prompt
    ids, mask = one.tokenize(["a", "b", "a"])
    assert torch.equal(ids[0], ids[2]) and not torch.equal(ids[0], ids[1]) and mask.shape == (3, 35)


def test_imagereward_med_config_inferred_and_as_dict(ir):
    x = _images(3, seed=8)
    # no med_config with a local checkpoint: BERT conventions (64-dim heads) -> 1 head for hidden 64
    inferred = _ir(ir, med_config=None)
    assert inferred.net.text_encoder.config.num_attention_heads == 1
    ids, mask = _tokens(ir, ["a cat"] * 3)
    torch.testing.assert_close(inferred(x, "a cat"), _hand_imagereward(ir["sd"], x, ids, mask, txt_heads=1),
                               atol=1e-4, rtol=1e-4)
    as_dict = _ir(ir, med_config=_med_config(num_attention_heads=1))
    torch.testing.assert_close(as_dict(x, "a cat"), inferred(x, "a cat"), atol=1e-5, rtol=1e-5)


def test_imagereward_preprocess_resizes_like_its_transform(ir):
    import torchvision.transforms as T

    r = _ir(ir)
    img = _smooth(48, 80)
    ours = r.preprocess(img)
    tf = T.Compose([T.Resize(32, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32), T.ToTensor(),
                    T.Normalize(open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)])
    assert ours.shape == (1, 3, 32, 32)
    assert (ours - tf(_to_pil(img))[None]).abs().max() < 0.05


def test_imagereward_errors_name_the_parameter(ir, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint.*nope.pt"):
        ImageReward(checkpoint=tmp_path / "nope.pt", med_config=ir["med"], device="cpu", backend="builtin")
    with pytest.raises(FileNotFoundError, match="med_config.*absent.json"):
        _ir(ir, med_config=tmp_path / "absent.json")
    with pytest.raises(ValueError, match="backend.*auto, package, builtin.*timm"):
        _ir(ir, backend="timm")
    # a missing weight, named by its checkpoint key
    sd = dict(ir["sd"])
    del sd["blip.text_encoder.encoder.layer.1.crossattention.self.key.weight"]
    torch.save(sd, tmp_path / "short.pt")
    with pytest.raises(ValueError, match=r"checkpoint.*missing keys.*layer\.1\.crossattention\.self\.key\.weight"):
        ImageReward(checkpoint=tmp_path / "short.pt", device="cpu", tokenizer=str(ir["tok"]), backend="builtin")
    # renamed prefixes: not an ImageReward checkpoint at all
    torch.save({k.replace("blip.", "model."): v for k, v in ir["sd"].items()}, tmp_path / "renamed.pt")
    with pytest.raises(ValueError, match="checkpoint.*not an ImageReward checkpoint"):
        ImageReward(checkpoint=tmp_path / "renamed.pt", device="cpu", backend="builtin")
    # med_config that disagrees with the weights (3 layers, checkpoint has 2)
    with pytest.raises(ValueError, match=r"med_config.*missing keys.*encoder\.layer\.2"):
        _ir(ir, med_config=_med_config(num_hidden_layers=3))
    with pytest.raises(ValueError, match=r"med_config.*wrong shape.*intermediate"):
        _ir(ir, med_config=_med_config(intermediate_size=80))
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint: could not read"):
        ImageReward(checkpoint=tmp_path / "garbage.pt", device="cpu", backend="builtin")
    # a tokenizer larger than the text encoder's vocabulary
    from transformers import BertTokenizer

    big = {**_bert_vocab(), **{f"w{i}": 100 + i for i in range(60)}}
    BertTokenizer(vocab=big).save_pretrained(tmp_path / "bigtok")
    with pytest.raises(ValueError, match="tokenizer.*vocabulary"):
        _ir(ir, tokenizer=str(tmp_path / "bigtok"))
    if not _has_package():
        with pytest.raises(ImportError, match="backend.*image-reward"):
            ImageReward(checkpoint=ir["pt"], device="cpu", backend="package")


def _has_package():
    import importlib.util

    return importlib.util.find_spec("ImageReward") is not None


def test_imagereward_uses_the_package_loader_when_installed(ir, monkeypatch):
    """With ``image-reward`` importable, ``backend="auto"`` loads through ``ImageReward.load`` (faked here)."""
    builtin = _ir(ir)
    calls = []

    class FakeBlip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual_encoder = types.SimpleNamespace()
            self.tokenizer = builtin.tokenizer
            self.net = builtin.net

        def forward(self):  # pragma: no cover
            raise NotImplementedError

    class FakeModel(torch.nn.Module):
        mean, std = IMAGEREWARD_MEAN, IMAGEREWARD_STD

        def __init__(self):
            super().__init__()
            self.blip = FakeBlip()
            self.mlp = builtin.net.mlp
            net = builtin.net
            # the package's module interfaces: the ViT returns a tensor; the BERT takes return_dict
            self.blip.visual_encoder = lambda px: net.visual_encoder(pixel_values=px).last_hidden_state
            self.blip.visual_encoder.patch_embed = types.SimpleNamespace(img_size=(32, 32))  # timm's PatchEmbed
            self.blip.text_encoder = lambda ids, return_dict, **kw: net.text_encoder(ids, is_decoder=False, **kw)

    def load(name, device, med_config=None, download_root=None):
        calls.append((name, str(device), med_config))
        return FakeModel()

    monkeypatch.setitem(sys.modules, "ImageReward", types.SimpleNamespace(load=load))
    r = ImageReward(checkpoint=ir["pt"], med_config=ir["med"], device="cpu")
    assert r.backend == "package"
    assert calls == [(str(ir["pt"]), "cpu", str(ir["med"]))]
    x = _images(3, seed=9)
    torch.testing.assert_close(r(x, ["a cat", "sky", "a cat"]), builtin(x, ["a cat", "sky", "a cat"]),
                               atol=1e-5, rtol=1e-5)


# ============================================================================ together


def test_rewards_combine_in_a_rank_ensemble(pick, hps, ir):
    """Different scales (x100 cosine, cosine, z-score) combine through per-batch rank normalisation."""
    x = _images(4, seed=10)
    rewards = [_pick(pick), HPSv2(checkpoint=hps["pt"], model_name=HPS_TINY, device="cpu"), _ir(ir)]
    e = Ensemble(rewards, normalize="rank")
    comps = e.components(x, "a cat")
    assert list(comps) == ["pickscore", "hpsv2", "imagereward"]
    from evosearch.rewards.ensemble import rank_normalize

    expected = sum(rank_normalize(v) for v in comps.values()).float()
    torch.testing.assert_close(e(x, "a cat"), expected)


# ---------------------------------------------- issue 18: complex scores are not cut to their real part
@pytest.mark.parametrize("scores", [torch.tensor([1 + 2j, 3 + 0j]), np.array([1 + 1j, 2 + 0j]), [1.0, 2j]])
def test_complex_scores_are_refused(scores):
    from evosearch.rewards.base import FunctionReward, RewardError

    with pytest.raises(RewardError, match="returned complex scores"):
        FunctionReward(lambda images, prompts: scores, name="cplx")(torch.rand(2, 3, 8, 8), "p")
