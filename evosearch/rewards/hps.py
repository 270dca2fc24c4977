"""HPSv2 / HPSv2.1 (Wu et al. 2023): open_clip ViT-H-14 fine-tuned on Human Preference Dataset v2.

The release files are torch checkpoints ``{"state_dict": <open_clip CLIP state dict>}``
(``HPS_v2_compressed.pt``, ``HPS_v2.1_compressed.pt``) in the hub repo ``xswu/HPSv2``. They
load into open_clip's own ``ViT-H-14`` through :func:`evosearch.rewards.clip_backbone.load_clip` (open_clip
unwraps ``state_dict`` and strips ``module.``), so HPSv2 shares the CLIP backbone code,
tokenizer and per-prompt text-embedding cache of :class:`~evosearch.rewards.clip.CLIPScore`.

Scoring follows ``hpsv2.score``: ``logits = image_features @ text_features.T`` on
L2-normalised features and the diagonal is the score, i.e. the plain cosine similarity
(no ``logit_scale``, no x100). The image transform is hpsv2's evaluation transform
(``light_augmentation=True``): resize the *longer* side to 224 (bicubic), pad the shorter
side with black to a square, normalise with the OpenAI CLIP mean/std.
"""

from __future__ import annotations

import copy
import os
from collections import OrderedDict

from ..core.validation import check_choice, check_int
from .clip import CLIPScore
from .clip_backbone import load_clip

__all__ = ["HPS_HUB_FILENAMES", "HPS_HUB_REPO", "HPSv2"]

HPS_HUB_REPO = "xswu/HPSv2"
HPS_HUB_FILENAMES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}


class HPSv2(CLIPScore):
    """Human Preference Score v2 / v2.1: cosine(image, text) under the HPS-fine-tuned open_clip ViT-H-14.

    Scale: a raw cosine in [-1, 1], exactly the number ``hpsv2.score`` returns; typical
    values for generated images are about 0.20-0.35 (the HPSv2 benchmark tables print
    this x100, e.g. "27.3"). Differences of ~0.005 are meaningful, so combine it with other
    rewards through :class:`~evosearch.rewards.ensemble.Ensemble`'s rank / z-score
    normalisation rather than raw weights.

    Args:
        checkpoint: a local HPS checkpoint file (``torch.save({"state_dict": ...})`` as
            released; a bare state dict or ``.safetensors`` also loads), or None to
            download ``HPS_HUB_FILENAMES[version]`` from the hub repo ``xswu/HPSv2`` with
            ``huggingface_hub.hf_hub_download``.
        model_name: the open_clip architecture the checkpoint was trained from (``"ViT-H-14"``).
        device: torch device; default CUDA when available, else CPU.
        version: ``"v2.0"`` or ``"v2.1"``; only chooses the file to download.
        batch_size: images (and new prompts) per forward pass.
    """

    score_scale = 1.0  # HPSv2 reports the raw cosine (img @ txt.T diagonal), no x100

    name = "hpsv2"
    registry_name = "hpsv2"
    summary = "HPSv2.1 human-preference score (open_clip ViT-H/14; hub weights or a checkpoint)"
    needs_weights = True

    @classmethod
    def from_checkpoint(cls, checkpoint=None, device="cpu") -> "HPSv2":
        """HPSv2.1 from the hub, or a local HPS checkpoint."""
        return cls(checkpoint=checkpoint, device=device)

    def __init__(self, checkpoint: str | os.PathLike | None = None, model_name: str = "ViT-H-14", device=None,
                 version: str = "v2.1", batch_size: int = 16):
        check_choice("version", version, sorted(HPS_HUB_FILENAMES))
        self.batch_size = check_int("batch_size", batch_size, lo=1)
        if checkpoint is None:
            from huggingface_hub import hf_hub_download

            checkpoint = hf_hub_download(HPS_HUB_REPO, HPS_HUB_FILENAMES[version])
        if isinstance(checkpoint, os.PathLike):
            checkpoint = os.fspath(checkpoint)
        if not isinstance(checkpoint, str) or not checkpoint:
            raise ValueError(f"checkpoint: expected a path to an HPS checkpoint file or None, got {checkpoint!r}")
        path = os.path.abspath(os.path.expanduser(checkpoint))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint: HPS checkpoint file not found: {checkpoint}")
        try:
            backbone = load_clip(model_name, path, device)
        except ValueError as e:
            if str(e).startswith("model_name"):
                raise
            raise ValueError(f"checkpoint: {path} is not an HPS checkpoint for open_clip model {model_name!r}: "
                             f"{e}") from e
        except Exception as e:  # unreadable file (not a torch pickle / zip)
            raise ValueError(f"checkpoint: could not read {path} as a torch checkpoint: {e}") from e
        # hpsv2's evaluation transform: longest side to the model size, pad with black.
        # A shallow copy, so a CLIPScore sharing this backbone keeps open_clip's own transform.
        self._shared_backbone = backbone
        self.clip = copy.copy(backbone)
        self.clip.resize_mode = "longest"
        self.clip.fill = 0.0
        self.model_name, self.pretrained, self.checkpoint, self.version = model_name, path, path, version
        self._text_cache = OrderedDict()


    def __repr__(self) -> str:
        return (f"HPSv2(checkpoint={self.checkpoint!r}, model_name={self.model_name!r}, version={self.version!r}, "
                f"device='{self.device}')")
