"""Where the mechanism's randomness comes from: the DP noise and the Poisson sampling.

The guarantee needs both to be secret:

- **Noise.** A generator seeded from a published value (the suite's seed is in suite.yaml and every
  result.json) lets anyone who holds the suite subtract the noise from a released model and recover
  the clipped gradient sums.
- **Poisson sampling.** Amplification by subsampling assumes nobody knows which examples a step
  used. With the batches regenerable from the seed, each inclusion is an unamplified Gaussian step:
  in an ε = 10 mnist10k-cpu run (σ = 0.617, T = 79, q = 0.051) the most-sampled example would have
  ε ≈ 43.

So by default both generators are seeded with 64 bits each from the operating system's entropy pool
(``os.urandom``); the seeds are never written anywhere, and the generators' states live only in the
run's resume checkpoint, which is as private as the weights it sits beside and is deleted when the
run finishes.

``privacy.reproducible: true`` (formerly ``reproducible_noise``) derives both from the run's seed
instead — for tests and debugging only: such results record ``noise_source: seeded`` and reports flag
them as not a DP release.

The diffusion draws (timestep, noise, label dropout) stay seeded: they enter an example's loss before
its gradient is clipped, so they cannot change the sensitivity, and seeding them makes methods of
one (ε, seed) see the same draws (docs/threat-model.md).
"""

from __future__ import annotations

import os
from typing import Literal, Optional

import torch

NoiseSource = Literal["os_entropy", "seeded", "none"]


def derive_seed(seed: int, stream: int) -> int:
    """Independent-looking seeds for the seeded streams of one run (sampling, diffusion draws, ...)."""
    return (int(seed) * 1_000_003 + stream * 7919) % (2**63 - 1)


# Stream indices of one run's generators. Only the diffusion draws are always seeded; sampling and
# noise use their stream only under the explicit reproducible opt-in.
SAMPLING_STREAM, DIFFUSION_STREAM, NOISE_STREAM = 1, 2, 3


def secret_seed(reproducible_seed: Optional[int], stream: int) -> tuple[int, NoiseSource]:
    """A seed for one of the mechanism's secret generators: 63 bits of OS entropy, or — only under the
    explicit opt-in — derived from the run's published seed (then not a DP release)."""
    if reproducible_seed is None:
        return int.from_bytes(os.urandom(8), "little") & (2**63 - 1), "os_entropy"
    return derive_seed(reproducible_seed, stream), "seeded"


def noise_generator(device: torch.device, reproducible_seed: Optional[int]) -> tuple[torch.Generator, NoiseSource]:
    """A generator for the DP noise: from os.urandom unless a reproducible seed is given explicitly."""
    seed, source = secret_seed(reproducible_seed, NOISE_STREAM)
    return torch.Generator(device).manual_seed(seed), source
