"""What the auditor observes, how it scores each canary, and the one Bonferroni family of guesses.

Threat models (both are audited and reported; one correction covers both)
--------------------------------------------------------------------------
- ``final-weights``: the auditor sees the released trainable weights only (θ_T; the EMA weights when
  the suite keeps an EMA — what ``trainable.safetensors`` holds) and the public starting point θ_0.
  Score: ``⟨θ_0 − θ_T, d_j⟩`` (the optimiser moves against the gradient, so an included canary pushes
  θ_0 − θ_T along +d_j).
- ``all-steps``: the auditor sees every step's released gradient r_t (noised, divided by the expected
  batch size: the output of each Gaussian mechanism, hence also every iterate, which is computed from
  them). Two scores, from ``P[t, j] = ⟨r_t, d_j⟩``:
    * ``sum``: ``Σ_t P[t, j]``;
    * ``spikes``: ``Σ_t R[t, j]²`` with R the projections after subtracting each canary's mean over
      the steps and the few strongest components shared by all canaries (:func:`spike_energy`). Noise
      that repeats from step to step cancels (the ``repeated-noise`` fault), as it does in
      consecutive differences, and so does most of the projection of the data's own gradient (which
      can swamp the sums on a model with few trainable parameters), while a canary sampled at step t
      still makes a jump of C/B there.

The guess family
----------------
For each of the three (threat model, score) rules, the guess counts of :func:`guess_grid` (fixed by
m alone): K = 3 × |grid| candidates, each audited at significance β/K (Bonferroni), so every reported
ε_low — per threat model and their maximum — holds at confidence 1 − β together. Nothing here looks
at the coins except the count of correct guesses of each pre-declared candidate.

Why the grid guesses many canaries
----------------------------------
The δ term of the bound (``2·m·δ·…``, dpbench/audit/bound.py) caps ε_low at roughly
``log(β·r / (2·m·δ·K))`` for r guesses all correct: with δ = 1e-4, m = 1000 and K = 9 the exact
bound is 3.6 at r = m and 2.1 at r = m/4. Guessing few canaries (the paper's favourite at δ ≈ 0) buys nothing at
a suite's δ, so the grid guesses half, three quarters and all of them, half "in" and half "out".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from dpbench.audit.bound import DEFAULT_CONFIDENCE, epsilon_lower_bound_from_scores
from dpbench.audit.fdp import ClaimedCurve, claim_refuted, mu_lower_bound

FINAL_WEIGHTS = "final-weights"
ALL_STEPS = "all-steps"
THREAT_MODELS = {
    FINAL_WEIGHTS: "the released (EMA) trainable weights θ_T and the public θ_0",
    ALL_STEPS: "every step's released gradient (noised, divided by B): every iterate",
}
RULES: tuple[tuple[str, str], ...] = (
    (FINAL_WEIGHTS, "sum"),
    (ALL_STEPS, "sum"),
    (ALL_STEPS, "spikes"),
)
GUESS_FRACTIONS = (0.5, 0.75, 1.0)


def guess_grid(m: int, fractions: Sequence[float] = GUESS_FRACTIONS) -> tuple[tuple[int, int], ...]:
    """Two-sided (k₊, k₋) = (⌊f·m/2⌋, ⌊f·m/2⌋) per fraction f; depends on m only."""
    out = []
    for f in fractions:
        half = math.floor(f * m / 2)
        if half > 0 and (half, half) not in out:
            out.append((half, half))
    if not out:
        raise ValueError(f"{m} canaries are too few to guess any")
    return tuple(out)


class ReleaseRecorder:
    """A ``trainer.release_observers`` entry: ``P[t, j] = ⟨r_t, d_j⟩`` for every step t and canary j."""

    def __init__(self, canaries):
        self.canaries = canaries
        self.projections: list[np.ndarray] = []

    def __call__(self, step: int, released: list[torch.Tensor]) -> None:
        if step != len(self.projections):
            raise RuntimeError(f"release observer saw step {step} after {len(self.projections)} steps")
        self.projections.append(self.canaries.project(released))

    @property
    def matrix(self) -> np.ndarray:
        return np.stack(self.projections) if self.projections else np.zeros((0, self.canaries.m))


def removed_components(steps: int) -> int:
    """Shared components the ``spikes`` rule removes after centering: one per ten steps, at least one
    from T = 3 on — fixed by T alone, before any score is seen.

    The data's gradient drifts as the weights move, along a few directions, and with few trainable
    parameters its projection onto a canary direction is far larger than a canary's jump: on the
    quickstart's bias-only run (D = 2,801, T = 85, repeated-noise fault at ε = 2) the centred T × m
    projections had singular values 35, 14, 7.4, 6.8, 4.1, 3.6 times the 20th; removing one left the
    data in (included vs excluded canaries: AUC 0.66, ε_low 0.48), removing 4 gave AUC 0.98 and 8
    gave 1.00 (ε_low 4.5). Each removed component takes about 1/T of a canary's spike energy with it
    (the spikes are spread evenly over time), so a tenth of T costs a tenth of the signal."""
    return max(1, steps // 10) if steps >= 3 else 0


def spike_energy(projections: np.ndarray) -> np.ndarray:
    """Σ_t R[t, j]² of the residual R of the T × m projections after (1) subtracting each canary's
    mean over the steps — anything that repeats every step, a repeated noise vector or the persistent
    part of the data's gradient, cancels exactly as in consecutive differences — and (2) removing the
    strongest components shared by all canaries (:func:`removed_components`: the data gradient's
    projection varies with the Poisson batch's size and drifts slowly along a few directions, so what
    is left of it after centering has low rank). What remains is noise and, for an included canary, a
    jump of ≈ C/B at each step that sampled it."""
    p = np.asarray(projections, dtype=float)
    if p.shape[0] < 2:
        return np.zeros(p.shape[1])
    centered = p - p.mean(0, keepdims=True)
    k = removed_components(p.shape[0])
    if k:
        u, _, _ = np.linalg.svd(centered, full_matrices=False)
        shared = u[:, :k]
        centered = centered - shared @ (shared.T @ centered)
    return (centered ** 2).sum(0)


def canary_scores(canaries, recorder: ReleaseRecorder, initial: Sequence[torch.Tensor],
                  final: Sequence[torch.Tensor]) -> dict[tuple[str, str], np.ndarray]:
    """Scores (higher = "looks included") of every rule in :data:`RULES`, each of shape [m]."""
    moved = [a.detach() - b.detach() for a, b in zip(initial, final)]
    steps = recorder.matrix
    return {
        (FINAL_WEIGHTS, "sum"): canaries.project(moved),
        (ALL_STEPS, "sum"): steps.sum(0),
        (ALL_STEPS, "spikes"): spike_energy(steps),
    }


@dataclass
class RuleBound:
    threat_model: str
    rule: str
    eps_low: float
    guesses: int
    correct: int
    k_plus: int
    k_minus: int
    mu_low: float | None = None  # f-DP: the largest Gaussian μ the guesses refute (None: no f-DP test)
    refutes_claim: bool | None = None  # f-DP: the guesses refute the run's claimed curve


@dataclass
class FamilyBound:
    """Every candidate of the family, and the best per threat model (all at family-wise confidence)."""

    confidence: float
    candidates: int
    per_candidate_confidence: float
    bounds: list[RuleBound] = field(default_factory=list)
    claimed: ClaimedCurve | None = None  # the curve the f-DP tests were run against (None: ε bound only)

    def best(self, threat_model: str | None = None) -> RuleBound:
        pool = [b for b in self.bounds if threat_model is None or b.threat_model == threat_model]
        return max(pool, key=lambda b: (b.eps_low, b.correct / max(b.guesses, 1)))

    def best_fdp(self, threat_model: str | None = None) -> RuleBound | None:
        """The candidate with the largest μ_low (a refuting one first); None without f-DP tests."""
        pool = [b for b in self.bounds if b.mu_low is not None and (threat_model is None or b.threat_model == threat_model)]
        return max(pool, key=lambda b: (bool(b.refutes_claim), b.mu_low, b.correct / max(b.guesses, 1)), default=None)

    @property
    def eps_low(self) -> float:
        return self.best().eps_low

    @property
    def mu_low(self) -> float | None:
        values = [b.mu_low for b in self.bounds if b.mu_low is not None]
        return max(values) if values else None

    @property
    def refutes_claim(self) -> bool:
        """Some f-DP candidate refutes the claimed curve (family-wise significance 1 − confidence)."""
        return any(b.refutes_claim for b in self.bounds)


def family_bound(scores: dict[tuple[str, str], np.ndarray], secret_in: np.ndarray, delta: float,
                 confidence: float = DEFAULT_CONFIDENCE,
                 fractions: Sequence[float] = GUESS_FRACTIONS, claimed: ClaimedCurve | None = None) -> FamilyBound:
    """ε_low of every (rule, guess counts) candidate at significance β/K; K counts every rule and grid point.

    With a ``claimed`` curve every candidate is also an f-DP test (dpbench/audit/fdp.py) — μ_low and
    whether it refutes the claimed curve — and K counts both tests of every candidate (2 × rules ×
    grid): the ε bound and the f-DP verdict hold at ``confidence`` together. (μ_low needs no further
    correction: refuting a weaker curve than the true one is no likelier than refuting the true one.)
    """
    m = len(secret_in)
    grid = guess_grid(m, fractions)
    rules = [rule for rule in RULES if rule in scores]
    k = len(rules) * len(grid) * (1 if claimed is None else 2)
    significance = (1.0 - confidence) / k
    per_candidate = 1.0 - significance
    out = FamilyBound(confidence=confidence, candidates=k, per_candidate_confidence=per_candidate, claimed=claimed)
    for threat_model, rule in rules:
        values = np.asarray(scores[(threat_model, rule)], dtype=float)
        for k_plus, k_minus in grid:
            b = epsilon_lower_bound_from_scores(values, secret_in, k_plus, k_minus, delta, per_candidate)
            bound = RuleBound(threat_model, rule, b.eps_low, b.guesses, b.correct, k_plus, k_minus)
            if claimed is not None:
                bound.mu_low = mu_lower_bound(m, b.guesses, b.correct, significance)
                bound.refutes_claim = claim_refuted(m, b.guesses, b.correct, claimed.inverse_blow_up, significance)
            out.bounds.append(bound)
    return out
