import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest
import torch

# the test models are tiny: one thread avoids OpenMP pool overhead (and contention on 2 cores)
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def pixel_pipe():
    """A tiny unconditional pixel-space DDPMPipeline (random weights), 8x8, 1 channel."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4).eval()
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def brightness():
    from evosearch import FunctionReward

    return FunctionReward(lambda images, prompts: images.mean(dim=(1, 2, 3)), name="brightness")


@pytest.fixture
def restored_registry():
    """Undo what a test registers (methods, rewards, models) in evosearch.registry's tables."""
    from evosearch import registry

    tables = [registry.METHODS, registry.POPULATION_PARAMETER, registry.METHOD_SUMMARIES, registry.PLAN_POPULATION,
              registry.REWARDS, registry.MODELS]
    saved = [dict(t) for t in tables]
    yield registry
    for t, s in zip(tables, saved):
        t.clear()
        t.update(s)
