"""The shapes world's learned reward: a small contrastive image-text model (a CLIPScore analogue).

Trained by ``scripts/train_shapes_reward.py`` on rendered scenes (with blur, noise and colour
jitter so that it reads generated images) against their prompts, with hard negatives that
differ in one attribute (a colour, a shape, the count, the relation, the colour binding).
It never sees a generated image or the judge, so, like CLIPScore, it is imperfect: a
search that maximises it can find images it likes that the exact judge calls wrong.

``ShapesCLIPScore(images, prompts)`` = 100 x cosine(image embedding, text embedding):
continuous, no ceiling short of 100.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from transformers import CLIPTextConfig, CLIPTextModel

from ...rewards.base import Reward
from ..paths import asset_path
from .grammar import normalize_prompt, parse_prompt
from .model import MAX_LENGTH, build_tokenizer
from .render import IMAGE_SIZE


#: bundled reward versions (folders under assets/shapes): "v4" (the default, trained with hard negatives
#: on both sides) and "v1" (the weak one, text-side negatives only: how reward hacking looks)
REWARD_VERSIONS = {"v4": "reward", "v1": "reward-v1"}


class ShapesCLIPModel(ModelMixin, ConfigMixin):
    """Image encoder (a 5-layer CNN that keeps a 4x4 spatial map, so that positions count) and
    text encoder (a 2-layer ``CLIPTextModel`` over the grammar's words), both into ``embed_dim``."""

    @register_to_config
    def __init__(self, vocab_size: int = 26, embed_dim: int = 64, width: int = 64, image_size: int = IMAGE_SIZE,
                 pad_token_id: int = 0, bos_token_id: int = 1, eos_token_id: int = 2):
        super().__init__()
        act = nn.GELU
        self.image_encoder = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), act(), nn.Conv2d(32, 32, 3, padding=1), act(), nn.AvgPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), act(), nn.Conv2d(64, 64, 3, padding=1), act(), nn.AvgPool2d(2),
            nn.Conv2d(64, 96, 3, padding=1), act(), nn.AvgPool2d(2),
            nn.Flatten(), nn.Linear(96 * (image_size // 8) ** 2, 256), act(), nn.Linear(256, embed_dim))
        text = CLIPTextConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width,
                              num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_LENGTH,
                              pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id)
        self.text_encoder = CLIPTextModel(text)
        self.text_projection = nn.Linear(width, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), as CLIP

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, 32, 32) in [0, 1] -> (N, embed_dim), unit norm."""
        return F.normalize(self.image_encoder(images * 2 - 1), dim=-1)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(N, 12) token ids -> (N, embed_dim), unit norm: the state at the end-of-text token, which
        (causal attention) has seen the whole prompt. Taken explicitly: CLIPTextModel's own pooled
        output falls back to the highest token id when the end-of-text id is 2, as it is here."""
        states = self.text_encoder(input_ids).last_hidden_state
        end = (input_ids == self.config.eos_token_id).int().argmax(dim=-1)
        return F.normalize(self.text_projection(states[torch.arange(len(states)), end]), dim=-1)


class ShapesCLIPScore(Reward):
    """100 x cosine similarity between a scene and its prompt under :class:`ShapesCLIPModel`.

    Args:
        path: a folder saved with ``ShapesCLIPModel.save_pretrained`` (default: the bundled one).
        device: where the model runs.
        version: which bundled model when ``path`` is None: "v4" (default) or "v1" (the weak one).
    """

    name = "shapes_clip"

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu", batch_size: int = 256,
                 version: str = "v4"):
        folder = Path(path) if path is not None else asset_path("shapes", REWARD_VERSIONS[version])
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"path: no shapes reward model at {folder} (expected config.json and weights); "
                                    "run scripts/train_shapes_reward.py")
        self.source = f"bundled shapes/{REWARD_VERSIONS[version]}" if path is None else Path(path).name
        if path is None and version != "v4":
            self.name = f"shapes_clip_{version}"
        self.device = torch.device(device)
        self.model = ShapesCLIPModel.from_pretrained(str(folder)).eval().to(self.device)
        self.tokenizer = build_tokenizer()
        self.batch_size = int(batch_size)

    def check_prompt(self, prompt) -> None:
        parse_prompt(prompt)

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        texts = [normalize_prompt(p) for p in prompts]
        for p in prompts:
            parse_prompt(p)  # a clear error for prompts outside the grammar
        ids = self.tokenizer(texts, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)
        return self.model.encode_text(ids)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if tuple(x.shape[-2:]) != (IMAGE_SIZE, IMAGE_SIZE):
            x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False, antialias=True)
        out = [self.model.encode_image(x[i:i + self.batch_size].to(self.device)) for i in range(0, len(x),
                                                                                                 self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.model.config.embed_dim)

    def features(self, images, prompts=None) -> torch.Tensor:
        """Image embeddings (N, embed_dim) (for TTS-VAR's diversity clustering, and diversity metrics)."""
        from ...rewards.base import to_tensor_images

        with torch.no_grad():
            return self.image_features(to_tensor_images(images)).cpu()

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        unique = sorted(set(prompts))
        text = self.text_features(unique)
        rows = torch.stack([text[unique.index(p)] for p in prompts])
        return 100.0 * (self.image_features(images) * rows).sum(-1).cpu()

    def __repr__(self) -> str:
        return f"ShapesCLIPScore({self.source!r})"
