"""f-DP from the same guesses: Mahloujifar, Melis & Chaudhuri, "Auditing f-Differential Privacy in One
Run" (ICML 2025, arXiv:2410.22235).

Why a second bound
------------------
The (ε, δ) bound of dpbench/audit/bound.py pays ``2·m·δ`` for the δ of the claim: at δ = 1e-4 and
m = 1,000 perfect guessing certifies at most ε ≈ 3.6, so it can never refute ε = 10. A DP-SGD
run claims much more than one (ε, δ) point: its whole trade-off curve f (the least type-II error of
any test of "canary in" against "canary out" at each type-I error α), which in the bulk is far
stronger than its ε = 10 point. The f-DP audit tests the guesses against that curve, with no δ term.

The test (the paper's ``audit_rh_with_cap``)
--------------------------------------------
``m`` canaries with fair secret coins, ``r`` guesses (the rest abstain), ``v`` correct. If the run is
f-DP with respect to each canary, the probability of ≥ v correct is bounded by a recursion over the
correct-guess count: start at ``rc = β·v/m`` (mass of correct guesses) and ``h = β·(r − v)/m``
(incorrect), and for i = v − 1, …, 0

    h' = max(h, B⁻¹(rc)),    rc' = rc + i/(r − i) · (h' − h),

with ``B⁻¹(x) = f(1 − x)`` the inverse blow-up of a symmetric f (the least type-I error of a test
with power x; for μ-GDP ``Φ(Φ⁻¹(x) − μ)``). The claim "f-DP" is refuted at significance β when
``rc + h > r/m`` at the end. :func:`claim_refuted` is this recursion as the two public implementations
write it (read side by side, not run here: neither is installed): Meta's PrivacyGuard
(``FDPAnalysisNode.audit_rh_with_cap``, the authors' group; for membership, alphabet k = 2) and
DeepMind's jax_privacy (``_epsilon_one_run_fdp``, which also caps rc at 1 and stops once h is
unchanged — afterwards nothing changes). tests/test_audit_fdp.py checks it against the exact p-value
sigmoid(ε)ⁿ of n-of-n correct guesses under pure ε-DP.

Two curves
----------
- **μ_low** (:func:`mu_lower_bound`): the largest μ whose Gaussian curve ``G_μ`` is refuted — the
  "empirical μ" of the run. A lower bound on how far from perfect privacy the run is.
- **The claimed curve** (:func:`profile_tradeoff`): the run's own. The accountant (the suite's: PRV,
  opacus' numerical privacy-loss-distribution accountant) gives ε(δ) for the audited (σ, q, T); every
  point (ε, δ(ε)) holds, so the run is f-DP for ``f = max_i f_{ε_i, δ_i}`` over a grid of δ
  (``f_{ε,δ}(α) = max(0, 1 − δ − e^ε α, e^{−ε}(1 − δ − α))``). That f is below the true curve (a grid
  of points of the profile, each rounded up by the accountant), hence a claim the run really makes:
  refuting it refutes the accountant. It is symmetric, as B⁻¹ = f(1 − ·) needs.
- **μ_CLT** (:func:`clt_mu`, reported only): the central-limit approximation of Bu, Dong, Long & Su
  (2020), ``μ = q·√(T·(e^{1/σ²} − 1))``. It is an *approximation*, not a bound: at the quickstart's
  q ≈ 0.26 the true curve is well below G_{μ_CLT} in the tails, so μ_low > μ_CLT is no verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import special

from dpbench.audit.bound import largest_rejected

InverseBlowUp = Callable[[float], float]

# A δ grid for the claimed curve: 1e-12 … 0.9, 24 points (each one accountant call, 0.1–0.6 s on a core).
PROFILE_DELTAS = tuple(float(d) for d in np.logspace(-12, math.log10(0.9), 24))
_MU_CAP = 64.0  # B⁻¹ of G_64 rounds to 0 for every x < 1 - 1e-300: nothing larger can be refuted
_MU_TOLERANCE = 1e-4


def gaussian_inverse_blow_up(mu: float) -> InverseBlowUp:
    """x ↦ Φ(Φ⁻¹(x) − μ): the least type-I error of a test of power x between N(0, 1) and N(μ, 1)."""
    if not mu >= 0:
        raise ValueError(f"mu must be >= 0, got {mu}")
    return lambda x: float(special.ndtr(special.ndtri(min(max(x, 0.0), 1.0)) - mu))


def profile_tradeoff(points: Sequence[tuple[float, float]]) -> InverseBlowUp:
    """B⁻¹(x) = f(1 − x) for ``f = max_i f_{ε_i, δ_i}``: the curve of a mechanism that is (ε_i, δ_i)-DP for every i."""
    eps = np.array([max(0.0, float(e)) for e, _ in points])
    delta = np.array([float(d) for _, d in points])
    if eps.size == 0 or np.any(~np.isfinite(eps)) or np.any((delta < 0) | (delta > 1)):
        raise ValueError(f"need finite ε ≥ 0 and δ in [0, 1], got {list(points)}")
    grow, shrink = np.exp(eps), np.exp(-eps)

    def inverse_blow_up(x: float) -> float:
        alpha = 1.0 - min(max(x, 0.0), 1.0)
        return float(max(0.0, np.max(np.maximum(1.0 - delta - grow * alpha, shrink * (1.0 - delta - alpha)))))

    return inverse_blow_up


def accountant_profile(accountant: str, noise_multiplier: float, sample_rate: float, steps: int,
                       deltas: Sequence[float] = PROFILE_DELTAS) -> list[tuple[float, float]]:
    """(ε(δ), δ) from the suite's accountant for T steps of the Poisson-subsampled Gaussian (σ, q)."""
    from dpbench.privacy.accounting import epsilon_spent

    history = [(noise_multiplier, sample_rate, steps)]
    return [(max(0.0, epsilon_spent(accountant, history, float(d))), float(d)) for d in deltas]


def clt_mu(noise_multiplier: float, sample_rate: float, steps: int) -> float:
    """The CLT approximation μ ≈ q·√(T·(e^{1/σ²} − 1)) of T subsampled Gaussian steps (an estimate, not a bound)."""
    return sample_rate * math.sqrt(steps * math.expm1(noise_multiplier ** -2))


def claim_refuted(m: int, r: int, v: int, inverse_blow_up: InverseBlowUp, significance: float) -> bool:
    """True when ``v`` correct of ``r`` guesses on ``m`` canaries refute f-DP at ``significance`` (module docstring)."""
    if not 0 <= v <= r <= m or m < 1:
        raise ValueError(f"need 0 <= v <= r <= m, m >= 1, got m={m}, r={r}, v={v}")
    if not 0 < significance < 1:
        raise ValueError(f"significance must be in (0, 1), got {significance}")
    if r == 0:
        return False
    correct_mass, wrong_mass = significance * v / m, significance * (r - v) / m
    for i in range(v - 1, -1, -1):
        raised = max(wrong_mass, inverse_blow_up(correct_mass))
        if raised == wrong_mass:
            break  # neither mass changes again
        correct_mass = min(correct_mass + i / (r - i) * (raised - wrong_mass), 1.0)
        wrong_mass = raised
    return correct_mass + wrong_mass > r / m


def mu_lower_bound(m: int, r: int, v: int, significance: float) -> float:
    """Largest μ (to 1e-4, the lower end of the bracket) whose Gaussian curve the guesses refute; 0 if none."""
    refuted = lambda mu: claim_refuted(m, r, v, gaussian_inverse_blow_up(mu), significance)  # noqa: E731
    mu_low = largest_rejected(refuted, _MU_TOLERANCE, _MU_CAP)
    return _MU_CAP if mu_low is None else mu_low


@dataclass(frozen=True)
class ClaimedCurve:
    """The curve a run claims (its accountant's privacy profile) and the CLT's μ, for the report."""

    name: str  # e.g. "prv privacy profile of (σ, q, T)"
    inverse_blow_up: InverseBlowUp
    clt_mu: float


def claimed_curve(accountant: str, noise_multiplier: float, sample_rate: float, steps: int) -> ClaimedCurve:
    points = accountant_profile(accountant, noise_multiplier, sample_rate, steps)
    return ClaimedCurve(name=f"{accountant} privacy profile (ε(δ) at {len(points)} δ in [1e-12, 0.9]) of "
                             f"σ={noise_multiplier:.4g}, q={sample_rate:.4g}, T={steps}",
                        inverse_blow_up=profile_tradeoff(points), clt_mu=clt_mu(noise_multiplier, sample_rate, steps))
