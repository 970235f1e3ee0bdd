"""Statistics over fine-tuning seeds, the benchmark's replicates.

* :func:`mean_interval` — Student-t confidence interval for a metric's mean over seeds.
* :func:`paired_difference` — t-interval for method A minus method B over the seeds both ran.
  Within one (ε, seed) cell the two methods share the pretrained model, the data, σ and the
  batches, so most seed-to-seed variation cancels in the difference; a paired interval can be far
  narrower than comparing two unpaired intervals, and is the right test for "is A better than B".
* :func:`holm_adjust` — Holm's step-down adjustment of a family of paired differences' p-values (every
  pair of methods at one ε is one family), so "significant" holds for the family, not for each pair alone.
* :func:`seeds_for_power` — for a difference that is not significant, an *estimate* of how many paired
  seeds a t-test would need to resolve it at the observed spread.
* :func:`format_interval` — ``"0.501 [0.44, 0.56]"``, with a marker when a difference is not
  significant.

Intervals respect the range of what they describe (``scale``): a fraction (accuracy) gets a t-interval on
the logit scale and a positive quantity (memory, throughput, FID, ratios) one on the log scale, both
transformed back, so neither runs past 0 or 1. The point estimate is the arithmetic mean either way.

NaN values (a failed evaluation, say) are never dropped silently: ``nan_policy="raise"`` (the
default) rejects them, ``nan_policy="omit"`` drops them and the returned ``n`` says how many values
were used. Infinite values are always rejected: no finite mean or interval describes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from dataclasses import replace
from typing import Hashable, Literal, Mapping, Sequence

import numpy as np
from scipy import stats as scipy_stats

DEFAULT_CONFIDENCE = 0.95
NOT_SIGNIFICANT_MARKER = "n.s."

NanPolicy = Literal["raise", "omit"]
# linear: Student-t on the values; logit: on logit(values), for fractions in [0, 1]; log: on log(values), for
# positive quantities. The transformed interval is mapped back, so it stays inside the quantity's range.
Scale = Literal["linear", "logit", "log"]
SCALE_DESCRIPTIONS = {
    "linear": "Student-t interval",
    "logit": "Student-t interval on the logit scale, transformed back (stays within [0, 1])",
    "log": "Student-t interval on the log scale, transformed back (stays positive)",
}
LOGIT_CLAMP = 1e-6  # a fraction of exactly 0 or 1 has an infinite logit: clamp it this close to the edge


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with a two-sided t-interval; ``low``/``high``/``half_width`` are None
    when ``n == 1`` (one seed gives no estimate of the spread, so no interval)."""

    mean: float
    low: float | None
    high: float | None
    n: int
    half_width: float | None
    confidence: float = DEFAULT_CONFIDENCE
    scale: Scale = "linear"


@dataclass(frozen=True)
class PairedDiff:
    """Mean over seeds of ``a - b`` with a t-interval on those per-seed differences.

    ``significant`` is True when the interval excludes 0, False when it contains 0, and None when
    ``n < 2`` (no interval). ``seeds`` are the seeds that entered, i.e. present in both inputs
    (and not NaN, under ``nan_policy="omit"``). ``p_value`` is the paired t-test's two-sided p; after
    :func:`holm_adjust` it is the Holm-adjusted p, ``adjustment`` says so and ``significant`` follows it
    (the interval stays the unadjusted one).
    """

    mean: float
    low: float | None
    high: float | None
    n: int
    significant: bool | None
    half_width: float | None = None
    confidence: float = DEFAULT_CONFIDENCE
    seeds: tuple = ()
    p_value: float | None = None
    adjustment: str | None = None


def mean_interval(
    values: Sequence[float] | np.ndarray,
    confidence: float = DEFAULT_CONFIDENCE,
    nan_policy: NanPolicy = "raise",
    scale: Scale = "linear",
) -> Interval:
    """Student-t interval ``mean ± t_{(1+c)/2, n-1} · s / √n`` over seeds (``s``: sample std, ddof=1).

    With ``scale="logit"`` or ``"log"`` the interval is computed on the transformed values and mapped
    back, widened (rarely needed) to contain the arithmetic mean, which stays the point estimate. Values
    outside the scale's domain (a fraction above 1, a non-positive amount) fall back to the linear
    interval, and ``scale`` of the result says which one was used."""
    _check_confidence(confidence)
    if scale not in SCALE_DESCRIPTIONS:
        raise ValueError(f"scale must be one of {sorted(SCALE_DESCRIPTIONS)}, got {scale!r}")
    array = _clean_values(np.asarray(values, dtype=float).ravel(), nan_policy, what="values")
    if array.size == 0:
        raise ValueError("no values to average")
    linear = _t_interval(array, confidence)
    if scale == "linear" or linear.low is None or not _in_domain(array, scale):
        return linear
    if scale == "logit":
        clamped = np.clip(array, LOGIT_CLAMP, 1 - LOGIT_CLAMP)
        transformed = _t_interval(np.log(clamped / (1 - clamped)), confidence)
        low, high = (1 / (1 + math.exp(-v)) for v in (transformed.low, transformed.high))
    else:
        transformed = _t_interval(np.log(array), confidence)
        low, high = math.exp(transformed.low), math.exp(transformed.high)
    low, high = min(low, linear.mean), max(high, linear.mean)
    return Interval(mean=linear.mean, low=low, high=high, n=linear.n, half_width=None, confidence=confidence,
                    scale=scale)


def _in_domain(values: np.ndarray, scale: Scale) -> bool:
    if scale == "logit":
        return bool(np.all((values >= 0) & (values <= 1)))
    return bool(np.all(values > 0))


def paired_difference(
    a_by_seed: Mapping[Hashable, float],
    b_by_seed: Mapping[Hashable, float],
    confidence: float = DEFAULT_CONFIDENCE,
    nan_policy: NanPolicy = "raise",
) -> PairedDiff:
    """t-interval for ``a - b`` over the seeds present in both mappings.

    Seeds present in only one mapping are left out (they have no partner to pair with); NaN in
    either value of a pair follows ``nan_policy``. Raises if no seed is left.
    """
    _check_confidence(confidence)
    if nan_policy not in ("raise", "omit"):
        raise ValueError(f"nan_policy must be 'raise' or 'omit', got {nan_policy!r}")
    common_seeds = _sorted_seeds(set(a_by_seed) & set(b_by_seed))
    used_seeds = []
    differences = []
    for seed in common_seeds:
        a_value, b_value = float(a_by_seed[seed]), float(b_by_seed[seed])
        if math.isnan(a_value) or math.isnan(b_value):
            if nan_policy == "raise":
                raise ValueError(f"NaN at seed {seed!r} (pass nan_policy='omit' to drop the pair)")
            continue
        if math.isinf(a_value) or math.isinf(b_value):
            raise ValueError(f"infinite value at seed {seed!r}")
        used_seeds.append(seed)
        differences.append(a_value - b_value)
    if not differences:
        raise ValueError("no seed has a value in both a_by_seed and b_by_seed")
    interval = _t_interval(np.asarray(differences), confidence)
    if interval.low is None or interval.high is None:
        significant = p_value = None
    else:
        significant = bool(interval.low > 0 or interval.high < 0)
        p_value = _t_test_p(np.asarray(differences))
    return PairedDiff(
        mean=interval.mean,
        low=interval.low,
        high=interval.high,
        n=interval.n,
        significant=significant,
        half_width=interval.half_width,
        confidence=confidence,
        seeds=tuple(used_seeds),
        p_value=p_value,
    )


def _t_test_p(differences: np.ndarray) -> float:
    """Two-sided p of the one-sample t-test of mean 0 (a constant difference: 0 if nonzero, else 1)."""
    mean, spread = float(differences.mean()), float(differences.std(ddof=1))
    if spread == 0:
        return 0.0 if mean != 0 else 1.0
    statistic = mean / (spread / math.sqrt(differences.size))
    return float(2 * scipy_stats.t.sf(abs(statistic), df=differences.size - 1))


def holm_adjust(differences: Sequence[PairedDiff]) -> list[PairedDiff]:
    """Holm's step-down adjustment over one family of differences, in their order.

    The k-th smallest p (of m with a p) is multiplied by (m − k + 1), made non-decreasing and capped at 1;
    ``significant`` becomes adjusted p < 1 − confidence. Differences without a p (one seed) are kept as
    they are: they enter no family. The intervals are not changed: they stay unadjusted 95% intervals."""
    tested = sorted((i for i, d in enumerate(differences) if d.p_value is not None),
                    key=lambda i: differences[i].p_value)
    adjusted, running = list(differences), 0.0
    for rank, i in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * differences[i].p_value))
        alpha = 1 - differences[i].confidence
        adjusted[i] = replace(differences[i], p_value=running, adjustment="holm", significant=running < alpha)
    return adjusted


MAX_SEEDS_ESTIMATE = 10_000  # beyond this the estimate is reported as "more than"


def seeds_for_power(difference: PairedDiff, power: float = 0.8) -> int | None:
    """Estimated number of paired seeds at which a two-sided paired t-test at level 1 − confidence
    detects ``difference`` with probability ``power``, taking its observed mean as the true difference
    and its observed per-seed spread as the true spread (the standard a-priori power calculation, on
    the noncentral t). An *estimate*: both inputs are themselves uncertain, most of all from 2–3 seeds,
    so read it as an order of magnitude. None when there is no spread to estimate from (n < 2) or the
    observed difference is exactly 0 (no finite n); ``MAX_SEEDS_ESTIMATE + 1`` means "more than that".
    A Holm-adjusted family needs somewhat more (its per-pair level is smaller)."""
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power}")
    if difference.half_width is None or difference.n < 2 or difference.mean == 0:
        return None
    t_now = float(scipy_stats.t.ppf(0.5 + difference.confidence / 2, df=difference.n - 1))
    spread = difference.half_width * math.sqrt(difference.n) / t_now
    if spread == 0:
        return difference.n  # a constant nonzero difference: already resolved
    effect = abs(difference.mean) / spread
    alpha = 1 - difference.confidence

    def achieved(n: int) -> float:
        critical = float(scipy_stats.t.ppf(1 - alpha / 2, df=n - 1))
        shift = effect * math.sqrt(n)
        return float(scipy_stats.nct.sf(critical, n - 1, shift) + scipy_stats.nct.cdf(-critical, n - 1, shift))

    low, high = 2, 2
    while achieved(high) < power:  # doubling, then bisection on the monotone power curve
        if high > MAX_SEEDS_ESTIMATE:
            return MAX_SEEDS_ESTIMATE + 1
        low, high = high, high * 2
    while low < high:
        middle = (low + high) // 2
        if achieved(middle) >= power:
            high = middle
        else:
            low = middle + 1
    return high


def format_p(p_value: float) -> str:
    return "p < 0.001" if p_value < 0.001 else f"p = {_format_number(p_value, 2)}"


def format_interval(interval: Interval | PairedDiff, digits: int = 3, mark: bool = True) -> str:
    """``"0.501 [0.44, 0.56]"``: every number to ``digits`` significant digits.

    A :class:`PairedDiff` that is not significant gets `` n.s.`` appended unless ``mark`` is False (a
    caller that states the verdict in words); a single seed prints as ``"0.501 (n=1, no interval)"``.
    """
    if digits < 1:
        raise ValueError(f"digits must be >= 1, got {digits}")
    mean_text = _format_number(interval.mean, digits)
    if interval.low is None or interval.high is None:
        return f"{mean_text} (n={interval.n}, no interval)"
    text = (
        f"{mean_text} [{_format_number(interval.low, digits)}, "
        f"{_format_number(interval.high, digits)}]"
    )
    if mark and isinstance(interval, PairedDiff) and interval.significant is False:
        text += f" {NOT_SIGNIFICANT_MARKER}"
    return text


def _t_interval(values: np.ndarray, confidence: float) -> Interval:
    n = int(values.size)
    mean = float(values.mean())
    if n < 2:
        return Interval(mean=mean, low=None, high=None, n=n, half_width=None, confidence=confidence)
    standard_error = float(values.std(ddof=1)) / math.sqrt(n)
    t_quantile = float(scipy_stats.t.ppf(0.5 + confidence / 2, df=n - 1))
    half_width = t_quantile * standard_error
    return Interval(
        mean=mean,
        low=mean - half_width,
        high=mean + half_width,
        n=n,
        half_width=half_width,
        confidence=confidence,
    )


def _clean_values(values: np.ndarray, nan_policy: NanPolicy, what: str) -> np.ndarray:
    if nan_policy not in ("raise", "omit"):
        raise ValueError(f"nan_policy must be 'raise' or 'omit', got {nan_policy!r}")
    nan_mask = np.isnan(values)
    if nan_mask.any():
        if nan_policy == "raise":
            raise ValueError(
                f"{what} contain {int(nan_mask.sum())} NaN (pass nan_policy='omit' to drop them)"
            )
        values = values[~nan_mask]
    if np.isinf(values).any():
        raise ValueError(f"{what} contain infinity")
    return values


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _sorted_seeds(seeds: set) -> list:
    # Seeds are usually ints; fall back to a string order for mixed key types so the output
    # (and the order of PairedDiff.seeds) is deterministic either way.
    try:
        return sorted(seeds)
    except TypeError:
        return sorted(seeds, key=repr)


def format_significant(value: float, digits: int = 3) -> str:
    """``digits`` significant digits in positional notation (1280, 0.00833), 0 for rounding residues."""
    return _format_number(value, digits)


def _format_number(value: float, digits: int) -> str:
    # Positional notation with significant digits: 0.501, 0.44, 1230 — never 1.23e+03 in a table.
    # A magnitude below 1e-12 is the rounding residue of subtracting equal means (0.193 - 0.193 came out
    # as -2.8e-17, printed with 17 zeros): it reads as 0.
    if abs(value) < 1e-12:
        return "0"
    text = np.format_float_positional(
        float(value), precision=digits, unique=True, fractional=False, trim="-"
    )
    return "0" if text == "-0" else text
