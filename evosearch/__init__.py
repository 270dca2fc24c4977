"""evosearch: test-time search (EvoSearch, best-of-N, ...) for diffusers image and video generators."""

from .pipeline import SearchPipeline, SearchPipelineOutput
from .rewards.base import FunctionReward, Reward
from .search.tree_of_frames import TreeOfFrames
from .video_io import export_video
from .search import TTSVAR, BestOfN, EvoSearch, Lineage, ParticleSearch, PathSearch, ZeroOrderSearch

__version__ = "0.1.0"

__all__ = ["SearchPipeline", "SearchPipelineOutput", "EvoSearch", "BestOfN", "ZeroOrderSearch", "PathSearch",
           "TreeOfFrames", "export_video",
           "ParticleSearch", "TTSVAR", "Reward", "FunctionReward", "Lineage"]
