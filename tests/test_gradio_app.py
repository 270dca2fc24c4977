"""The Gradio app end to end: driven over HTTP with gradio_client, and in Debian's chromium
with playwright (never a downloaded browser).

The app runs the bundled digits model and reward (evosearch/bundled/assets/digits). Until those
weights exist, a tiny random-weight DigitsPipeline and DigitCNN stand in for them through
build_app's model/reward registries (the same code path otherwise).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import json
import socket
import time
from pathlib import Path

import pytest
from PIL import Image

from evosearch.apps.gradio_app import build_app, launch
from evosearch.bundled.paths import asset_path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
MAX_NFE = 50_000
MAX_POP = 32


def _bundled_available() -> bool:
    root = asset_path("digits")
    return (root / "model_index.json").is_file() and (root / "classifier" / "model.safetensors").is_file()


def _stand_in_registries(tmp: Path):
    """A tiny random DigitsPipeline and DigitClassifierReward (only while the bundled weights are missing)."""
    import torch
    from diffusers import DDIMScheduler, UNet2DModel

    from evosearch.bundled.digits import DigitClassifierReward, DigitCNN, DigitsPipeline, save_digit_classifier

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=11).eval()
    pipe = DigitsPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    save_digit_classifier(DigitCNN(channels=(4, 8), hidden=16).eval(), tmp / "classifier")
    reward = DigitClassifierReward(path=tmp / "classifier")
    return {"digits": lambda device: pipe}, {"digits": lambda device: reward}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from evosearch import FunctionReward
    from evosearch.cli import load_reward

    models, rewards = None, {"digits": lambda device: load_reward("digits", None, device)}
    if _bundled_available():
        print("\n[gradio app] using the bundled digits model and reward")
    else:
        print("\n[gradio app] bundled digits weights missing: a tiny random stand-in is injected")
        models, rewards = _stand_in_registries(tmp_path_factory.mktemp("digits_stand_in"))
    # a second reward for ensembles (the other built-in rewards need CLIP weights, not available offline)
    rewards["ink"] = lambda device: FunctionReward(lambda images, prompts: images.mean(dim=(1, 2, 3)), name="ink")
    demo = build_app(max_nfe_budget=MAX_NFE, max_population=MAX_POP, concurrency_limit=2, models=models,
                     rewards=rewards, work_dir=tmp_path_factory.mktemp("app_runs"))
    port = _free_port()
    launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def run_args(method="evosearch", population=None, nfe_budget=250, steps=10, seed=0, prompt="3", rewards=("digits",),
             weights="", model="digits"):
    # (model, prompt, method, population, nfe_budget, steps, seed, rewards, weights, guidance, eta, mutation_rate)
    return (model, prompt, method, population, nfe_budget, steps, seed, list(rewards), weights, None, 1.0, 0.2)


def test_search_end_to_end(client):
    job = client.submit(*run_args(nfe_budget=250, steps=10, seed=3), api_name="/run")
    status, best, gallery, plot, record_file = job.result(timeout=120)
    updates = job.outputs()
    assert len(updates) >= 2, "the page got no live progress before the result"
    assert any("NFE" in u[0] and "Running" in u[0] for u in updates[:-1]), [u[0] for u in updates]

    assert status.startswith("**Done** (complete)") and "evosearch" in status
    record = json.loads(Path(record_file).read_text())
    assert record["complete"] is True
    assert 0 < record["stats"]["nfe"] <= 250 and record["stats"]["nfe_budget"] == 250
    assert record["settings"]["seed"] == 3 and record["settings"]["nfe_budget"] == 250
    assert record["settings"]["method"]["method"] == "evosearch"
    assert record["app"]["method"] == "evosearch" and record["app"]["rewards"] == ["digits"]
    assert record["best_reward"] == pytest.approx(max(max(h["rewards"]) for h in record["history"]))
    assert f"{record['best_reward']:.4g}" in status

    with Image.open(best) as im:  # 16x16 digits enlarged to 256 px
        assert im.size == (256, 256)
    assert len(gallery) == len(record["rewards"]) >= 2
    assert gallery[0]["caption"].startswith("best") and Path(gallery[0]["image"]).is_file()
    with Image.open(plot) as im:
        assert im.size[0] > 200 and im.size[1] > 200


def test_best_of_n_with_a_weighted_ensemble(client):
    status, best, gallery, plot, record_file = client.predict(
        *run_args(method="best-of-n", population=4, nfe_budget=40, steps=10, rewards=("digits", "ink"),
                  weights="2, 1"), api_name="/run")
    record = json.loads(Path(record_file).read_text())
    assert record["settings"]["method"] == {"method": "best-of-n", "n": 4, "wave_size": None} and len(gallery) == 4
    assert record["stats"]["nfe"] == 40 and record["complete"] is True
    assert record["settings"]["reward"].startswith("Ensemble(") and record["app"]["weights"] == [2.0, 1.0]


def test_limits_rejected_with_clear_errors(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=rf"nfe_budget: .*max_nfe_budget={MAX_NFE}"):
        client.predict(*run_args(nfe_budget=MAX_NFE + 1), api_name="/run")
    with pytest.raises(AppError, match=rf"population: 100 exceeds .*max_population={MAX_POP}"):
        client.predict(*run_args(method="best-of-n", population=100), api_name="/run")
    # the population a method sizes from the budget counts too (best-of-n: 2000 / 10 = 200)
    with pytest.raises(AppError, match=rf"population: best-of-n would hold 200 .*max_population={MAX_POP}"):
        client.predict(*run_args(method="best-of-n", nfe_budget=2000, steps=10), api_name="/run")
    with pytest.raises(AppError, match=r"weights: expected 1 weight"):
        client.predict(*run_args(weights="1, 2"), api_name="/run")
    with pytest.raises(AppError, match=r"prompt: expected"):
        client.predict(*run_args(prompt="a cat"), api_name="/run")


def test_cancel_returns_best_so_far(client):
    # zero-order search over a large budget: one scored iteration every few steps
    job = client.submit(*run_args(method="zero-order", population=4, nfe_budget=MAX_NFE, steps=25),
                        api_name="/run")
    deadline = time.time() + 60
    while not any("generation" in u[0] and u[1] for u in job.outputs()):
        assert time.time() < deadline and not job.done(), "no generation was shown"
        time.sleep(0.05)
    client.predict(api_name="/cancel")
    status, best, gallery, plot, record_file = job.result(timeout=60)
    assert "incomplete" in status and "Cancelled" in status
    record = json.loads(Path(record_file).read_text())
    assert record["complete"] is False and record["best_reward"] is not None
    assert 0 < record["stats"]["nfe"] < MAX_NFE
    with Image.open(best) as im:
        assert im.size == (256, 256)
    assert gallery and Path(plot).is_file()


def test_browser_renders_results(app_url, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    shot = tmp_path / "gradio_app.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(app_url, wait_until="domcontentloaded")
            page.locator("#run-button").click(timeout=30_000)
            try:
                page.locator("#status").get_by_text("Done").wait_for(timeout=60_000)
            except Exception:
                page.screenshot(path=str(shot), full_page=True)
                raise AssertionError(f"no result in the page (screenshot {shot}): {page.inner_text('body')[:2000]}")
            page.wait_for_function(
                """() => {
                    const ok = sel => { const imgs = [...document.querySelectorAll(sel + ' img')];
                        return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); };
                    return ok('#population') && ok('#reward-plot') && ok('#best-image');
                }""", timeout=30_000)
            sizes = page.evaluate("""sel => [...document.querySelectorAll(sel + ' img')]
                                         .map(i => [i.naturalWidth, i.naturalHeight])""", "#population")
            plot = page.evaluate("() => { const i = document.querySelector('#reward-plot img');"
                                 " return [i.naturalWidth, i.naturalHeight]; }")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    print(f"\n[gradio app] screenshot: {shot}")
    assert len(sizes) >= 2 and all(w > 0 and h > 0 for w, h in sizes), sizes
    assert plot[0] > 200 and plot[1] > 200, plot
