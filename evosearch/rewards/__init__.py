"""Rewards: (images or videos, prompts) -> one float per sample, higher is better."""

from .base import FunctionReward, Reward, as_reward, to_tensor_images
from .clip import Aesthetic, CLIPScore
from .ensemble import Ensemble
from .hps import HPSv2
from .imagereward import ImageReward
from .pickscore import PickScore
from .video import FrameReward, TemporalConsistency

__all__ = ["Reward", "FunctionReward", "as_reward", "to_tensor_images", "CLIPScore", "Aesthetic", "Ensemble",
           "PickScore", "HPSv2", "ImageReward", "FrameReward", "TemporalConsistency"]
