"""A reward in one file: mean brightness (the docs' toy reward). Higher is brighter."""

from evosearch.rewards import Reward


class Brightness(Reward):
    """The mean pixel value of each image, in [0, 1]: (N, 3, H, W) -> (N,)."""

    name = "brightness"
    registry_name = "toy-brightness"  # evosearch generate --reward toy-brightness
    summary = "mean pixel brightness (the docs' toy reward)"

    def __init__(self, device="cpu"):
        self.device = device

    @classmethod
    def from_checkpoint(cls, checkpoint=None, device="cpu"):
        return cls(device=device)  # nothing to load

    def score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))
