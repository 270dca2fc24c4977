"""Where bundled weights live: ``evosearch/bundled/assets/<world>/<part>`` inside the package."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"


def asset_path(world: str, *parts: str) -> Path:
    """The folder of a bundled asset, e.g. ``asset_path("shapes", "diffusion")``."""
    return ASSETS.joinpath(world, *parts)
