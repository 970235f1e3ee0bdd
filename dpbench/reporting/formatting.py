"""How numbers read in every table of the report, the summary, the profile and the regression check."""

from __future__ import annotations

import math
from typing import Iterable, Optional

from dpbench.reporting.stats import Interval, PairedDiff, format_interval
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
    """A signed difference with its interval and its verdict in words: "+0.1 [0.07, 0.13] significant"."""
    text = format_interval(difference)
    if difference.mean >= 0:
        text = "+" + text
    return f"{text} ({significance(difference)})"


def significance(difference: PairedDiff) -> str:
    """The verdict on a difference in words; an interval containing 0 is never called a difference."""
    if difference.significant is None:
        return "one seed: cannot be called significant"
    return "significant" if difference.significant else "not significant"


def format_estimate(interval: Optional[Interval]) -> str:
    return MISSING if interval is None else format_interval(interval)
