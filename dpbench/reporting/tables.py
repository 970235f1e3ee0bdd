"""Tables as data: built once, rendered as HTML and markdown (document.py) or as text for a terminal.

:func:`method_epsilon_table` is the one builder of method × ε tables: each column is a function of
the finished runs of one cell. It also checks what such a table must not hide: runs on different
devices compared side by side.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

from dpbench.reporting.formatting import format_epsilon_cell, format_estimate, format_number
from dpbench.reporting.grid import Metric, ResultGrid, interval_of, mean_of
from dpbench.reporting.stats import Interval, Scale
from dpbench.results import RunResult

# One column of a method × ε table: the cell's runs (one per seed) -> the text shown.
CellFunction = Callable[[list[RunResult]], str]


@dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    table_id: Optional[str] = None
    warnings: Sequence[str] = field(default_factory=tuple)


def interval_cell(metric: Metric, scale: Optional[Scale] = None,
                  formatter: Callable[[Optional[Interval]], str] = format_estimate) -> CellFunction:
    """Mean over seeds with its 95% interval on the metric's scale (or "n=1, no interval")."""
    return lambda runs: formatter(interval_of(runs, metric, scale))


def mean_cell(metric: Metric, formatter: Callable[[Optional[float]], str] = format_number) -> CellFunction:
    """Mean over seeds only: for quantities that are measurements of the setting, not outcomes of the seed."""
    return lambda runs: formatter(mean_of(runs, metric))


def method_epsilon_table(grid: ResultGrid, columns: Mapping[str, CellFunction], table_id: Optional[str] = None,
                         epsilons: Optional[Sequence[float]] = None) -> Table:
    """One row per (method, ε) with finished runs, in the suite's method order; then ``columns``."""
    rows, compared = [], []
    for method in grid.methods:
        for eps in grid.epsilons if epsilons is None else epsilons:
            runs = grid.cell(method, eps)
            if runs:
                compared += runs
                rows.append([method, format_epsilon_cell(eps), str(len(runs)),
                             *(cell(runs) for cell in columns.values())])
    return Table(["method", "ε", "seeds", *columns], rows, table_id, device_warnings(compared))


def device_warnings(runs: Sequence[RunResult]) -> tuple[str, ...]:
    """Memory and speed of runs on different devices are not comparable: say so where they meet."""
    devices = Counter(run.device or "unknown device" for run in runs)
    if len(devices) < 2:
        return ()
    listing = ", ".join(f"{device} ({count} runs)" for device, count in sorted(devices.items()))
    return (f"this table mixes devices: {listing}; memory and throughput are not comparable across them",)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A fixed-width table for terminals: every terminal table of dpbench goes through here. Cells that
    are not text yet are formatted as numbers ("—" for None)."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else format_number(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths]), *(line(r) for r in cells[1:])])
