"""The one way randomness is drawn: every random number is keyed by an explicit integer seed.

A search method decides seeds (from the request's ``numpy`` generator); Steppers and
mutations turn a seed into a row of noise, always the same row for the same seed whatever
the batch it is drawn in:

* step noise of step ``i`` in a lineage segment with seed ``s``: :func:`step_seed` ``(s, i)``;
* the noise an event draws to change a state (a mutation): :func:`mutation_seed` ``(s)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

#: key under which an event's mutation noise is derived from its seed (step noise uses the step index)
MUTATION_KEY = 2**31 - 1


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from ``seed`` and integer keys (e.g. a step index)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, *[int(k) for k in keys]]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


def step_seed(seed: int, i: int) -> int:
    """Seed of the noise step ``i`` injects in a lineage segment whose event has ``seed``."""
    return derive_seed(seed, i)


def mutation_seed(seed: int) -> int:
    """Seed of the noise an event with ``seed`` draws to change the state."""
    return derive_seed(seed, MUTATION_KEY)


def gaussian_rows(shape: Sequence[int], seeds: Sequence[int]) -> torch.Tensor:
    """Standard normal noise (N, *shape) float32 on the CPU; row k from a generator seeded with ``seeds[k]``."""
    rows = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(rows) if rows else torch.empty((0, *shape))


def uniform_rows(shape: Sequence[int], seeds: Sequence[int]) -> torch.Tensor:
    """Uniforms in [0, 1) (N, *shape) float32 on the CPU; row k from a generator seeded with ``seeds[k]``."""
    rows = [torch.rand(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(rows) if rows else torch.empty((0, *shape))


@dataclass(frozen=True)
class NoiseSeeds:
    """Step noise given as one seed per row: the Stepper draws the rows of each micro-batch when it
    needs them (``Stepper.sample_noise``), so a population of thousands never holds all its noise
    at once. Equivalent to passing ``stepper.sample_noise(seeds)``."""

    seeds: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.seeds)

    @classmethod
    def for_step(cls, segment_seeds: Sequence[int], i: int) -> "NoiseSeeds":
        """The step-``i`` noise of rows whose lineage segments have ``segment_seeds``."""
        return cls(tuple(step_seed(s, i) for s in segment_seeds))
