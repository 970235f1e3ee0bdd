"""How numbers read in every table of the report, the summary, the profile and the regression check."""

from __future__ import annotations

import math
from typing import Iterable, Optional

from dpbench.reporting.stats import (MAX_SEEDS_ESTIMATE, Interval, PairedDiff, format_interval, format_p,
                                     format_significant, seeds_for_power)
from dpbench.results import display_epsilon

MISSING = "—"


def format_number(value: Optional[float], digits: int = 4) -> str:
    """``digits`` significant digits, integers exact, "—" for a missing value, "∞" for infinity."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if abs(value) < 1e-12:  # the rounding residue of subtracting equal means (6.94e-18) reads as 0
        return "0"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.{digits}g}"


def format_bytes(value: Optional[float]) -> str:
    if value is None:
        return MISSING
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.0f} B"


def format_cost(interval: Optional[Interval]) -> str:
    """A measured cost with its interval; one run's cost is shown as it is (the report says once that one
    seed has no intervals)."""
    if interval is None:
        return MISSING
    return format_significant(interval.mean) if interval.low is None else format_interval(interval)


def format_bytes_interval(interval: Optional[Interval]) -> str:
    """Memory with its interval in one unit, the mean's: "210.7 MiB [205.1, 216.4]"; one run: "210.7 MiB"."""
    if interval is None:
        return MISSING
    text = format_bytes(interval.mean)
    if interval.low is None or interval.high is None:
        return text
    unit = text.split(" ")[1]
    scale = {"GiB": 2**30, "MiB": 2**20, "KiB": 2**10, "B": 1}[unit]
    return f"{text} [{interval.low / scale:.1f}, {interval.high / scale:.1f}]"


def format_ratio_interval(interval: Optional[Interval]) -> str:
    """A ratio with its interval: "0.71× [0.69, 0.73]"."""
    if interval is None:
        return MISSING
    mean, _, rest = format_cost(interval).partition(" ")
    return f"{mean}× {rest}".rstrip()


def format_count(value: int) -> str:
    """Parameter counts for people: 1.23M, 45.6k."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return str(value)


def format_ratio(value: Optional[float]) -> str:
    return MISSING if value is None else f"{value:.3g}×"


def format_distinct(values: Iterable[object]) -> str:
    """The distinct values of a cell's runs, in first-seen order (one, normally)."""
    return ", ".join(dict.fromkeys(str(v) for v in values)) or MISSING


def format_epsilon_cell(eps: float) -> str:
    """ε in a table: the non-private reference says what it is wherever it appears."""
    return "∞ (non-private)" if math.isinf(eps) else display_epsilon(eps)


def format_difference(difference: PairedDiff) -> str:
    """A signed difference with its interval and its verdict in words, said once:
    "+0.1 [0.07, 0.13] (significant)", "−0.01 [−0.05, 0.03] (not significant, Holm-adjusted p = 0.62)"."""
    text = format_interval(difference, mark=False)
    if difference.mean >= 0 and not text.startswith("0 "):
        text = "+" + text
    return f"{text} ({significance(difference)})"


def significance(difference: PairedDiff) -> str:
    """The verdict on a difference in words; an interval containing 0 is never called a difference. After a
    multiple-comparison adjustment the verdict is the adjusted test's, and says so with its p."""
    if difference.significant is None:
        return "one seed: cannot be called significant"
    verdict = "significant" if difference.significant else "not significant"
    if difference.adjustment == "holm" and difference.p_value is not None:
        return f"{verdict}, Holm-adjusted {format_p(difference.p_value)}"
    return verdict


def format_seeds_needed(difference: PairedDiff) -> str:
    """The power estimate for a difference that is not significant ("12", "> 10000"); "—" otherwise."""
    if difference.significant is not False:
        return "—"
    needed = seeds_for_power(difference)
    if needed is None:
        return "—"
    return f"> {MAX_SEEDS_ESTIMATE}" if needed > MAX_SEEDS_ESTIMATE else str(needed)


def format_estimate(interval: Optional[Interval]) -> str:
    return MISSING if interval is None else format_interval(interval)
