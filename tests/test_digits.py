"""The bundled digits models: generator pipeline, reward classifier, independent judge."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from evosearch.bundled.digits import (
    DigitClassifierReward,
    DigitCNN,
    DigitJudge,
    DigitsPipeline,
    digits_split,
    load_digit_classifier,
    load_digits_images,
    load_digits_pipeline,
    parse_digit,
    save_digit_classifier,
)
from evosearch.bundled.paths import asset_path
from evosearch.rewards.base import Reward

ASSETS = asset_path("digits")
needs_assets = pytest.mark.skipif(
    not (ASSETS / "model_index.json").is_file(), reason="bundled digits assets missing; run scripts/train_digits.py"
)


@pytest.fixture(scope="module")
def pipe():
    return load_digits_pipeline("cpu")


@pytest.fixture(scope="module")
def heldout():
    return load_digits_images("test")


@pytest.fixture(scope="module")
def judge():
    return DigitJudge()


# ---------------------------------------------------------------- parse_digit


@pytest.mark.parametrize(
    "prompt,expected",
    [(0, 0), (9, 9), ("3", 3), ("digit 3", 3), ("a 7", 7), ("draw 5", 5), ("Draw a 4.", 4), ("the number 2", 2),
     ("a handwritten digit 8", 8), ("seven", 7), ("digit one", 1), (np.int64(6), 6), (torch.tensor(2), 2)],
)
def test_parse_digit_accepts(prompt, expected):
    assert parse_digit(prompt) == expected


@pytest.mark.parametrize("prompt", [10, -1, "12", "cat", "", "3 and 4", "digit", None, 3.0, True, [3]])
def test_parse_digit_refuses(prompt):
    with pytest.raises(ValueError, match="prompt") as exc:
        parse_digit(prompt)
    assert "0-9" in str(exc.value)


# ---------------------------------------------------------------- pipeline


@needs_assets
def test_assets_layout():
    index = json.loads((ASSETS / "model_index.json").read_text())
    assert index["_class_name"] == "DigitsPipeline"
    assert index["unet"] == ["diffusers", "UNet2DModel"]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    for f in ["unet/diffusion_pytorch_model.safetensors", "unet/config.json", "scheduler/scheduler_config.json",
              "classifier/model.safetensors", "classifier/config.json"]:
        assert (ASSETS / f).is_file(), f
    assert (ASSETS / "unet/diffusion_pytorch_model.safetensors").stat().st_size < 10 * 2**20


@needs_assets
def test_pipeline_loads_from_assets(pipe):
    assert isinstance(pipe, DigitsPipeline)
    cfg = pipe.unet.config
    assert (cfg.sample_size, cfg.in_channels, cfg.out_channels, cfg.num_class_embeds) == (16, 1, 1, 11)
    assert pipe.scheduler.config.num_train_timesteps == 1000
    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert pipe.null_class_label == 10
    assert isinstance(DigitsPipeline.default_num_inference_steps, int)
    assert isinstance(DigitsPipeline.default_guidance_scale, float)
    label = pipe.encode_prompt("digit 4")
    assert label.dtype == torch.long and label.shape == (1,) and label.item() == 4


@needs_assets
def test_pipeline_deterministic_per_generator(pipe):
    def run(seed, **kw):
        g = torch.Generator().manual_seed(seed)
        return pipe("digit 3", num_images_per_prompt=3, num_inference_steps=4, generator=g, output_type="pt", **kw).images

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # stochastic DDIM (eta=1) and CFG are reproducible too
    assert torch.equal(run(5, eta=1.0, guidance_scale=2.0), run(5, eta=1.0, guidance_scale=2.0))
    assert not torch.allclose(run(5, eta=1.0), run(5, eta=0.0))


@needs_assets
def test_pipeline_outputs(pipe):
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    pt = pipe(["1", 2], num_images_per_prompt=2, num_inference_steps=3, generator=g(), output_type="pt").images
    assert pt.shape == (4, 1, 16, 16) and pt.dtype == torch.float32
    assert pt.min() >= 0 and pt.max() <= 1
    npy = pipe("digit 1", num_images_per_prompt=2, num_inference_steps=3, generator=g(), output_type="np").images
    assert isinstance(npy, np.ndarray) and npy.shape == (2, 16, 16, 1)
    np.testing.assert_allclose(npy, pt[:2].permute(0, 2, 3, 1).numpy(), atol=1e-4)  # batch of 2 vs 4: float noise
    pil = pipe("digit 1", num_inference_steps=3, generator=g()).images
    assert len(pil) == 1 and isinstance(pil[0], Image.Image) and pil[0].size == (16, 16)
    tup = pipe("digit 1", num_inference_steps=3, generator=g(), output_type="pt", return_dict=False)
    assert isinstance(tup, tuple) and torch.allclose(tup[0], pt[:1], atol=1e-4)


@needs_assets
def test_pipeline_guidance_one_skips_unconditional_pass(pipe):
    calls = []
    handle = pipe.unet.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        pipe("5", num_images_per_prompt=2, num_inference_steps=3, guidance_scale=1.0, output_type="pt")
        assert calls == [2, 2, 2]
        calls.clear()
        pipe("5", num_images_per_prompt=2, num_inference_steps=3, guidance_scale=3.0, output_type="pt")
        assert calls == [4, 4, 4]
    finally:
        handle.remove()


@needs_assets
@pytest.mark.parametrize(
    "kwargs,name",
    [(dict(prompt="a cat"), "prompt"), (dict(prompt="1", num_inference_steps=0), "num_inference_steps"),
     (dict(prompt="1", output_type="latent"), "output_type"), (dict(prompt="1", eta=2.0), "eta"),
     (dict(prompt="1", num_images_per_prompt=0), "num_images_per_prompt")],
)
def test_pipeline_bad_arguments(pipe, kwargs, name):
    with pytest.raises(ValueError, match=name):
        pipe(**kwargs)


# ---------------------------------------------------------------- reward


@needs_assets
def test_reward_prefers_real_target_digits(heldout):
    x, y = heldout
    reward = DigitClassifierReward()
    assert isinstance(reward, Reward)
    x3 = x.expand(-1, 3, -1, -1)  # rewards receive (N, 3, H, W) in [0, 1]
    lp = reward.log_probs(x3)  # (N, 10)
    assert (lp.argmax(1) == y).float().mean() > 0.9
    for d in range(10):
        assert lp[y == d, d].mean() > lp[y != d, d].mean() + 2.0
    # the reward reads the target from each prompt
    s = reward(x3, [f"digit {int(v)}" for v in y])
    assert torch.allclose(s, lp.gather(1, y[:, None])[:, 0], atol=1e-5)
    s7 = reward(x3, "a 7")
    assert s7[y == 7].mean() > s7[y != 7].mean() + 2.0
    # target from the prompt per image, or fixed; prob in [0, 1]; any size/channel count
    per_prompt = reward(x3[:6], [f"draw {int(v)}" for v in y[:6]])
    fixed = DigitClassifierReward(target=int(y[0]), kind="prob")(x3[:6], "ignored prompt")
    assert torch.allclose(per_prompt[0].exp(), fixed[0], atol=1e-5)
    assert ((fixed >= 0) & (fixed <= 1)).all()
    big = torch.nn.functional.interpolate(x3[:4], size=32, mode="nearest")
    assert torch.allclose(reward(big, "3"), reward(x3[:4], "3"), atol=1e-4)  # area-downsampled back exactly


def test_reward_loads_checkpoint_written_by_test(tmp_path):
    torch.manual_seed(0)
    model = DigitCNN().eval()
    folder = save_digit_classifier(model, tmp_path / "clf")
    assert json.loads((folder / "config.json").read_text())["architecture"] == "DigitCNN"
    loaded = load_digit_classifier(folder)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    x = torch.rand(5, 3, 16, 16)
    for path in (folder, folder / "model.safetensors"):
        reward = DigitClassifierReward(path=path, target=3, kind="logprob")
        expected = torch.log_softmax(model(x.mean(1, keepdim=True)), -1)[:, 3]
        assert torch.allclose(reward(x), expected, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="path"):
        DigitClassifierReward(path=tmp_path / "missing")
    with pytest.raises(ValueError, match="kind"):
        DigitClassifierReward(path=folder, kind="logit")
    with pytest.raises(ValueError, match="prompt"):
        DigitClassifierReward(path=folder)(x, "a cat")


# ---------------------------------------------------------------- judge


def test_judge_accuracy_on_heldout_real_digits(judge, heldout):
    assert judge.heldout_accuracy() > 0.9
    x, y = heldout
    assert judge.accuracy(x, y) > 0.9
    assert judge.accuracy(x.expand(-1, 3, -1, -1), [str(int(v)) for v in y]) > 0.9
    pred = judge.predict(x[:10])
    assert isinstance(pred, np.ndarray) and pred.shape == (10,) and pred.dtype.kind == "i"
    train, test = digits_split()
    assert len(set(train) & set(test)) == 0 and len(train) + len(test) == 1797


@needs_assets
def test_judge_and_pipeline_end_to_end(pipe, judge):
    g = torch.Generator().manual_seed(0)
    images = pipe("digit 0", num_images_per_prompt=8, num_inference_steps=10, guidance_scale=3.0, generator=g, output_type="pt").images
    # a guided sample of an easy digit is read as that digit most of the time
    assert judge.accuracy(images, 0) >= 0.5


@needs_assets
def test_plain_sampling_hits_target_only_part_of_the_time(pipe, judge):
    """The bundled model leaves room for search: default sampling hits the digit part of the time, CFG more."""
    prompts = [str(d) for d in range(10)]
    targets = np.repeat(np.arange(10), 8)

    def hit_rate(g):
        gen = torch.Generator().manual_seed(123)
        x = pipe(prompts, num_images_per_prompt=8, num_inference_steps=10, guidance_scale=g, generator=gen, output_type="pt").images
        return judge.accuracy(x, targets)

    plain, guided = hit_rate(DigitsPipeline.default_guidance_scale), hit_rate(4.0)
    assert 0.25 <= plain <= 0.85, plain
    assert guided >= plain + 0.15, (plain, guided)
