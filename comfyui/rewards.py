"""Reward loader nodes: each outputs a REWARD (an evosearch Reward) for EvoSearchSampler.

``EvoSearch Reward`` offers every image reward of :data:`evosearch.registry.REWARDS` by
name; the other loaders expose one reward's own options. Paths may be absolute,
``~``-relative, or relative to ComfyUI's ``models/`` folder (e.g. ``evosearch/ImageReward.pt``
for ``models/evosearch/ImageReward.pt``). An empty path means the reward's default hub
download; offline and without a cached copy that is one clear error naming the input and the
file (:mod:`.hub`). Loading errors (missing or wrong checkpoints) are raised with the reward's
own message, naming the parameter.
"""

from __future__ import annotations

import os

from .hub import hub_errors, hub_file
from .inputs import CATEGORY, REWARD_TYPE

DEVICES = ("auto", "cpu", "cuda")
NORMALIZE = ("rank", "zscore", "none")
DEVICE_TOOLTIP = "Where the reward model runs; auto: ComfyUI's device."


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


def device_input():
    return (list(DEVICES), {"default": "auto", "tooltip": DEVICE_TOOLTIP})


def image_rewards() -> list[str]:
    """The registry's rewards that score images (video rewards need a video model)."""
    from evosearch.registry import REWARDS

    return [name for name, entry in REWARDS.items() if not entry.video]


#: the registry's clip reward (ViT-B-32, OpenAI's weights) as one open_clip file on the hub
CLIP_HUB_FILE = ("timm/vit_base_patch32_clip_224.openai", "open_clip_pytorch_model.bin")


def default_hub_file(name: str) -> tuple[str, str] | None:
    """(repo, file) a registry reward downloads when no checkpoint is given, where it is one file."""
    from evosearch.rewards.clip import AESTHETIC_HUB_FILENAME, AESTHETIC_HUB_REPO
    from evosearch.rewards.hps import HPS_HUB_FILENAMES, HPS_HUB_REPO
    from evosearch.rewards.imagereward import IMAGEREWARD_CHECKPOINT, IMAGEREWARD_HUB_REPO

    return {"clip": CLIP_HUB_FILE, "aesthetic": (AESTHETIC_HUB_REPO, AESTHETIC_HUB_FILENAME),
            "imagereward": (IMAGEREWARD_HUB_REPO, IMAGEREWARD_CHECKPOINT),
            "hpsv2": (HPS_HUB_REPO, HPS_HUB_FILENAMES["v2.1"])}.get(name)


class _RewardLoader:
    CATEGORY = CATEGORY + "/rewards"
    FUNCTION = "load"
    RETURN_TYPES = (REWARD_TYPE,)
    RETURN_NAMES = ("reward",)
    OUTPUT_TOOLTIPS = ("A reward for the EvoSearch Sampler's reward (or judge) input.",)


class EvoSearchReward(_RewardLoader):
    """Any image reward of evosearch's registry, by name (the names the CLI and the app use)."""

    DESCRIPTION = "An evosearch reward by name, as in the evosearch CLI and app (evosearch.registry.REWARDS)."

    @classmethod
    def INPUT_TYPES(cls):
        from evosearch.registry import REWARDS

        names = image_rewards()
        summary = "; ".join(f"{n}: {REWARDS[n].summary}" for n in names)
        return {"required": {
            "reward": (names, {"default": "clip", "tooltip": f"The reward. {summary}."}),
            "checkpoint": ("STRING", {"default": "", "tooltip": "The reward's weights (a file or folder); empty: "
                                                                "the bundled or hub default."}),
            "device": device_input(),
        }}

    def load(self, reward, checkpoint="", device="auto"):
        from evosearch.core.validation import check_choice
        from evosearch.registry import REWARDS, load_reward

        check_choice("reward", reward, image_rewards())
        path = resolve_path(checkpoint)
        if path is None and REWARDS[reward].needs_weights and default_hub_file(reward) is not None:
            path = hub_file("checkpoint", *default_hub_file(reward))
        with hub_errors("checkpoint", f"the weights of the reward '{reward}' ({REWARDS[reward].summary})"):
            return (load_reward(reward, checkpoint=path, device=resolve_device(device) or "cpu"),)


class EvoSearchDigitReward(_RewardLoader):
    """The bundled digit classifier: log p(digit | image) (or p), the digit from the prompt
    ("digit 3", "7") unless ``target`` fixes it."""

    DESCRIPTION = "evosearch's bundled handwritten-digit classifier as a reward (no download)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "target": ("INT", {"default": -1, "min": -1, "max": 9,
                               "tooltip": "-1: the digit named in the reward prompt; 0-9: always this digit."}),
            "kind": (["logprob", "prob"], {"default": "logprob",
                                           "tooltip": "logprob: log p(digit | image) (<= 0); prob: p in [0, 1]."}),
        }, "optional": {
            "classifier_path": ("STRING", {"default": "", "tooltip": "A classifier folder (config.json + "
                                                                     "model.safetensors); empty: the bundled one."}),
        }}

    def load(self, target, kind, classifier_path=""):
        from evosearch.bundled import digits

        return (digits.load_reward(path=resolve_path(classifier_path), target=None if target < 0 else int(target),
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

    DESCRIPTION = "A model-free image statistic as a reward (prompts are ignored; no download)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "statistic": (list(IMAGE_STATISTICS), {"default": "brightness",
                                                   "tooltip": "brightness: mean luminance; contrast: its standard "
                                                              "deviation; saturation: mean max-min over channels."}),
            "direction": (["maximize", "minimize"], {"default": "maximize",
                                                     "tooltip": "Whether the search wants more or less of it."}),
        }}

    def load(self, statistic, direction):
        from evosearch.core.validation import check_choice
        from evosearch.rewards.base import FunctionReward

        check_choice("statistic", statistic, IMAGE_STATISTICS)
        check_choice("direction", direction, ("maximize", "minimize"))
        stat, sign = IMAGE_STATISTICS[statistic], 1.0 if direction == "maximize" else -1.0
        return (FunctionReward(lambda images, prompts: sign * stat(images), name=f"{statistic}_{direction}"),)


class EvoSearchCLIPScoreReward(_RewardLoader):
    """CLIPScore on open_clip: 100 * cos(image, prompt)."""

    DESCRIPTION = "CLIPScore (open_clip): how well the image matches the reward prompt."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": ("STRING", {"default": "ViT-B-32", "tooltip": "An open_clip architecture, or "
                                                                       "hf-hub:org/repo / local-dir:/path."}),
            "pretrained": ("STRING", {"default": "openai",
                                      "tooltip": "An open_clip pretrained tag (downloaded from the hub) or a "
                                                 "checkpoint file path."}),
            "device": device_input(),
            "batch_size": ("INT", {"default": 32, "min": 1, "max": 1024, "tooltip": "Images per forward pass."}),
        }}

    def load(self, model_name, pretrained, device, batch_size):
        from evosearch.rewards import CLIPScore

        with hub_errors("pretrained", f"the open_clip weights {pretrained!r} of {model_name!r}"):
            return (CLIPScore(model_name=model_name.strip(), pretrained=resolve_path(pretrained) or None,
                              device=resolve_device(device), batch_size=int(batch_size)),)


class EvoSearchAestheticReward(_RewardLoader):
    """The LAION aesthetic predictor (an MLP on CLIP ViT-L/14 image features); prompts are ignored."""

    DESCRIPTION = "The LAION aesthetic predictor (prompts are ignored)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip_model": ("STRING", {"default": "ViT-L-14", "tooltip": "The open_clip image encoder the MLP was "
                                                                       "trained on (ViT-L-14 for the released one)."}),
            "clip_pretrained": ("STRING", {"default": "openai", "tooltip": "Its pretrained tag or checkpoint path."}),
            "mlp_path": ("STRING", {"default": "", "tooltip": "The MLP checkpoint (.pth / .safetensors); empty: "
                                                              "download from the hub."}),
            "device": device_input(),
        }}

    def load(self, clip_model, clip_pretrained, mlp_path, device):
        from evosearch.rewards import Aesthetic
        from evosearch.rewards.clip import AESTHETIC_HUB_FILENAME, AESTHETIC_HUB_REPO

        mlp = resolve_path(mlp_path) or hub_file("mlp_path", AESTHETIC_HUB_REPO, AESTHETIC_HUB_FILENAME)
        with hub_errors("clip_pretrained", f"the open_clip weights {clip_pretrained!r} of {clip_model!r}"):
            return (Aesthetic(clip_model=clip_model.strip(), clip_pretrained=resolve_path(clip_pretrained) or None,
                              mlp_path=mlp, device=resolve_device(device)),)


class EvoSearchImageRewardReward(_RewardLoader):
    """ImageReward (BLIP-based human preference); needs its checkpoint (ImageReward.pt)."""

    DESCRIPTION = "ImageReward: a learned human-preference score for the image given the reward prompt."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "checkpoint": ("STRING", {"default": "", "tooltip": "ImageReward.pt; empty: download from the hub "
                                                                "(THUDM/ImageReward)."}),
            "device": device_input(),
        }, "optional": {
            "med_config": ("STRING", {"default": "", "tooltip": "med_config.json (empty: inferred from the checkpoint, "
                                                                "or downloaded with it)."}),
            "tokenizer": ("STRING", {"default": "bert-base-uncased", "tooltip": "A BertTokenizer folder or hub id."}),
            "backend": (["auto", "package", "builtin"], {"default": "auto",
                                                         "tooltip": "package: the image-reward package; builtin: "
                                                                    "evosearch's loader; auto: the package if "
                                                                    "installed."}),
        }}

    def load(self, checkpoint, device, med_config="", tokenizer="bert-base-uncased", backend="auto"):
        from evosearch.rewards import ImageReward
        from evosearch.rewards.imagereward import IMAGEREWARD_CHECKPOINT, IMAGEREWARD_HUB_REPO, IMAGEREWARD_MED_CONFIG

        ckpt, med = resolve_path(checkpoint), resolve_path(med_config)
        if ckpt is None:
            ckpt = hub_file("checkpoint", IMAGEREWARD_HUB_REPO, IMAGEREWARD_CHECKPOINT)
            med = med or hub_file("med_config", IMAGEREWARD_HUB_REPO, IMAGEREWARD_MED_CONFIG)
        tok = resolve_path(tokenizer) or "bert-base-uncased"
        with hub_errors("tokenizer", f"the tokenizer {tok!r}"):
            return (ImageReward(checkpoint=ckpt, med_config=med, device=resolve_device(device), tokenizer=tok,
                                backend=backend),)


class EvoSearchPickScoreReward(_RewardLoader):
    """PickScore (a CLIP ViT-H/14 fine-tuned on Pick-a-Pic preferences)."""

    DESCRIPTION = "PickScore: a learned human-preference score for the image given the reward prompt."

    @classmethod
    def INPUT_TYPES(cls):
        from evosearch.rewards.pickscore import PICKSCORE_MODEL, PICKSCORE_PROCESSOR

        return {"required": {
            "model": ("STRING", {"default": PICKSCORE_MODEL, "tooltip": "A CLIPModel folder or hub id."}),
            "processor": ("STRING", {"default": PICKSCORE_PROCESSOR, "tooltip": "A CLIPProcessor folder or hub id."}),
            "device": device_input(),
        }}

    def load(self, model, processor, device):
        from evosearch.rewards import PickScore

        model_path, proc_path = resolve_path(model), resolve_path(processor)
        with hub_errors(("model", "processor"), f"the hub models {model_path!r} (model) and {proc_path!r} "
                                                f"(processor)"):
            return (PickScore(model=model_path, processor=proc_path, device=resolve_device(device)),)


class EvoSearchHPSReward(_RewardLoader):
    """HPSv2 / v2.1 (an open_clip ViT-H-14 fine-tuned on human preferences)."""

    DESCRIPTION = "HPSv2: a learned human-preference score for the image given the reward prompt."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "checkpoint": ("STRING", {"default": "", "tooltip": "The HPS checkpoint; empty: download from the hub "
                                                                "(xswu/HPSv2)."}),
            "model_name": ("STRING", {"default": "ViT-H-14", "tooltip": "The open_clip architecture it was trained "
                                                                       "from."}),
            "version": (["v2.1", "v2.0"], {"default": "v2.1", "tooltip": "Chooses the file to download."}),
            "device": device_input(),
        }}

    def load(self, checkpoint, model_name, version, device):
        from evosearch.core.validation import check_choice
        from evosearch.rewards import HPSv2
        from evosearch.rewards.hps import HPS_HUB_FILENAMES, HPS_HUB_REPO

        check_choice("version", version, HPS_HUB_FILENAMES)
        ckpt = resolve_path(checkpoint) or hub_file("checkpoint", HPS_HUB_REPO, HPS_HUB_FILENAMES[version])
        return (HPSv2(checkpoint=ckpt, model_name=model_name.strip(), device=resolve_device(device),
                      version=version),)


class EvoSearchEnsembleReward(_RewardLoader):
    """A weighted combination of two to four rewards, each normalised over the batch first
    (rank or z-score), so that the weights mean relative importance whatever the units."""

    MAX_REWARDS = 4
    DESCRIPTION = "A weighted combination of two to four rewards."

    @classmethod
    def INPUT_TYPES(cls):
        def weight(k):
            return ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.05,
                              "tooltip": f"The weight of reward_{k}."})

        def reward(k):
            return (REWARD_TYPE, {"tooltip": f"Reward {k} of the ensemble."})

        required = {"reward_1": reward(1), "weight_1": weight(1), "reward_2": reward(2), "weight_2": weight(2),
                    "normalize": (list(NORMALIZE), {"default": "rank",
                                                    "tooltip": "How each reward is normalised over the batch before "
                                                               "weighting: rank, zscore, or none (raw units)."})}
        optional = {}
        for k in range(3, cls.MAX_REWARDS + 1):
            optional[f"reward_{k}"] = reward(k)
            optional[f"weight_{k}"] = weight(k)
        return {"required": required, "optional": optional}

    def load(self, reward_1, weight_1, reward_2, weight_2, normalize, **more):
        from evosearch.rewards import Ensemble

        pairs = [(reward_1, weight_1), (reward_2, weight_2)]
        for k in range(3, self.MAX_REWARDS + 1):
            if more.get(f"reward_{k}") is not None:
                pairs.append((more[f"reward_{k}"], more.get(f"weight_{k}", 1.0)))
        return (Ensemble([(r, float(w)) for r, w in pairs], normalize=normalize),)
