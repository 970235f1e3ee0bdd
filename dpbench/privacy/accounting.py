"""A run's privacy plan: the DP step's configuration and the budget it is accounted against.

For a budget (ε, δ) of a suite, the sampling rate q = expected_batch_size / N and the number of logical
steps T depend only on the suite and the private dataset; σ is calibrated once from (ε, δ, q, T) with
the suite's accountant, so every method at that budget runs with the same σ. After training, ε is
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
    """Everything one step of the DP loop needs; identical for every method at one ε."""

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
class Schedule:
    """The suite's sampling schedule: the expected (Poisson) batch size B and the training length, in epochs
    or in logical steps (one of them given). Over N examples it gives q = B / N and T (:func:`logical_steps`)."""

    expected_batch_size: int
    epochs: Optional[float] = None
    steps: Optional[int] = None


@dataclass(frozen=True)
class PrivacyPlan:
    budget: Budget
    step: DPStep

    @property
    def private(self) -> bool:
        return self.step.private


# Beyond these a suite is not a DP fine-tuning run (paper-scale suites have T ≈ 600 and ε ≤ 10), and the
# accountants' numerics or running time break down: refused with the fix instead of hanging or overflowing.
MAX_STEPS = 100_000
MIN_EPSILON, MAX_EPSILON = 1e-3, 100.0
# The PRV accountant discretises a privacy-loss domain whose size grows with ε and √T: one evaluation
# took 0.6 s at ε·√T ≈ 900 and 14 s at ≈ 7,000 (2 busy CPU cores), and a calibration takes 4-8 of them. Above this, calibration is refused with
# the advice to use the RDP accountant (a looser bound that costs milliseconds).
MAX_PRV_EPSILON_ROOT_STEPS = 1000.0
# No run needs more noise than this; if even σ = 100 misses ε, the budget is unreachable (said at once
# instead of Opacus doubling σ up to 10⁶, which took over a minute for ε = 0.001).
MAX_USEFUL_SIGMA = 100.0
EPSILON_TOLERANCE = 0.005  # absolute, or 5e-4·ε when larger: σ is calibrated to ε·(1 − 5e-4) ≤ ε_spent ≤ ε


def logical_steps(num_examples: int, expected_batch_size: int, epochs: float | None, steps: int | None) -> int:
    total = float(steps) if steps is not None else max(1.0, epochs * (num_examples / expected_batch_size))
    if not total <= MAX_STEPS:  # also catches inf and nan, before any rounding
        raise UserError(f"privacy.epochs/steps: T={total:.4g} logical steps is more than dpbench accounts for "
                        f"({MAX_STEPS}) — lower privacy.epochs (or steps), or raise privacy.expected_batch_size")
    return int(total) if steps is not None else math.ceil(total)


def check_calibration_range(epsilon: float, steps: int, accountant: str) -> None:
    """A one-line error for budgets the accountants cannot calibrate (in time, or at all); T is checked
    by :func:`logical_steps`."""
    if not MIN_EPSILON <= epsilon <= MAX_EPSILON:
        raise UserError(f"privacy.epsilons: ε={epsilon:g} is unreachable in practice: dpbench calibrates "
                        f"{MIN_EPSILON:g} ≤ ε ≤ {MAX_EPSILON:g} — choose ε in that range, or inf for the non-private reference")
    if accountant == "prv" and (epsilon * math.sqrt(steps) > MAX_PRV_EPSILON_ROOT_STEPS):
        raise UserError(f"privacy.accountant: prv cannot calibrate ε={epsilon:g} over T={steps} steps in reasonable "
                        f"time (it needs ε·√T ≤ {MAX_PRV_EPSILON_ROOT_STEPS:.0f}) — use "
                        "accountant: rdp (a looser bound), or lower ε or T")


def _epsilon_of(sigma: float, sample_rate: float, steps: int, delta: float, accountant: str) -> float:
    return epsilon_spent(accountant, [(sigma, sample_rate, steps)], delta)


def _calibrate_prv(epsilon: float, delta: float, sample_rate: float, steps: int, rdp_sigma: float) -> float:
    """The PRV σ: the smallest σ (within EPSILON_TOLERANCE of ε) whose PRV ε ≤ the target.

    Opacus' search bisects [0, 20] and so evaluates the PRV at σ far below the answer, where its domain
    (and cost) is largest. The RDP σ is an upper bound in practice (RDP is looser) and the answer lies a
    few percent below it, so the search starts there and interpolates in log ε, never far below σ."""
    f = lambda sigma: _epsilon_of(sigma, sample_rate, steps, delta, "prv")  # noqa: E731
    hi, e_hi = rdp_sigma, f(rdp_sigma)
    while e_hi > epsilon:  # not an upper bound after all: widen upwards
        hi *= 1.25
        e_hi = f(hi)
        if hi > 1e6:
            raise ValueError("The privacy budget is too low.")
    lo = hi * 0.85
    e_lo = f(lo)
    while e_lo <= epsilon:  # the answer is lower still
        hi, e_hi, lo = lo, e_lo, lo * 0.85
        e_lo = f(lo)
    while epsilon - e_hi > max(EPSILON_TOLERANCE, 5e-4 * epsilon):
        # regula falsi on log ε, kept inside the middle 90% of the bracket so it always shrinks
        w = (math.log(e_lo) - math.log(epsilon)) / (math.log(e_lo) - math.log(e_hi))
        sigma = lo + min(0.95, max(0.05, w)) * (hi - lo)
        e = f(sigma)
        if e <= epsilon:
            hi, e_hi = sigma, e
        else:
            lo, e_lo = sigma, e
    return hi


@functools.lru_cache(maxsize=256)
def calibrate_noise_multiplier(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    check_calibration_range(epsilon, steps, accountant)
    try:
        if _epsilon_of(MAX_USEFUL_SIGMA, sample_rate, steps, delta, "rdp") > epsilon:
            raise ValueError(f"even σ = {MAX_USEFUL_SIGMA:g} does not reach it")
        rdp_sigma = float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                               steps=steps, accountant="rdp", epsilon_tolerance=EPSILON_TOLERANCE))
        if accountant == "rdp":
            return rdp_sigma
        return _calibrate_prv(epsilon, delta, sample_rate, steps, rdp_sigma)
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


def make_plan(*, epsilon: float, delta: float, accountant: str, num_examples: int, schedule: Schedule,
              clipping: ClippingRule, noise_multiplicity: int, physical_batch_size: int) -> PrivacyPlan:
    """A run's plan: q and T from ``schedule`` over ``num_examples``, σ calibrated for (ε, δ, q, T)."""
    expected_batch_size = schedule.expected_batch_size
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
    total_steps = logical_steps(num_examples, expected_batch_size, schedule.epochs, schedule.steps)
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
