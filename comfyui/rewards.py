"""Reward loader nodes: each outputs a REWARD (an evosearch Reward) for EvoSearchSampler.

Paths may be absolute, ``~``-relative, or relative to ComfyUI's ``models/`` folder (e.g.
``evosearch/ImageReward.pt`` for ``models/evosearch/ImageReward.pt``). An empty path means
the reward's default hub download (which needs a Hugging Face connection or cache).
Loading errors (missing or wrong checkpoints) are raised with the reward's own message,
naming the parameter.
"""

from __future__ import annotations

import os

from .sampler import CATEGORY, REWARD_TYPE

DEVICES = ("auto", "cpu", "cuda")
NORMALIZE = ("rank", "zscore", "none")


def resolve_path(path: str | None) -> str | None:
    """None for an empty path; else the path, looked up under ComfyUI's models folder when it
    is relative and does not exist as given."""
    if path is None or not str(path).strip():
        return None
    p = os.path.expanduser(str(path).strip())
    if os.path.isabs(p) or os.path.exists(p):
        return p
    try:
        import folder_paths

        candidate = os.path.join(folder_paths.models_dir, p)
        if os.path.exists(candidate):
            return candidate
    except ImportError:
        pass
    return p


def resolve_device(device: str):
    """"auto": ComfyUI's torch device when ComfyUI is running (so --cpu keeps rewards on the CPU),
    else the reward's own default."""
    if device != "auto":
        return device
    try:
        import comfy.model_management

        return comfy.model_management.get_torch_device()
    except ImportError:
        return None


class _RewardLoader:
    CATEGORY = CATEGORY + "/rewards"
    FUNCTION = "load"
    RETURN_TYPES = (REWARD_TYPE,)
    RETURN_NAMES = ("reward",)


class EvoSearchDigitReward(_RewardLoader):
    """The bundled digit classifier: log p(digit | image) (or p), the digit from the prompt
    ("digit 3", "7") unless ``target`` fixes it."""

    DESCRIPTION = "evosearch's bundled handwritten-digit classifier as a reward (no download)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "target": ("INT", {"default": -1, "min": -1, "max": 9,
                               "tooltip": "-1: the digit named in the reward prompt; 0-9: always this digit."}),
            "kind": (["logprob", "prob"], {"default": "logprob"}),
        }, "optional": {
            "classifier_path": ("STRING", {"default": "", "tooltip": "Empty: the bundled classifier."}),
        }}

    def load(self, target, kind, classifier_path=""):
        from evosearch.bundled.digits import DigitClassifierReward

        return (DigitClassifierReward(path=resolve_path(classifier_path), target=None if target < 0 else int(target),
                                      kind=kind),)


def _luminance(images):
    return 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]


#: simple, model-free image statistics (N, 3, H, W) in [0, 1] -> (N,): for quick checks and steering
IMAGE_STATISTICS = {
    "brightness": lambda x: _luminance(x).mean(dim=(1, 2)),
    "contrast": lambda x: _luminance(x).flatten(1).std(dim=1),
    "saturation": lambda x: (x.amax(dim=1) - x.amin(dim=1)).mean(dim=(1, 2)),
}


class EvoSearchImageStatReward(_RewardLoader):
    """A model-free reward: mean brightness, luminance contrast (std) or saturation of the image,
    maximised or minimised. Prompts are ignored. Useful to check a workflow without any reward
    model, or to steer simple properties."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "statistic": (list(IMAGE_STATISTICS), {"default": "brightness"}),
            "direction": (["maximize", "minimize"], {"default": "maximize"}),
        }}

    def load(self, statistic, direction):
        from evosearch.rewards.base import FunctionReward

        if statistic not in IMAGE_STATISTICS:
            raise ValueError(f"statistic: must be one of {list(IMAGE_STATISTICS)}, got {statistic!r}")
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"direction: must be 'maximize' or 'minimize', got {direction!r}")
        stat, sign = IMAGE_STATISTICS[statistic], 1.0 if direction == "maximize" else -1.0
        return (FunctionReward(lambda images, prompts: sign * stat(images), name=f"{statistic}_{direction}"),)


class EvoSearchCLIPScoreReward(_RewardLoader):
    """CLIPScore on open_clip: 100 * cos(image, prompt)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": ("STRING", {"default": "ViT-B-32", "tooltip": "An open_clip architecture, or "
                                                                       "hf-hub:org/repo / local-dir:/path."}),
            "pretrained": ("STRING", {"default": "openai",
                                      "tooltip": "An open_clip pretrained tag or a checkpoint file path."}),
            "device": (list(DEVICES), {"default": "auto"}),
            "batch_size": ("INT", {"default": 32, "min": 1, "max": 1024}),
        }}

    def load(self, model_name, pretrained, device, batch_size):
        from evosearch.rewards import CLIPScore

        return (CLIPScore(model_name=model_name.strip(), pretrained=resolve_path(pretrained) or None,
                          device=resolve_device(device), batch_size=int(batch_size)),)


class EvoSearchAestheticReward(_RewardLoader):
    """The LAION aesthetic predictor (an MLP on CLIP ViT-L/14 image features); prompts are ignored."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip_model": ("STRING", {"default": "ViT-L-14"}),
            "clip_pretrained": ("STRING", {"default": "openai"}),
            "mlp_path": ("STRING", {"default": "", "tooltip": "The MLP checkpoint (.pth / .safetensors); empty: "
                                                              "download from the hub."}),
            "device": (list(DEVICES), {"default": "auto"}),
        }}

    def load(self, clip_model, clip_pretrained, mlp_path, device):
        from evosearch.rewards import Aesthetic

        return (Aesthetic(clip_model=clip_model.strip(), clip_pretrained=resolve_path(clip_pretrained) or None,
                          mlp_path=resolve_path(mlp_path), device=resolve_device(device)),)


class EvoSearchImageRewardReward(_RewardLoader):
    """ImageReward (BLIP-based human preference); needs its checkpoint (ImageReward.pt)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "checkpoint": ("STRING", {"default": "", "tooltip": "ImageReward.pt; empty: download from the hub."}),
            "device": (list(DEVICES), {"default": "auto"}),
        }, "optional": {
            "med_config": ("STRING", {"default": "", "tooltip": "med_config.json (empty: inferred / downloaded)."}),
            "tokenizer": ("STRING", {"default": "bert-base-uncased", "tooltip": "A BertTokenizer folder or hub id."}),
            "backend": (["auto", "package", "builtin"], {"default": "auto"}),
        }}

    def load(self, checkpoint, device, med_config="", tokenizer="bert-base-uncased", backend="auto"):
        from evosearch.rewards import ImageReward

        return (ImageReward(checkpoint=resolve_path(checkpoint), med_config=resolve_path(med_config),
                            device=resolve_device(device), tokenizer=resolve_path(tokenizer) or "bert-base-uncased",
                            backend=backend),)


class EvoSearchPickScoreReward(_RewardLoader):
    """PickScore (a CLIP ViT-H/14 fine-tuned on Pick-a-Pic preferences)."""

    @classmethod
    def INPUT_TYPES(cls):
        from evosearch.rewards.pickscore import PICKSCORE_MODEL, PICKSCORE_PROCESSOR

        return {"required": {
            "model": ("STRING", {"default": PICKSCORE_MODEL, "tooltip": "A CLIPModel folder or hub id."}),
            "processor": ("STRING", {"default": PICKSCORE_PROCESSOR, "tooltip": "A CLIPProcessor folder or hub id."}),
            "device": (list(DEVICES), {"default": "auto"}),
        }}

    def load(self, model, processor, device):
        from evosearch.rewards import PickScore

        return (PickScore(model=resolve_path(model), processor=resolve_path(processor),
                          device=resolve_device(device)),)


class EvoSearchHPSReward(_RewardLoader):
    """HPSv2 / v2.1 (an open_clip ViT-H-14 fine-tuned on human preferences)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "checkpoint": ("STRING", {"default": "", "tooltip": "The HPS checkpoint; empty: download from the hub."}),
            "model_name": ("STRING", {"default": "ViT-H-14"}),
            "version": (["v2.1", "v2.0"], {"default": "v2.1", "tooltip": "Chooses the file to download."}),
            "device": (list(DEVICES), {"default": "auto"}),
        }}

    def load(self, checkpoint, model_name, version, device):
        from evosearch.rewards import HPSv2

        return (HPSv2(checkpoint=resolve_path(checkpoint), model_name=model_name.strip(),
                      device=resolve_device(device), version=version),)


class EvoSearchEnsembleReward(_RewardLoader):
    """A weighted combination of two to four rewards, each normalised over the batch first
    (rank or z-score), so that the weights mean relative importance whatever the units."""

    MAX_REWARDS = 4

    @classmethod
    def INPUT_TYPES(cls):
        weight = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.05})
        required = {"reward_1": (REWARD_TYPE,), "weight_1": weight, "reward_2": (REWARD_TYPE,), "weight_2": weight,
                    "normalize": (list(NORMALIZE), {"default": "rank"})}
        optional = {}
        for k in range(3, cls.MAX_REWARDS + 1):
            optional[f"reward_{k}"] = (REWARD_TYPE,)
            optional[f"weight_{k}"] = weight
        return {"required": required, "optional": optional}

    def load(self, reward_1, weight_1, reward_2, weight_2, normalize, **more):
        from evosearch.rewards import Ensemble

        pairs = [(reward_1, weight_1), (reward_2, weight_2)]
        for k in range(3, self.MAX_REWARDS + 1):
            if more.get(f"reward_{k}") is not None:
                pairs.append((more[f"reward_{k}"], more.get(f"weight_{k}", 1.0)))
        return (Ensemble([(r, float(w)) for r, w in pairs], normalize=normalize),)
