"""A cell's privacy plan: the DP step's configuration and the budget it is accounted against.

For a cell (ε, δ) of a suite, the sampling rate q = expected_batch_size / N and the number of logical
steps T depend only on the suite and the private dataset; σ is calibrated once from (ε, δ, q, T) with
the suite's accountant, so every method in the cell runs with the same σ. After training, ε is
recomputed from the accountant's recorded history.

Two objects, because they have different users: :class:`DPStep` is what one step of the DP loop needs
(σ, the clipping rule, K, batch sizes) — probes, the selfcheck and the audit build one without any
budget — and :class:`Budget` is what the accountant needs (ε, δ, the accountant and the total σ it
steps with).

Adaptive (quantile) clipping runs two Gaussian mechanisms per step: the clipped gradient sum
(sensitivity C, noise multiplier σ_g) and the count of unclipped examples (values shifted to ±½, so
sensitivity ½, noise std σ_b). Together they are one Gaussian mechanism with noise multiplier z,
z⁻² = σ_g⁻² + (2σ_b)⁻² (Andrew et al. 2021, Thm. 1), so the budget is calibrated for z and the
gradient gets σ_g = (z⁻² − (2σ_b)⁻²)^(-1/2): the total is still ε.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Literal, Optional

from dpbench.errors import UserError

# Opacus' PRV accountant bounds its domain with an RDP pass that warns when the optimal order is at the
# edge of its alpha grid; that affects only the tightness of an internal bound, not the ε it returns.
warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")

ClipMode = Literal["fixed", "auto", "quantile", "none"]


@dataclass(frozen=True)
class ClippingRule:
    """How per-example gradients are bounded before they are summed and noised.

    - fixed: g·min(1, C/‖g‖), sensitivity C;
    - auto: g/(‖g‖ + γ) (Bu et al. 2023, automatic clipping), sensitivity 1, no C to tune;
    - quantile: fixed clipping whose C follows the target quantile of per-example norms through a
      privatised count (Andrew et al. 2021), sensitivity the current C;
    - none: the non-private reference (no clipping, no noise).
    """

    mode: ClipMode
    max_grad_norm: float = 1.0  # fixed: C; quantile: the initial C; auto: 1 (its sensitivity)
    target_quantile: Optional[float] = None
    quantile_lr: float = 0.2  # geometric update C ← C·exp(−η(b̃ − q*))
    count_noise_std: Optional[float] = None  # σ_b, in examples
    auto_gamma: float = 0.01

    @property
    def sensitivity(self) -> float:
        return 1.0 if self.mode == "auto" else self.max_grad_norm


@dataclass(frozen=True)
class DPStep:
    """Everything one step of the DP loop needs; identical for every method of a cell."""

    private: bool
    noise_multiplier: float  # σ_g: the noise on the clipped gradient sum is N(0, (σ_g · sensitivity)²)
    clipping: ClippingRule
    sample_rate: float
    steps: int
    expected_batch_size: int
    physical_batch_size: int
    noise_multiplicity: int
    num_examples: int


@dataclass(frozen=True)
class Budget:
    """What the accountant needs: the target and the total noise multiplier of each step's mechanism."""

    epsilon: float
    delta: float
    accountant: str
    noise_multiplier: float  # z: the composed per-step Gaussian mechanism (= σ_g without quantile clipping)


@dataclass(frozen=True)
class PrivacyPlan:
    budget: Budget
    step: DPStep

    @property
    def private(self) -> bool:
        return self.step.private


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


def gradient_noise_multiplier(total: float, count_noise_std: float) -> float:
    """σ_g such that the gradient and count mechanisms together have noise multiplier ``total``."""
    rest = total ** -2 - (2 * count_noise_std) ** -2
    if rest <= 0:
        raise UserError(
            f"privacy.max_grad_norm.count_noise: the clipped-count noise std {count_noise_std:g} must exceed σ/2 = "
            f"{total / 2:.4g} — raise it (Andrew et al. suggest expected_batch_size / 20)"
        )
    return rest ** -0.5


def make_plan(*, epsilon: float, delta: float, accountant: str, num_examples: int, expected_batch_size: int,
              epochs: float | None, steps: int | None, clipping: ClippingRule, noise_multiplicity: int,
              physical_batch_size: int) -> PrivacyPlan:
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
    if not private:
        clipping = ClippingRule(mode="none", max_grad_norm=math.inf)
        total = sigma = 0.0
    else:
        total = calibrate_noise_multiplier(epsilon, delta, sample_rate, total_steps, accountant)
        sigma = total
        if clipping.mode == "quantile":
            count_std = clipping.count_noise_std if clipping.count_noise_std is not None else expected_batch_size / 20
            clipping = ClippingRule(**{**clipping.__dict__, "count_noise_std": count_std})
            sigma = gradient_noise_multiplier(total, count_std)
    step = DPStep(private=private, noise_multiplier=sigma, clipping=clipping, sample_rate=sample_rate,
                  steps=total_steps, expected_batch_size=expected_batch_size,
                  physical_batch_size=physical_batch_size, noise_multiplicity=noise_multiplicity,
                  num_examples=num_examples)
    return PrivacyPlan(Budget(epsilon=epsilon, delta=delta, accountant=accountant, noise_multiplier=total), step)


def make_accountant(kind: str, history: list | None = None):
    from opacus.accountants import create_accountant

    accountant = create_accountant(mechanism=kind)
    accountant.history = [tuple(h) for h in (history or [])]
    return accountant


def epsilon_spent(kind: str, history: list, delta: float) -> float:
    if not history:
        return 0.0
    return float(make_accountant(kind, history).get_epsilon(delta=delta))
