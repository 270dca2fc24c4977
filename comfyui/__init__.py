"""evosearch for ComfyUI: test-time search (EvoSearch, best-of-N, zero-order, paths, particles)
with reward models, as ComfyUI nodes.

Install: put this folder into ComfyUI's ``custom_nodes/`` (a copy or a symlink, e.g. as
``custom_nodes/evosearch``) in a Python environment where the ``evosearch`` package is
installed (``pip install -r requirements.txt`` in this folder, or ``pip install -e <repo>``).
The nodes import only evosearch's public API and ComfyUI's own sampling entry points (see
``sampler.py``). ``example_workflows/`` holds one workflow per search method (ComfyUI lists
them under Workflow > Browse Templates); ``web/`` the small UI extension that shows the Save
Record node's summary.
"""

from .record import EvoSearchSaveRecord
from .rewards import (EvoSearchAestheticReward, EvoSearchCLIPScoreReward, EvoSearchDigitReward,
                      EvoSearchEnsembleReward, EvoSearchHPSReward, EvoSearchImageRewardReward, EvoSearchImageStatReward,
                      EvoSearchPickScoreReward, EvoSearchReward)
from .sampler import EvoSearchSampler

NODE_CLASS_MAPPINGS = {
    "EvoSearchSampler": EvoSearchSampler,
    "EvoSearchSaveRecord": EvoSearchSaveRecord,
    "EvoSearchReward": EvoSearchReward,
    "EvoSearchDigitReward": EvoSearchDigitReward,
    "EvoSearchImageStatReward": EvoSearchImageStatReward,
    "EvoSearchCLIPScoreReward": EvoSearchCLIPScoreReward,
    "EvoSearchAestheticReward": EvoSearchAestheticReward,
    "EvoSearchImageRewardReward": EvoSearchImageRewardReward,
    "EvoSearchPickScoreReward": EvoSearchPickScoreReward,
    "EvoSearchHPSReward": EvoSearchHPSReward,
    "EvoSearchEnsembleReward": EvoSearchEnsembleReward,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "EvoSearchSampler": "EvoSearch Sampler (test-time search)",
    "EvoSearchSaveRecord": "EvoSearch Save Record (JSON)",
    "EvoSearchReward": "EvoSearch Reward (by name)",
    "EvoSearchDigitReward": "EvoSearch Reward: Digit Classifier (bundled)",
    "EvoSearchImageStatReward": "EvoSearch Reward: Image Statistic",
    "EvoSearchCLIPScoreReward": "EvoSearch Reward: CLIP Score",
    "EvoSearchAestheticReward": "EvoSearch Reward: LAION Aesthetic",
    "EvoSearchImageRewardReward": "EvoSearch Reward: ImageReward",
    "EvoSearchPickScoreReward": "EvoSearch Reward: PickScore",
    "EvoSearchHPSReward": "EvoSearch Reward: HPSv2",
    "EvoSearchEnsembleReward": "EvoSearch Reward: Ensemble",
}

#: the UI extension that shows the Save Record node's summary (ComfyUI serves this folder to the browser)
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
