"""The digits world's reward: a small CNN classifier's (log-)probability of the requested digit.

The classifier is trained by ``scripts/train_digits.py`` on the 16x16 upsampled
``load_digits`` images of the fixed train split and saved as ``model.safetensors`` +
``config.json`` under ``evosearch/bundled/assets/digits/classifier/``. Use
:class:`evosearch.bundled.digits.DigitJudge` (an SVC on the 8x8 data) to check that search
results are real improvements, not reward hacks.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from ...core.validation import check_choice, check_int
from ...rewards.base import Reward
from ..paths import asset_path
from .data import to_gray
from .prompt import parse_digit

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ARCHITECTURE = "DigitCNN"


class DigitCNN(nn.Module):
    """conv-conv-pool-conv-pool-MLP on (N, 1, 16, 16) images in [0, 1] -> 10 logits."""

    def __init__(self, image_size: int = 16, channels: tuple[int, int] = (32, 64), hidden: int = 128, num_classes: int = 10, dropout: float = 0.25):
        super().__init__()
        if image_size % 4 != 0:
            raise ValueError(f"image_size: expected a multiple of 4, got {image_size}")
        c1, c2 = channels
        self.config = dict(
            architecture=ARCHITECTURE, image_size=image_size, channels=[c1, c2], hidden=hidden,
            num_classes=num_classes, dropout=dropout, input="grayscale (N, 1, H, W) in [0, 1]",
        )
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(c2 * (image_size // 4) ** 2, hidden), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(hidden, num_classes),
        )

    @property
    def image_size(self) -> int:
        return self.config["image_size"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def save_digit_classifier(model: DigitCNN, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into the folder ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = dict(model.config, **(extra or {}))
    (path / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path / WEIGHTS_NAME))
    return path


def load_digit_classifier(path: str | Path | None = None, device: str | torch.device = "cpu") -> DigitCNN:
    """Load the classifier from a folder (config.json + model.safetensors) or a .safetensors file."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else asset_path("digits", "classifier")
    folder, weights = (path.parent, path) if path.suffix == ".safetensors" else (path, path / WEIGHTS_NAME)
    config_file = folder / CONFIG_NAME
    if not weights.is_file() or not config_file.is_file():
        raise FileNotFoundError(
            f"path: expected a digit classifier ({CONFIG_NAME} + {WEIGHTS_NAME}) at {path}; "
            "run scripts/train_digits.py or pass the folder that holds them"
        )
    config = json.loads(config_file.read_text())
    if config.get("architecture") != ARCHITECTURE:
        raise ValueError(f"path: {config_file} describes architecture {config.get('architecture')!r}, expected {ARCHITECTURE!r}")
    model = DigitCNN(
        image_size=int(config["image_size"]), channels=tuple(config["channels"]), hidden=int(config["hidden"]),
        num_classes=int(config["num_classes"]), dropout=float(config.get("dropout", 0.0)),
    )
    model.load_state_dict(load_file(str(weights)))
    return model.eval().to(device)


class DigitClassifierReward(Reward):
    """log p(target | image) (``kind="logprob"``) or p(target | image) (``kind="prob"``) under the digit CNN.

    The target digit comes from each prompt (``"digit 3"``, ``"7"``, ... parsed with
    :func:`~evosearch.bundled.digits.prompt.parse_digit`) unless ``target`` fixes it for all.
    Images of any size/channels are converted to grayscale and resized to 16x16.
    """

    name = "digit_classifier"
    KINDS = ("logprob", "prob")

    def __init__(self, path: str | Path | None = None, target=None, kind: str = "logprob", device: str | torch.device = "cpu", batch_size: int = 512):
        self.kind = check_choice("kind", kind, self.KINDS)
        self.target = None if target is None else parse_digit(target)
        self.device = torch.device(device)
        self.batch_size = check_int("batch_size", batch_size, lo=1)
        self.path = path
        self.model = load_digit_classifier(path, device=self.device)

    def check_prompt(self, prompt) -> None:
        if self.target is None:
            parse_digit(prompt)

    def targets(self, prompts: list[str], n: int) -> torch.Tensor:
        if self.target is not None:
            return torch.full((n,), self.target, dtype=torch.long)
        return torch.tensor([parse_digit(p) for p in prompts], dtype=torch.long)

    @torch.no_grad()
    def log_probs(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 10) log-probabilities of each digit, on the CPU."""
        x = to_gray(images, size=self.model.image_size).clamp(0, 1)
        out = [
            torch.log_softmax(self.model(x[i : i + self.batch_size].to(self.device)).float(), dim=-1).cpu()
            for i in range(0, x.shape[0], self.batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0, self.model.config["num_classes"])

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's digit for each image, (N,) long."""
        return self.log_probs(images).argmax(dim=-1)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        t = self.targets(prompts, images.shape[0])
        lp = self.log_probs(images).gather(1, t[:, None])[:, 0]
        return lp if self.kind == "logprob" else lp.exp()

    def __repr__(self) -> str:
        return f"DigitClassifierReward(path={self.path!r}, target={self.target!r}, kind={self.kind!r})"
