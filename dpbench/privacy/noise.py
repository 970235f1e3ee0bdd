"""Where the DP noise comes from.

The guarantee needs noise nobody can regenerate: a generator seeded from a published value (the
suite's seed is in suite.yaml and every result.json) lets anyone who holds the suite subtract the
noise from a released model and recover the clipped gradient sums. So by default the noise generator
is seeded with 64 bits from the operating system's entropy pool (``os.urandom``); the seed is never
written anywhere, and the generator's state lives only in the run's resume checkpoint, which is as
private as the weights it sits beside and is deleted when the run finishes.

``privacy.reproducible_noise: true`` derives the noise from the run's seed instead — for tests and
debugging only: such results record ``noise_source: seeded`` and reports flag them as not a DP release.
"""

from __future__ import annotations

import os
from typing import Literal, Optional

import torch

NoiseSource = Literal["os_entropy", "seeded", "none"]


def derive_seed(seed: int, stream: int) -> int:
    """Independent-looking seeds for the seeded streams of one run (sampling, diffusion draws, ...)."""
    return (int(seed) * 1_000_003 + stream * 7919) % (2**63 - 1)


NOISE_STREAM = 3  # the stream index the opt-in reproducible noise uses (sampling 1, diffusion draws 2)


def noise_generator(device: torch.device, reproducible_seed: Optional[int]) -> tuple[torch.Generator, NoiseSource]:
    """A generator for the DP noise: from os.urandom unless a reproducible seed is given explicitly."""
    gen = torch.Generator(device)
    if reproducible_seed is None:
        gen.manual_seed(int.from_bytes(os.urandom(8), "little") & (2**63 - 1))
        return gen, "os_entropy"
    gen.manual_seed(derive_seed(reproducible_seed, NOISE_STREAM))
    return gen, "seeded"
