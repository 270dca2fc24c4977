"""Rewards: base interface, CLIPScore / Aesthetic on self-written open_clip checkpoints, Ensemble maths.

No weights can be downloaded here, so the CLIP tests register tiny open_clip architectures,
save random weights in the formats open_clip's loader reads (torch state dict, safetensors,
a ``local-dir:`` model folder) and load them through the real reward constructors.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

open_clip = pytest.importorskip("open_clip")

from evosearch.rewards.base import FunctionReward, Reward, as_reward  # noqa: E402
from evosearch.rewards.clip import (  # noqa: E402
    Aesthetic,
    AestheticMLP,
    CLIPScore,
    load_aesthetic_mlp,
    load_clip,
)
from evosearch.rewards.ensemble import Ensemble  # noqa: E402

TINY = "evosearch-test-tiny"  # embed_dim 64
TINY_768 = "evosearch-test-tiny-768"  # embed_dim 768, what the LAION aesthetic head expects


def _tiny_cfg(embed_dim: int) -> dict:
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Register the tiny configs and write random-weight checkpoints; returns paths and source models."""
    d = tmp_path_factory.mktemp("clip")
    cfg_dir = d / "configs"
    cfg_dir.mkdir()
    for name, dim in ((TINY, 64), (TINY_768, 768)):
        (cfg_dir / f"{name}.json").write_text(json.dumps(_tiny_cfg(dim)))
    open_clip.add_model_config(cfg_dir)

    from safetensors.torch import save_file

    out = {}
    for name in (TINY, TINY_768):
        torch.manual_seed(1234 if name == TINY else 4321)
        model = open_clip.create_model(name).eval()
        with torch.no_grad():  # perturb every tensor, so loading a wrong/missing tensor shows in the scores
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        sd = model.state_dict()
        pt = d / f"{name}.pt"
        torch.save(sd, pt)
        st = d / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
        out[name] = {"model": model, "pt": pt, "safetensors": st}

    # an open_clip model folder, the layout of hub repos: open_clip_config.json + weights
    folder = d / "tiny-folder"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": _tiny_cfg(64),
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    }))
    save_file({k: v.contiguous() for k, v in out[TINY]["model"].state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    out["folder"] = folder
    return out


def _images(n, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g)


def _hand_clip_score(model, x_pre, prompts):
    """100 * cosine similarity computed directly with the model's encoders."""
    tok = open_clip.get_tokenizer(TINY)(prompts)
    with torch.no_grad():
        img = model.encode_image(x_pre)
        txt = model.encode_text(tok)
    return 100 * F.cosine_similarity(img, txt, dim=-1)


# ----------------------------------------------------------------------------- CLIPScore


def test_clipscore_loads_checkpoint_and_matches_hand_computation(ckpts):
    src = ckpts[TINY]["model"]
    reward = CLIPScore(TINY, pretrained=str(ckpts[TINY]["pt"]), device="cpu", batch_size=4)
    assert not reward.clip.model.training
    # the weights really come from the file, not a fresh random init
    for k, v in src.state_dict().items():
        torch.testing.assert_close(reward.clip.model.state_dict()[k], v)

    x = _images(6)
    prompts = ["a red apple", "a dog", "a red apple", "night sky", "a dog", "x"]
    scores = reward(x, prompts)
    assert scores.shape == (6,) and scores.dtype == torch.float32
    # 32x32 input at image_size 32: preprocessing is just OpenAI normalisation
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    x_pre = (x - mean) / std
    torch.testing.assert_close(reward.clip.preprocess(x), x_pre)
    expected = _hand_clip_score(src, x_pre, prompts)
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)
    assert scores.abs().max() <= 100
    # prompt matters: same images, other prompt, different scores
    assert not torch.allclose(reward(x, "something else entirely"), scores)


def test_clipscore_safetensors_and_pathlike_give_same_scores(ckpts):
    x = _images(3, seed=1)
    a = CLIPScore(TINY, pretrained=str(ckpts[TINY]["pt"]), device="cpu")(x, "a cat")
    b = CLIPScore(TINY, pretrained=ckpts[TINY]["safetensors"], device="cpu")(x, "a cat")
    torch.testing.assert_close(a, b)


def test_clipscore_local_dir_model_folder_uses_its_preprocess_cfg(ckpts):
    reward = CLIPScore(f"local-dir:{ckpts['folder']}", device="cpu")
    x = _images(2, seed=2)
    torch.testing.assert_close(reward.clip.preprocess(x), (x - 0.5) / 0.25)
    expected = _hand_clip_score(ckpts[TINY]["model"], (x - 0.5) / 0.25, ["a cat", "a cat"])
    torch.testing.assert_close(reward(x, "a cat"), expected, atol=1e-4, rtol=1e-4)


def test_clipscore_deterministic_and_batch_chunking_invariant(ckpts):
    x = _images(7, seed=3)
    prompts = [f"prompt {i % 3}" for i in range(7)]
    one = CLIPScore(TINY, pretrained=str(ckpts[TINY]["pt"]), device="cpu", batch_size=64)
    chunked = CLIPScore(TINY, pretrained=str(ckpts[TINY]["pt"]), device="cpu", batch_size=3)
    s1 = one(x, prompts)
    torch.testing.assert_close(one(x, prompts), s1, rtol=0, atol=0)
    torch.testing.assert_close(chunked(x, prompts), s1, atol=1e-4, rtol=1e-5)
    # each sample's score does not depend on the rest of the batch
    torch.testing.assert_close(one(x[2:3], prompts[2]), s1[2:3], atol=1e-4, rtol=1e-5)


def test_clipscore_text_cache(ckpts, monkeypatch):
    reward = CLIPScore(TINY, pretrained=str(ckpts[TINY]["pt"]), device="cpu", batch_size=2)
    encoded = []
    real = reward.clip.encode_texts

    def counting(prompts):
        encoded.extend(prompts)
        return real(prompts)

    monkeypatch.setattr(reward.clip, "encode_texts", counting)
    x = _images(4, seed=4)
    first = reward(x, ["a", "b", "a", "c"])
    assert sorted(encoded) == ["a", "b", "c"]  # each distinct prompt encoded once
    encoded.clear()
    second = reward(x, ["a", "b", "a", "c"])
    assert encoded == []
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    reward(x, ["c", "d", "d", "a"])
    assert encoded == ["d"]  # only the new prompt
    # a cached embedding equals a fresh one
    reward.clear_text_cache()
    encoded.clear()
    torch.testing.assert_close(reward(x, ["a", "b", "a", "c"]), first, atol=1e-5, rtol=1e-5)
    assert sorted(encoded) == ["a", "b", "c"]


def test_preprocess_resizes_like_open_clip(ckpts):
    reward = CLIPScore(TINY, pretrained=str(ckpts[TINY]["pt"]), device="cpu")
    # smooth image (so uint8 rounding inside PIL's resize does not dominate), non-square
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 80), indexing="ij")
    img = torch.stack([xx, yy, (xx * yy) ** 0.5])[None]
    img = (img * 255).round() / 255
    ours = reward.clip.preprocess(img)
    assert ours.shape == (1, 3, 32, 32)
    from open_clip.transform import PreprocessCfg, image_transform_v2

    tf = image_transform_v2(PreprocessCfg(**reward.clip.preprocess_cfg), is_train=False)
    pil = Image.fromarray((img[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    ref = tf(pil)[None]
    assert (ours - ref).abs().max() < 0.05  # in normalised units (~0.013 in [0, 1] pixels)


def test_clip_errors_name_the_parameter(ckpts, tmp_path):
    with pytest.raises(ValueError, match=r"model_name.*open_clip\.list_models"):
        CLIPScore("no-such-model", pretrained=str(ckpts[TINY]["pt"]), device="cpu")
    missing = tmp_path / "nope" / "weights.pt"
    with pytest.raises(FileNotFoundError, match="pretrained.*weights.pt"):
        CLIPScore(TINY, pretrained=str(missing), device="cpu")
    with pytest.raises(ValueError, match="pretrained.*not-a-tag"):
        CLIPScore(TINY, pretrained="not-a-tag", device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        CLIPScore(TINY, pretrained=str(ckpts[TINY]["pt"]), device="cpu", batch_size=0)
    # a checkpoint of another architecture
    with pytest.raises(ValueError, match="pretrained.*does not fit"):
        CLIPScore(TINY, pretrained=str(ckpts[TINY_768]["pt"]), device="cpu")
    with pytest.raises(FileNotFoundError, match="model_name"):
        CLIPScore(f"local-dir:{tmp_path / 'absent'}", device="cpu")


def test_backbone_shared_between_rewards(ckpts):
    a = load_clip(TINY, str(ckpts[TINY]["pt"]), "cpu")
    b = load_clip(TINY, str(ckpts[TINY]["pt"]), "cpu")
    c = load_clip(TINY, str(ckpts[TINY]["safetensors"]), "cpu")
    assert a is b and a is not c


# ----------------------------------------------------------------------------- Aesthetic


def _write_mlp(path, input_dim=768, seed=0, fmt="pth", rename=None):
    torch.manual_seed(seed)
    sd = AestheticMLP(input_dim).state_dict()
    assert sorted(sd) == sorted(
        f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")
    )  # the published checkpoint's keys
    if rename:
        sd = {rename(k): v for k, v in sd.items()}
    if fmt == "pth":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file

        save_file(sd, str(path))
    return sd


def test_aesthetic_pth_and_safetensors_match_hand_computation(ckpts, tmp_path):
    sd = _write_mlp(tmp_path / "aes.pth", fmt="pth")
    _write_mlp(tmp_path / "aes.safetensors", fmt="safetensors")
    clip_pt = str(ckpts[TINY_768]["pt"])
    r1 = Aesthetic(TINY_768, clip_pt, mlp_path=tmp_path / "aes.pth", device="cpu", batch_size=2)
    r2 = Aesthetic(TINY_768, clip_pt, mlp_path=str(tmp_path / "aes.safetensors"), device="cpu")
    assert not r1.mlp.training
    x = _images(5, seed=5)
    s1 = r1(x, "ignored")
    assert s1.shape == (5,)
    torch.testing.assert_close(r2(x, ["p"] * 5), s1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r1(x), s1, rtol=0, atol=0)  # deterministic (dropout off), prompt ignored

    # by hand: published recipe = MLP(normalize(CLIP image embedding))
    mlp = torch.nn.Sequential(
        torch.nn.Linear(768, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128), torch.nn.Dropout(0.2),
        torch.nn.Linear(128, 64), torch.nn.Dropout(0.1), torch.nn.Linear(64, 16), torch.nn.Linear(16, 1),
    ).eval()
    mlp.load_state_dict({k.removeprefix("layers."): v for k, v in sd.items()})
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        emb = ckpts[TINY_768]["model"].encode_image((x - mean) / std)
        expected = mlp(emb / emb.norm(dim=-1, keepdim=True)).squeeze(-1)
    torch.testing.assert_close(s1, expected, atol=1e-4, rtol=1e-4)
    assert s1.std() > 0


def test_aesthetic_errors(ckpts, tmp_path):
    clip_pt = str(ckpts[TINY_768]["pt"])
    _write_mlp(tmp_path / "renamed.pth", rename=lambda k: k.replace("layers.", "net."))
    with pytest.raises(ValueError, match=r"mlp_path.*missing keys.*layers\.0\.weight.*unexpected keys.*net\.0"):
        Aesthetic(TINY_768, clip_pt, mlp_path=tmp_path / "renamed.pth", device="cpu")
    sd = _write_mlp(tmp_path / "short.pth")
    del sd["layers.7.weight"], sd["layers.7.bias"]
    torch.save(sd, tmp_path / "short.pth")
    with pytest.raises(ValueError, match=r"mlp_path.*missing keys.*layers\.7"):
        load_aesthetic_mlp(tmp_path / "short.pth")
    with pytest.raises(FileNotFoundError, match="mlp_path.*absent.pth"):
        Aesthetic(TINY_768, clip_pt, mlp_path=tmp_path / "absent.pth", device="cpu")
    # embed-dim mismatch: the 768-input head on a 64-dim CLIP
    _write_mlp(tmp_path / "aes.pth")
    with pytest.raises(ValueError, match=r"mlp_path.*768.*64"):
        Aesthetic(TINY, str(ckpts[TINY]["pt"]), mlp_path=tmp_path / "aes.pth", device="cpu")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="mlp_path"):
        load_aesthetic_mlp(tmp_path / "garbage.pth")
    # a wrapped {"state_dict": ...} checkpoint with the right keys loads
    torch.save({"state_dict": AestheticMLP(768).state_dict()}, tmp_path / "wrapped.pth")
    assert load_aesthetic_mlp(tmp_path / "wrapped.pth").input_dim == 768


# ----------------------------------------------------------------------------- Ensemble


def _const(values, name):
    return FunctionReward(lambda images, prompts: torch.tensor(values, dtype=torch.float32), name=name)


X4 = torch.zeros(4, 3, 8, 8)


def test_ensemble_rank():
    a = _const([3.0, 1.0, 2.0, 2.0], "a")  # ranks 3, 0, 1.5, 1.5 -> /3
    b = _const([10.0, 40.0, 20.0, 30.0], "b")  # ranks 0, 3, 1, 2 -> /3
    e = Ensemble([a, b], weights=[2.0, 1.0], normalize="rank")
    expected = 2 * torch.tensor([1.0, 0.0, 0.5, 0.5]) + torch.tensor([0.0, 1.0, 1 / 3, 2 / 3])
    torch.testing.assert_close(e(X4, "p"), expected)
    # default normalize is rank, default weights 1
    torch.testing.assert_close(Ensemble([a, b])(X4), torch.tensor([1.0, 1.0, 0.5 + 1 / 3, 0.5 + 2 / 3]))
    # constant reward -> 0.5 everywhere; one sample -> 0.5
    torch.testing.assert_close(Ensemble([_const([5.0] * 4, "c")])(X4), torch.full((4,), 0.5))
    torch.testing.assert_close(Ensemble([_const([7.0], "c")])(X4[:1]), torch.tensor([0.5]))


def test_ensemble_zscore_and_none():
    va, vb = [1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 10.0, 10.0]
    a, b = _const(va, "a"), _const(vb, "b")

    def z(v):
        v = np.asarray(v, dtype=np.float64)
        return (v - v.mean()) / v.std()

    e = Ensemble([(a, 0.5), (b, 3.0)], normalize="zscore")
    torch.testing.assert_close(e(X4), torch.tensor(0.5 * z(va) + 3.0 * z(vb), dtype=torch.float32))
    # constant scores: std guard -> contributes 0, no NaN/inf
    e2 = Ensemble([a, _const([1e6] * 4, "flat")], normalize="zscore")
    torch.testing.assert_close(e2(X4), torch.tensor(z(va), dtype=torch.float32))
    e3 = Ensemble([a, b], weights=[1.0, 0.1], normalize="none")
    torch.testing.assert_close(e3(X4), torch.tensor(va) + 0.1 * torch.tensor(vb))


def test_ensemble_is_batch_dependent_and_components_are_raw():
    # score = mean pixel value; rank normalisation makes the ensemble score batch-relative
    bright = FunctionReward(lambda im, p: im.mean(dim=(1, 2, 3)), name="bright")
    e = Ensemble([bright], normalize="rank")
    img = torch.full((1, 3, 4, 4), 0.5)
    darker, lighter = torch.full((1, 3, 4, 4), 0.1), torch.full((1, 3, 4, 4), 0.9)
    assert e(torch.cat([img, darker]))[0] == 1.0
    assert e(torch.cat([img, lighter]))[0] == 0.0
    comps = e.components(torch.cat([img, darker]), "p")
    assert list(comps) == ["bright"]
    torch.testing.assert_close(comps["bright"], torch.tensor([0.5, 0.1]))
    # duplicate names are made unique; plain callables accepted
    e2 = Ensemble([bright, bright, lambda im, p: torch.ones(im.shape[0])])
    assert list(e2.components(X4)) == ["bright", "bright#2", "<lambda>"]


def test_ensemble_validation():
    a, b = _const([1.0, 2.0, 3.0, 4.0], "a"), _const([4.0, 3.0, 2.0, 1.0], "b")
    with pytest.raises(ValueError, match=r"weights.*2.*got 3"):
        Ensemble([a, b], weights=[1, 1, 1])
    with pytest.raises(ValueError, match=r"weights: must be a finite number >= 0 \(weight 1\), got -0.5"):
        Ensemble([a, b], weights=[1, -0.5])
    with pytest.raises(ValueError, match="weights.*finite"):
        Ensemble([a, b], weights=[1, float("nan")])
    with pytest.raises(ValueError, match="weights.*finite"):
        Ensemble([a, b], weights=[math.inf, 1])
    with pytest.raises(ValueError, match="weights.*positive"):
        Ensemble([a, b], weights=[0, 0])
    with pytest.raises(ValueError, match=r"normalize.*rank, zscore, none.*minmax"):
        Ensemble([a, b], normalize="minmax")
    with pytest.raises(ValueError, match="rewards.*empty"):
        Ensemble([])
    with pytest.raises(ValueError, match="weights.*pairs"):
        Ensemble([(a, 1.0), (b, 2.0)], weights=[1, 2])
    with pytest.raises(TypeError, match="reward"):
        Ensemble([a, 3])
    # a broken component is reported by its own name
    bad = _const([1.0, float("nan"), 2.0, 3.0], "broken")
    with pytest.raises(ValueError, match="broken.*non-finite.*\\[1\\]"):
        Ensemble([a, bad])(X4)


# ----------------------------------------------------------------------------- base


def test_function_reward_nan_and_count_errors():
    nan = FunctionReward(lambda im, p: torch.tensor([1.0, float("nan"), float("inf")]), name="nanny")
    with pytest.raises(ValueError, match=r"nanny.*non-finite.*\[1, 2\]"):
        nan(torch.zeros(3, 3, 4, 4))
    short = FunctionReward(lambda im, p: [1.0, 2.0], name="short")
    with pytest.raises(ValueError, match="short.*2 scores for 3 images"):
        short(torch.zeros(3, 3, 4, 4))
    with pytest.raises(ValueError, match="prompts"):
        FunctionReward(lambda im, p: [0.0] * len(p))(torch.zeros(3, 3, 4, 4), ["a", "b"])
    with pytest.raises(TypeError, match="fn"):
        FunctionReward(3)
    with pytest.raises(NotImplementedError):
        Reward()(torch.zeros(1, 3, 2, 2))


def test_reward_accepts_tensor_numpy_pil():
    seen = {}

    def mean_red(images, prompts):
        seen["shape"], seen["prompts"] = tuple(images.shape), prompts
        return images[:, 0].mean(dim=(1, 2))

    r = as_reward(mean_red)
    assert isinstance(r, FunctionReward) and r.name == "mean_red"
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(2, 5, 6, 3), dtype=np.uint8)
    expected = torch.from_numpy(u8[..., 0].astype(np.float32) / 255).mean(dim=(1, 2))
    from_tensor = r(torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255, "p")
    assert seen["shape"] == (2, 3, 5, 6) and seen["prompts"] == ["p", "p"]
    from_uint8 = r(u8, ["a", "b"])
    assert seen["prompts"] == ["a", "b"]
    from_float = r(u8.astype(np.float32) / 255)
    from_pil = r([Image.fromarray(a) for a in u8])
    for s in (from_tensor, from_uint8, from_float, from_pil):
        torch.testing.assert_close(s, expected)
    # grayscale tensors are broadcast to 3 channels
    gray = r(torch.full((2, 1, 4, 4), 0.25))
    torch.testing.assert_close(gray, torch.full((2,), 0.25))
    assert as_reward(r) is r


# ------------------------------------------------------------ issue 18: the registry's loaders
def test_registry_clip_loads_a_local_checkpoint_file_and_folder(ckpts, monkeypatch):
    """``load_reward("clip", PATH)`` -- what ``--reward-checkpoint``, ``evosearch app --reward-checkpoint
    clip=PATH`` and the ComfyUI "Reward (by name)" node call -- raised ``TypeError: CLIPScore.__init__()
    got an unexpected keyword argument 'checkpoint'``. A file is loaded as ViT-B-32 weights (here a tiny
    architecture stands in under that name), a folder as an open_clip model folder."""
    import open_clip.factory

    from evosearch.registry import load_reward

    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "ViT-B-32", _tiny_cfg(64))
    x = _images(3, seed=7)
    direct = CLIPScore(TINY, pretrained=str(ckpts[TINY]["pt"]), device="cpu")(x, "a cat")
    from_file = load_reward("clip", str(ckpts[TINY]["pt"]), "cpu")
    assert isinstance(from_file, CLIPScore)
    torch.testing.assert_close(from_file(x, "a cat"), direct)
    from_folder = load_reward("clip", str(ckpts["folder"]), "cpu")
    torch.testing.assert_close(from_folder(x, "a cat"),
                               CLIPScore(f"local-dir:{ckpts['folder']}", device="cpu")(x, "a cat"))


def test_registry_aesthetic_takes_the_checkpoint_as_its_head(ckpts, tmp_path, monkeypatch):
    """``load_reward("aesthetic", PATH)`` passed ``mlp_checkpoint=`` (a TypeError); the checkpoint is the
    MLP head (the CLIP ViT-L/14 backbone stays the hub's; here the tiny 768-d one stands in)."""
    import evosearch.rewards.aesthetic as aesthetic_module
    from evosearch.registry import load_reward
    from evosearch.rewards.clip_backbone import load_clip

    _write_mlp(tmp_path / "aes.pth", fmt="pth")
    clip_pt = str(ckpts[TINY_768]["pt"])
    monkeypatch.setattr(aesthetic_module, "load_clip", lambda name, pretrained, device: load_clip(TINY_768, clip_pt,
                                                                                                   device))
    x = _images(3, seed=8)
    got = load_reward("aesthetic", str(tmp_path / "aes.pth"), "cpu")(x)
    torch.testing.assert_close(got, Aesthetic(TINY_768, clip_pt, mlp_path=tmp_path / "aes.pth", device="cpu")(x))
