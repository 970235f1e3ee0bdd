"""Noise calibration and privacy accounting (Opacus accountants), shared by every method of a cell.

For a cell (ε, δ) of a suite, the sampling rate q = expected_batch_size / N and the number of logical
steps T depend only on the suite and the private dataset; σ is calibrated once from (ε, δ, q, T) with
the suite's accountant, so every method in the cell runs with the same σ. After training, ε is
recomputed from the accountant's recorded history.
"""

from __future__ import annotations

import functools
import warnings
import math
from dataclasses import asdict, dataclass

from dpbench.errors import UserError

# Opacus' PRV accountant bounds its domain with an RDP pass that warns when the optimal order is at the
# edge of its alpha grid; that affects only the tightness of an internal bound, not the ε it returns.
warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")


@dataclass(frozen=True)
class PrivacyPlan:
    """Everything the DP loop needs to spend a budget; identical for every method of a cell."""

    epsilon: float  # math.inf = non-private reference
    delta: float
    accountant: str
    sample_rate: float
    steps: int
    expected_batch_size: int
    noise_multiplier: float  # 0 for the non-private reference
    max_grad_norm: float  # math.inf (no clipping) for the non-private reference
    noise_multiplicity: int
    physical_batch_size: int
    num_examples: int

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)

    def as_dict(self) -> dict:
        return asdict(self)


def logical_steps(num_examples: int, expected_batch_size: int, epochs: float | None, steps: int | None) -> int:
    if steps is not None:
        return int(steps)
    return max(1, math.ceil(epochs * num_examples / expected_batch_size))


@functools.lru_cache(maxsize=256)
def calibrate_noise_multiplier(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    try:
        return float(
            get_noise_multiplier(
                target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps,
                accountant=accountant, epsilon_tolerance=0.005,
            )
        )
    except ValueError as err:
        raise UserError(
            f"privacy.epsilons: ε={epsilon:g} is unreachable with δ={delta:g}, q={sample_rate:.4g}, T={steps} "
            f"({err}) — raise ε, lower the expected batch size or the number of steps"
        ) from None


def make_plan(
    *, epsilon: float, delta: float, accountant: str, num_examples: int, expected_batch_size: int,
    epochs: float | None, steps: int | None, max_grad_norm: float, noise_multiplicity: int,
    physical_batch_size: int,
) -> PrivacyPlan:
    if expected_batch_size > num_examples:
        raise UserError(
            f"privacy.expected_batch_size: {expected_batch_size} is larger than the private dataset "
            f"({num_examples} examples) — lower it"
        )
    if delta >= 1.0 / num_examples:
        raise UserError(
            f"privacy.delta: δ={delta:g} must be < 1/N = {1.0 / num_examples:.3g} for N={num_examples} "
            f"private examples — lower δ (e.g. {10 ** math.floor(math.log10(0.1 / num_examples)):g})"
        )
    sample_rate = expected_batch_size / num_examples
    total_steps = logical_steps(num_examples, expected_batch_size, epochs, steps)
    private = math.isfinite(epsilon)
    sigma = calibrate_noise_multiplier(epsilon, delta, sample_rate, total_steps, accountant) if private else 0.0
    return PrivacyPlan(
        epsilon=epsilon, delta=delta, accountant=accountant, sample_rate=sample_rate, steps=total_steps,
        expected_batch_size=expected_batch_size, noise_multiplier=sigma,
        max_grad_norm=max_grad_norm if private else math.inf, noise_multiplicity=noise_multiplicity,
        physical_batch_size=physical_batch_size, num_examples=num_examples,
    )


def make_accountant(kind: str, history: list | None = None):
    from opacus.accountants import create_accountant

    accountant = create_accountant(mechanism=kind)
    accountant.history = [tuple(h) for h in (history or [])]
    return accountant


def epsilon_spent(kind: str, history: list, delta: float) -> float | None:
    if not history:
        return 0.0
    return float(make_accountant(kind, history).get_epsilon(delta=delta))
