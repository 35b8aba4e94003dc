"""Random generators that are pure functions of integers, so that every random draw of a run (masks, crops,
replacements of unreadable images) can be redrawn exactly: in another worker, another process, or a resumed run."""

from __future__ import annotations

import numpy as np
import torch


def generator_or_default(generator: torch.Generator | None) -> torch.Generator:
    """``generator``, or one seeded from torch's global seed (so unseeded calls still follow torch.manual_seed)."""
    return generator if generator is not None else torch.Generator().manual_seed(torch.initial_seed() % 2**63)


def seed_from(*entropy: int) -> int:
    """A 63-bit seed that is a hash of the given integers (e.g. ``seed, step, rank``)."""
    state = np.random.SeedSequence([int(e) % 2**63 for e in entropy]).generate_state(2, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


def seeded_generator(*entropy: int) -> torch.Generator:
    """A generator whose stream is a hash of the given integers (e.g. ``seed, epoch, step``)."""
    return torch.Generator().manual_seed(seed_from(*entropy))
