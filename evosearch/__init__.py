"""evosearch: test-time search (EvoSearch, best-of-N, ...) for diffusers image and video generators.

The search side (:mod:`evosearch.core`, :mod:`evosearch.search`) imports no model library;
``SearchPipeline`` and the model families load diffusers when first used.
"""

from .core.lineage import Lineage
from .rewards.base import FunctionReward, Reward
from .search import (TTSVAR, BestOfN, EarlyStop, EvoSearch, ParticleSearch, PathSearch, TreeOfFrames,
                     ZeroOrderSearch)

__version__ = "0.2.0"

_LAZY = {"SearchPipeline": ".pipeline", "SearchPipelineOutput": ".pipeline", "export_video": ".video_io",
         "testing": ".testing"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name], __name__)
        return module if name == "testing" else getattr(module, name)
    raise AttributeError(f"module 'evosearch' has no attribute {name!r}")


__all__ = ["SearchPipeline", "SearchPipelineOutput", "EvoSearch", "BestOfN", "ZeroOrderSearch", "PathSearch",
           "TreeOfFrames", "export_video", "ParticleSearch", "TTSVAR", "EarlyStop", "Reward", "FunctionReward",
           "Lineage"]
