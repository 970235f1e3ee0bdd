"""Statistics over fine-tuning seeds, the benchmark's replicates.

* :func:`mean_interval` — Student-t confidence interval for a metric's mean over seeds.
* :func:`paired_difference` — t-interval for method A minus method B over the seeds both ran.
  Within one (ε, seed) cell the two methods share the pretrained model, the data, σ and the
  batches, so most seed-to-seed variation cancels in the difference; a paired interval can be far
  narrower than comparing two unpaired intervals, and is the right test for "is A better than B".
* :func:`format_interval` — ``"0.501 [0.44, 0.56]"``, with a marker when a difference is not
  significant.

NaN values (a failed evaluation, say) are never dropped silently: ``nan_policy="raise"`` (the
default) rejects them, ``nan_policy="omit"`` drops them and the returned ``n`` says how many values
were used. Infinite values are always rejected: no finite mean or interval describes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Literal, Mapping, Sequence

import numpy as np
from scipy import stats as scipy_stats

DEFAULT_CONFIDENCE = 0.95
NOT_SIGNIFICANT_MARKER = "n.s."

NanPolicy = Literal["raise", "omit"]


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


@dataclass(frozen=True)
class PairedDiff:
    """Mean over seeds of ``a - b`` with a t-interval on those per-seed differences.

    ``significant`` is True when the interval excludes 0, False when it contains 0, and None when
    ``n < 2`` (no interval). ``seeds`` are the seeds that entered, i.e. present in both inputs
    (and not NaN, under ``nan_policy="omit"``).
    """

    mean: float
    low: float | None
    high: float | None
    n: int
    significant: bool | None
    half_width: float | None = None
    confidence: float = DEFAULT_CONFIDENCE
    seeds: tuple = ()


def mean_interval(
    values: Sequence[float] | np.ndarray,
    confidence: float = DEFAULT_CONFIDENCE,
    nan_policy: NanPolicy = "raise",
) -> Interval:
    """Student-t interval ``mean ± t_{(1+c)/2, n-1} · s / √n`` over seeds (``s``: sample std, ddof=1)."""
    _check_confidence(confidence)
    array = _clean_values(np.asarray(values, dtype=float).ravel(), nan_policy, what="values")
    if array.size == 0:
        raise ValueError("no values to average")
    return _t_interval(array, confidence)


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
        significant = None
    else:
        significant = bool(interval.low > 0 or interval.high < 0)
    return PairedDiff(
        mean=interval.mean,
        low=interval.low,
        high=interval.high,
        n=interval.n,
        significant=significant,
        half_width=interval.half_width,
        confidence=confidence,
        seeds=tuple(used_seeds),
    )


def format_interval(interval: Interval | PairedDiff, digits: int = 3) -> str:
    """``"0.501 [0.44, 0.56]"``: every number to ``digits`` significant digits.

    A :class:`PairedDiff` whose interval contains 0 gets `` n.s.`` appended; a single seed prints
    as ``"0.501 (n=1, no interval)"``.
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
    if isinstance(interval, PairedDiff) and interval.significant is False:
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
