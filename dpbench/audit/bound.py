"""Lower bound on ε from one training run: Steinke, Nasr & Jagielski, "Privacy Auditing with One (1)
Training Run", NeurIPS 2023 (arXiv:2305.08846).

The audit
---------
``m`` canaries; canary ``i`` is put into the training set iff a fair secret coin ``S_i ∈ {-1, +1}``
comes up +1 (``secret_in[i]``). After training, the auditor scores every canary, guesses "in" for
the ``k_plus`` highest scores, "out" for the ``k_minus`` lowest, and abstains on the rest:
``r = k_plus + k_minus`` guesses, ``v`` of them correct.

The bound
---------
The paper's main theorem in its (ε, δ) form: if training is (ε, δ)-DP with respect to each canary,
then for every ``v``

    P[≥ v correct] ≤ f(v) + 2·m·δ · max_{i = 1..m} (f(v - i) - f(v)) / i,
    f(v) = P[Binomial(r, q) ≥ v],   q = e^ε / (1 + e^ε) = sigmoid(ε).

``f`` is the tail of ε-DP randomized response, the best possible guesser under pure ε-DP; the second
term is the price of δ. ``f(v - i) - f(v) = P[v - i ≤ W ≤ v - 1]`` for ``W ~ Binomial(r, q)``. For
``i > v`` that numerator is already all of ``P[W < v]`` while ``i`` keeps growing, so the maximum is
reached at some ``i ≤ v`` and only those are evaluated. This is what the paper's own numerical
procedure (its appendix code: a p-value function, then a bisection on ε) computes;
:func:`p_value` and :func:`epsilon_lower_bound` implement it.

Which direction
---------------
The right-hand side, :func:`p_value`, is a p-value for the null hypothesis "training is
(ε, δ)-DP": small means the observed ``v`` would be too lucky for any (ε, δ)-DP algorithm. It
increases with ε (more privacy loss allowed ⇒ more correct guesses plausible). The reported bound
is the ε where it crosses the significance level ``β = 1 - confidence``:

    eps_low = sup { ε ≥ 0 : p_value(m, r, v, ε, δ) < β },

i.e. the largest ε at which the observed ``v`` is still significant. The claim made is "training
is not (eps_low, δ)-DP", hence not (ε, δ)-DP for any smaller ε either, and it is wrong with
probability at most β. ``eps_low = 0`` means no ε is rejected (e.g. ``v ≤ r/2``).

Choosing k₊ and k₋
------------------
The theorem holds for a guess rule fixed *before* the coins are revealed: any rule that looks at the
scores (and at anything else independent of the coins) is fine, so "the top 100 and bottom 100
scores" is allowed. Picking (k₊, k₋) *after* seeing which guesses were correct is not: the maximum
over many rules is not itself one of the rules, and it overstates ε. :func:`best_guess_counts`
does the allowed version — a grid of (k₊, k₋) fixed in advance, each audited at significance β/K
(Bonferroni over the K grid points), so the maximum is again wrong with probability at most β.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import special, stats

DEFAULT_CONFIDENCE = 0.95
DEFAULT_GUESS_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

# The bisection stops once the bracket is this narrow; the paper's 30 halvings of [0, ⌈ε⌉] stop at
# ~1e-9·⌈ε⌉.
_EPSILON_TOLERANCE = 1e-9
# sigmoid(ε) rounds to 1.0 in float64 from ε ≈ 37, where every v ≤ r has p-value 1; the bracket
# search therefore ends long before this cap, which only guards against a broken p-value.
_EPSILON_SEARCH_CAP = 1e4


@dataclass(frozen=True)
class GuessingBound:
    """One audit: the bound and the guess counts it came from.

    ``confidence`` is the confidence of ``eps_low`` as reported; when it came from a grid of
    ``candidates_tried`` guess counts, each candidate was audited at ``1 - (1 - confidence) / K``.
    """

    eps_low: float
    guesses: int  # r = k_plus + k_minus
    correct: int  # v
    k_plus: int
    k_minus: int
    m: int
    delta: float
    confidence: float
    candidates_tried: int = 1

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.guesses if self.guesses else None


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Upper bound on P[at least ``v`` of ``r`` guesses correct] for an (ε, δ)-DP algorithm.

    The paper's main theorem (see the module docstring): ``f(v) + 2mδ·max_i (f(v-i) - f(v))/i`` with
    ``f`` the Binomial(r, sigmoid(ε)) upper tail, capped at 1.
    """
    _check_counts(m, r, v)
    _check_privacy(delta)
    if not epsilon >= 0:  # also rejects NaN
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    if v == 0:
        return 1.0
    guess_accuracy = special.expit(epsilon)  # q: accuracy of ε-DP randomized response
    tail = float(stats.binom.sf(v - 1, r, guess_accuracy))  # f(v) = P[W >= v]
    if delta == 0:
        return min(tail, 1.0)
    # P[v - i <= W <= v - 1] for i = 1..v, accumulated from the pmf rather than as a difference of
    # two tails, which would cancel catastrophically when both tails are close to 1.
    pmf_just_below_v = stats.binom.pmf(np.arange(v - 1, -1, -1), r, guess_accuracy)
    mass_within_i_below_v = np.cumsum(pmf_just_below_v)
    delta_coefficient = float(np.max(mass_within_i_below_v / np.arange(1, v + 1)))
    return min(tail + 2 * m * delta * delta_coefficient, 1.0)


def epsilon_lower_bound(
    m: int, r: int, v: int, delta: float, confidence: float = DEFAULT_CONFIDENCE
) -> float:
    """Largest ε at which ``v`` correct out of ``r`` guesses is significant at level ``1 - confidence``.

    Returns ``sup{ε ≥ 0 : p_value(m, r, v, ε, δ) < 1 - confidence}`` (0.0 when even ε = 0 is not
    rejected). With probability at least ``confidence`` over the canary coins, an (ε, δ)-DP
    training run yields a bound below ε; so a bound at or above a claimed ε refutes the claim.

    Found by bisection as in the paper, which relies on the p-value being nondecreasing in ε: true
    of the binomial tail; for the δ term it is not proven here but holds on every setting checked
    (tests/test_audit_bound.py). The returned value is always the lower end of the final bracket, so
    the (eps_low, δ) hypothesis itself is rejected, never merely one next to it.
    """
    _check_counts(m, r, v)
    _check_privacy(delta)
    significance = _significance(confidence)

    def rejected(epsilon: float) -> bool:
        return p_value(m, r, v, epsilon, delta) < significance

    eps_low = largest_rejected(rejected, _EPSILON_TOLERANCE, _EPSILON_SEARCH_CAP)
    if eps_low is None:
        raise RuntimeError(f"p-value stays below {significance} up to ε={_EPSILON_SEARCH_CAP}")
    return eps_low


def largest_rejected(rejected: Callable[[float], bool], tolerance: float, cap: float) -> float | None:
    """sup{x ≥ 0 : rejected(x)} for a hypothesis family rejected on an interval [0, x*): doubling from 1,
    then bisection to ``tolerance``; the lower end of the final bracket, so that value is itself
    rejected. 0.0 when even x = 0 is not rejected; None when still rejected beyond ``cap``."""
    if not rejected(0.0):
        return 0.0
    low, high = 0.0, 1.0
    while rejected(high):
        low, high = high, 2 * high
        if high > cap:
            return None
    while high - low > tolerance:
        middle = 0.5 * (low + high)
        if rejected(middle):
            low = middle
        else:
            high = middle
    return low


def count_correct_guesses(
    scores: Sequence[float] | np.ndarray,
    secret_in: Sequence[bool] | np.ndarray,
    k_plus: int,
    k_minus: int,
) -> int:
    """Correct guesses when the ``k_plus`` highest scores are guessed "in", the ``k_minus`` lowest "out".

    Ties are broken by canary index (a rule independent of the secret coins, as the theorem needs).
    """
    score_array, in_array = _check_scores(scores, secret_in)
    m = score_array.size
    _check_guess_counts(m, k_plus, k_minus)
    # One ordering for both ends keeps the two guess sets disjoint whenever k_plus + k_minus <= m.
    highest_first = np.argsort(-score_array, kind="stable")
    guessed_in = highest_first[:k_plus]
    guessed_out = highest_first[m - k_minus:]
    return int(in_array[guessed_in].sum() + (~in_array[guessed_out]).sum())


def epsilon_lower_bound_from_scores(
    scores: Sequence[float] | np.ndarray,
    secret_in: Sequence[bool] | np.ndarray,
    k_plus: int,
    k_minus: int,
    delta: float,
    confidence: float = DEFAULT_CONFIDENCE,
) -> GuessingBound:
    """Audit one training run from canary scores (higher = "looks included").

    ``secret_in[i]`` is canary ``i``'s coin (True: it was in the training set); ``m = len(scores)``
    counts every canary, guessed or not, as the theorem's δ term requires. ``k_plus`` and
    ``k_minus`` must be fixed without looking at ``secret_in`` (see the module docstring).
    """
    score_array, in_array = _check_scores(scores, secret_in)
    m = score_array.size
    correct = count_correct_guesses(score_array, in_array, k_plus, k_minus)
    guesses = k_plus + k_minus
    return GuessingBound(
        eps_low=epsilon_lower_bound(m, guesses, correct, delta, confidence),
        guesses=guesses,
        correct=correct,
        k_plus=k_plus,
        k_minus=k_minus,
        m=m,
        delta=delta,
        confidence=confidence,
    )


def guess_count_grid(
    m: int,
    guess_fractions: Sequence[float] = DEFAULT_GUESS_FRACTIONS,
    include_one_sided: bool = True,
) -> tuple[tuple[int, int], ...]:
    """A (k_plus, k_minus) grid that depends on ``m`` only, hence is fixed before any coin is seen.

    For each fraction ``f`` of the canaries guessed: half "in" and half "out" (k₊ = k₋ = ⌊f·m/2⌋)
    and, if ``include_one_sided``, all "in" (k₊ = ⌊f·m⌋, k₋ = 0) — membership signals are often
    sharper at the top (memorised canaries) than at the bottom. Empty guess sets are dropped.
    """
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    grid: set[tuple[int, int]] = set()
    for fraction in guess_fractions:
        if not 0 < fraction <= 1:
            raise ValueError(f"guess fractions must be in (0, 1], got {fraction}")
        half = math.floor(fraction * m / 2)
        if half > 0:
            grid.add((half, half))
        if include_one_sided and math.floor(fraction * m) > 0:
            grid.add((math.floor(fraction * m), 0))
    return tuple(sorted(grid, key=lambda counts: (counts[0] + counts[1], counts)))


def best_guess_counts(
    scores: Sequence[float] | np.ndarray,
    secret_in: Sequence[bool] | np.ndarray,
    candidates: Sequence[tuple[int, int]],
    delta: float,
    confidence: float = DEFAULT_CONFIDENCE,
) -> GuessingBound:
    """The largest bound over a grid of (k_plus, k_minus), Bonferroni-corrected so it stays sound.

    ``candidates`` must be fixed in advance (e.g. :func:`guess_count_grid`), never chosen after
    looking at which guesses were right. Each of the K candidates is audited at significance
    ``(1 - confidence) / K``; by the union bound, the chance that *any* of them overstates ε is at
    most ``1 - confidence``, so their maximum is a bound at ``confidence``. The price is a smaller
    bound per candidate: keep the grid short.
    """
    candidate_list = [(int(k_plus), int(k_minus)) for k_plus, k_minus in candidates]
    if not candidate_list:
        raise ValueError("candidates is empty")
    if len(set(candidate_list)) != len(candidate_list):
        raise ValueError("candidates has duplicates, which would only weaken the correction")
    significance = _significance(confidence)
    per_candidate_confidence = 1.0 - significance / len(candidate_list)
    best: GuessingBound | None = None
    for k_plus, k_minus in candidate_list:
        result = epsilon_lower_bound_from_scores(
            scores, secret_in, k_plus, k_minus, delta, per_candidate_confidence
        )
        if best is None or result.eps_low > best.eps_low:
            best = result
    assert best is not None
    return GuessingBound(
        eps_low=best.eps_low,
        guesses=best.guesses,
        correct=best.correct,
        k_plus=best.k_plus,
        k_minus=best.k_minus,
        m=best.m,
        delta=delta,
        confidence=confidence,
        candidates_tried=len(candidate_list),
    )


def _significance(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return 1.0 - confidence


def _check_counts(m: int, r: int, v: int) -> None:
    for name, value in (("m", m), ("r", r), ("v", v)):
        if isinstance(value, bool) or int(value) != value:
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got m={m}, r={r}, v={v}")


def _check_privacy(delta: float) -> None:
    if not 0 <= delta <= 1:  # also rejects NaN
        raise ValueError(f"delta must be in [0, 1], got {delta}")


def _check_guess_counts(m: int, k_plus: int, k_minus: int) -> None:
    for name, value in (("k_plus", k_plus), ("k_minus", k_minus)):
        if isinstance(value, bool) or int(value) != value or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if k_plus + k_minus > m:
        raise ValueError(f"k_plus + k_minus = {k_plus + k_minus} exceeds the {m} canaries")


def _check_scores(
    scores: Sequence[float] | np.ndarray, secret_in: Sequence[bool] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    score_array = np.asarray(scores, dtype=float)
    in_array = np.asarray(secret_in)
    if score_array.ndim != 1 or score_array.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {score_array.shape}")
    if in_array.shape != score_array.shape:
        raise ValueError(f"secret_in has shape {in_array.shape}, scores {score_array.shape}")
    if in_array.dtype != bool:
        raise ValueError(f"secret_in must be a bool array, got dtype {in_array.dtype}")
    # A NaN has no place in a ranking; silently putting it first or last would be a guess rule
    # nobody chose. (±inf ranks fine.)
    if np.isnan(score_array).any():
        raise ValueError("scores contain NaN")
    return score_array, in_array
