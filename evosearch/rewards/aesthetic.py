"""The LAION improved aesthetic predictor: :class:`Aesthetic`, an MLP head (:class:`AestheticMLP`,
loaded by :func:`load_aesthetic_mlp`) on the CLIP image embedding of
:func:`~evosearch.rewards.clip_backbone.load_clip`.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..core.validation import check_int
from .base import Reward, read_checkpoint
from .clip_backbone import load_clip

__all__ = ["AESTHETIC_HUB_FILENAME", "AESTHETIC_HUB_REPO", "Aesthetic", "AestheticMLP", "load_aesthetic_mlp"]

# The LAION "improved aesthetic predictor" (christophschuhmann/improved-aesthetic-predictor,
# file sac+logos+ava1-l14-linearMSE.pth) as mirrored on the Hugging Face hub by the TRL team
# for DDPO (TRL's DDPOConfig defaults): same weights, same keys, trained on CLIP ViT-L/14
# (OpenAI) image embeddings.
AESTHETIC_HUB_REPO = "trl-lib/ddpo-aesthetic-predictor"
AESTHETIC_HUB_FILENAME = "aesthetic-model.pth"


class AestheticMLP(nn.Module):
    """The LAION improved aesthetic predictor head (no activations, as published).

    State-dict keys match ``sac+logos+ava1-l14-linearMSE.pth``: ``layers.{0,2,4,6,7}.{weight,bias}``.
    """

    def __init__(self, input_dim: int = 768):
        super().__init__()
        self.input_dim = input_dim
        self.layers = nn.Sequential(
            nn.Linear(input_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def load_aesthetic_mlp(path: str | os.PathLike) -> AestheticMLP:
    """Load an aesthetic MLP from a ``.pth``/``.pt`` (torch.save of the state dict) or ``.safetensors`` file.

    The keys must be exactly those of the published checkpoint; the input dimension is
    read from ``layers.0.weight``. Raises FileNotFoundError / ValueError naming ``mlp_path``.
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mlp_path: aesthetic MLP checkpoint not found: {path}")
    sd = read_checkpoint(path, "mlp_path")
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"mlp_path: {path} does not hold a state dict of tensors")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    w0 = sd.get("layers.0.weight")
    input_dim = int(w0.shape[1]) if isinstance(w0, torch.Tensor) and w0.ndim == 2 else 768
    expected = {k: tuple(v.shape) for k, v in AestheticMLP(input_dim).state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"mlp_path: {path} is not a LAION aesthetic predictor checkpoint: missing keys {missing}, "
            f"unexpected keys {unexpected}; expected exactly {sorted(expected)}"
        )
    wrong = {k: (tuple(sd[k].shape), s) for k, s in expected.items() if tuple(sd[k].shape) != s}
    if wrong:
        raise ValueError(f"mlp_path: {path} has tensors of the wrong shape (got, expected): {wrong}")
    mlp = AestheticMLP(input_dim)
    mlp.load_state_dict({k: v.float() for k, v in sd.items()})
    return mlp.eval().requires_grad_(False)


class Aesthetic(Reward):
    """LAION improved aesthetic predictor: an MLP on the L2-normalised CLIP image embedding.

    Predicts a 1-10 style rating (the head was fitted to human ratings from SAC, LAION-Logos
    and AVA); prompts are ignored. The published head expects OpenAI CLIP ViT-L/14 features
    (768-dim), so ``clip_model``'s embedding dimension must equal the MLP's input dimension.

    Args:
        clip_model, clip_pretrained: the CLIP image encoder, as ``model_name`` / ``pretrained``
            of :class:`CLIPScore`.
        mlp_path: a local ``.pth`` / ``.safetensors`` file holding the MLP state dict with the
            published keys, or None to download ``sac+logos+ava1-l14-linearMSE.pth`` from the
            Hugging Face hub: repo ``trl-lib/ddpo-aesthetic-predictor``, file
            ``aesthetic-model.pth`` (the mirror that TRL's DDPO trainer uses; see
            :data:`AESTHETIC_HUB_REPO` / :data:`AESTHETIC_HUB_FILENAME`).
        device: torch device; default CUDA when available, else CPU.
        batch_size: images per forward pass.
    """

    name = "aesthetic"
    registry_name = "aesthetic"
    summary = "LAION aesthetic predictor on CLIP ViT-L/14 (hub weights)"
    needs_weights = True

    @classmethod
    def from_checkpoint(cls, checkpoint=None, device="cpu") -> "Aesthetic":
        """The LAION MLP from the hub, or a local MLP checkpoint as ``mlp_path``."""
        return cls(mlp_path=checkpoint, device=device) if checkpoint else cls(device=device)

    def __init__(self, clip_model: str = "ViT-L-14", clip_pretrained: str | os.PathLike | None = "openai",
                 mlp_path: str | os.PathLike | None = None, device=None, batch_size: int = 32):
        self.batch_size = check_int("batch_size", batch_size, lo=1)
        if mlp_path is None:
            from huggingface_hub import hf_hub_download

            mlp_path = hf_hub_download(AESTHETIC_HUB_REPO, AESTHETIC_HUB_FILENAME)
        mlp = load_aesthetic_mlp(mlp_path)
        self.clip = load_clip(clip_model, clip_pretrained, device)
        if mlp.input_dim != self.clip.embed_dim:
            raise ValueError(
                f"mlp_path: the aesthetic MLP in {os.fspath(mlp_path)} takes {mlp.input_dim}-dim CLIP image "
                f"embeddings but clip_model={clip_model!r} produces {self.clip.embed_dim}-dim ones; the "
                "published predictor needs clip_model='ViT-L-14', clip_pretrained='openai' (768)"
            )
        self.mlp = mlp.to(self.clip.device)
        self.clip_model, self.clip_pretrained, self.mlp_path = clip_model, clip_pretrained, os.fspath(mlp_path)

    @property
    def device(self) -> torch.device:
        return self.clip.device

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        scores = []
        for i in range(0, images.shape[0], self.batch_size):
            emb = self.clip.encode_images(images[i:i + self.batch_size])
            scores.append(self.mlp(emb).squeeze(-1))
        return torch.cat(scores).float().cpu()

    def __repr__(self) -> str:
        return (f"Aesthetic(clip_model={self.clip_model!r}, clip_pretrained={self.clip_pretrained!r}, "
                f"mlp_path={self.mlp_path!r}, device='{self.device}')")
