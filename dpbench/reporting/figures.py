"""The report's figures, drawn on matplotlib's Agg canvas (no pyplot, no global backend state).

One meaning per line style in every figure, and every legend says so:

* solid line with a shaded band: DP runs (finite ε), mean over seeds and its 95% interval;
* dashed line, or hatched bar: ε = ∞, the non-private reference (DP mode "nonprivate" in profiles);
* dotted line: the pretrained model before fine-tuning (a non-private reference);
* dash-dot line: the real-data classifier, the ceiling.

Axes are scaled to the runs' values and intervals; a reference outside that range is written as an
arrow text at the edge instead of stretching the axis. A method has one colour and one marker in every
figure of a report (:func:`method_styles`, from the report's one method order). A figure with nothing to
draw is not drawn: the builders return None and the report says what was not recorded.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from dpbench.reporting.findings import pareto_points
from dpbench.reporting.grid import Metric, ResultGrid, interval_of, mean_of, metric_value
from dpbench.results import display_epsilon

DPI = 110
MiB = 2.0**20
LINE_STYLES = {"dp": "-", "nonprivate": "--", "pretrained": ":", "ceiling": "-."}
STYLE_MEANINGS = {
    "dp": "DP runs: mean over seeds, bars (and band) = 95% interval",
    "nonprivate": "ε = ∞ (non-private reference)",
    "pretrained": "pretrained model, before fine-tuning (non-private)",
    "ceiling": "classifier trained on real data (ceiling)",
}
NONPRIVATE_HATCH = "//"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
MEMORY_PARTS = ("parameters", "optimizer_state", "ema", "per_sample_gradients")


@dataclass(frozen=True)
class Reference:
    """A horizontal reference line: ``kind`` is "pretrained" or "ceiling" (see :data:`LINE_STYLES`)."""

    value: Optional[float]
    kind: str


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


@dataclass(frozen=True)
class MethodStyle:
    color: tuple
    marker: str


def method_styles(methods: Sequence[str]) -> dict[str, MethodStyle]:
    """One colour and marker per method, by its position in the report's method order (the same order for
    every figure of a report, so a method looks the same everywhere)."""
    # tab10 repeats after 10 methods (a 13-method suite drew two methods alike): tab20 then, whose 20 colours
    # with the 10 markers give 20 distinct (colour, marker) pairs
    colours = 10 if len(methods) <= 10 else 20
    palette = colormaps["tab10" if colours == 10 else "tab20"]
    return {method: MethodStyle(palette(i % colours), MARKERS[i % len(MARKERS)]) for i, method in enumerate(methods)}


def _method_handles(methods: Sequence[str], styles: dict[str, MethodStyle]) -> list[Line2D]:
    return [Line2D([], [], color=styles[m].color, marker=styles[m].marker, label=m) for m in methods]


# ------------------------------------------------------------------------------------------ metric vs ε
def metric_vs_epsilon(grid: ResultGrid, metric: Metric, ylabel: str, title: str,
                      references: Sequence[Reference] = (), styles: Optional[dict[str, MethodStyle]] = None
                      ) -> Optional[Figure]:
    """The metric against ε per method; None when no run recorded it (no empty chart)."""
    styles = styles or method_styles(grid.methods)
    if not any(metric_value(r, metric) is not None for r in grid.runs):
        return None
    figure = new_figure(8.4, 4.6)
    ax = figure.add_subplot()
    plotted: dict[str, list[float]] = {"dp": [], "nonprivate": []}  # values drawn, per line style
    drawn = [m for m in grid.methods if any(grid.cell(m, e) for e in grid.epsilons)]
    for position, method in enumerate(drawn):
        dodge = DODGE ** (position - (len(drawn) - 1) / 2)  # side by side, so no point hides another
        plotted["dp"] += _dp_curve(ax, grid, method, metric, styles[method], dodge)
        plotted["nonprivate"] += _nonprivate_line(ax, grid, method, metric, styles[method].color)
    values = plotted["dp"] + plotted["nonprivate"]
    _epsilon_axis(ax, grid.finite_epsilons)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    limits = _padded_limits(values)
    ax.set_ylim(*limits)
    styles_drawn = {style for style, drawn_values in plotted.items() if drawn_values} | _references(
        ax, references, limits)
    _style_legend(ax, drawn, styles, styles_drawn)
    return figure


DODGE = 1.06  # horizontal offset factor between methods on the log ε axis


def _dp_curve(ax, grid: ResultGrid, method: str, metric: Metric, style: MethodStyle, dodge: float) -> list[float]:
    """Mean per finite ε with error bars (the interval, on the metric's own scale), joined by a line with a
    band when there are several ε."""
    points = [(eps * dodge, interval_of(grid.cell(method, eps), metric)) for eps in grid.finite_epsilons]
    points = [(eps, i) for eps, i in points if i is not None]
    if not points:
        return []
    eps = [e for e, _ in points]
    means = [i.mean for _, i in points]
    ax.plot(eps, means, ls=LINE_STYLES["dp"], marker=style.marker, color=style.color, zorder=3)
    with_band = [(e, i) for e, i in points if i.low is not None]
    if with_band:
        ax.errorbar([e for e, _ in with_band], [i.mean for _, i in with_band],
                    yerr=[[i.mean - i.low for _, i in with_band], [i.high - i.mean for _, i in with_band]],
                    fmt="none", ecolor=style.color, capsize=4, lw=1.2, zorder=2)
    if len(with_band) > 1:
        ax.fill_between([e for e, _ in with_band], [i.low for _, i in with_band], [i.high for _, i in with_band],
                        color=style.color, alpha=0.12, lw=0)
    return [v for _, i in points for v in (i.mean, i.low, i.high) if v is not None]


def _nonprivate_line(ax, grid: ResultGrid, method: str, metric: Metric, color) -> list[float]:
    interval = interval_of(grid.cell(method, math.inf), metric)
    if interval is None:
        return []
    ax.axhline(interval.mean, ls=LINE_STYLES["nonprivate"], lw=1.4, color=color)
    return [interval.mean]


def _epsilon_axis(ax, finite: Sequence[float]) -> None:
    if not finite:
        ax.set_xticks([])
        ax.set_xlabel("no finite ε: only the non-private reference (dashed)")
        return
    ax.set_xscale("log")
    ax.set_xlim(min(finite) / 1.8, max(finite) * 1.8)
    ax.set_xticks(list(finite), labels=[display_epsilon(e) for e in finite])
    ax.minorticks_off()
    ax.set_xlabel("privacy budget ε (log scale); ε = ∞ drawn dashed across")


def _padded_limits(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    pad = (high - low) * 0.12 or max(abs(high) * 0.05, 0.01)
    return low - pad, high + pad


def _references(ax, references: Sequence[Reference], limits: tuple[float, float]) -> set[str]:
    """Lines for references inside the runs' range; arrow texts at the edge for those outside it."""
    drawn, low, high = set(), *limits
    for ref in references:
        if ref.value is None:
            continue
        text = f"{STYLE_MEANINGS[ref.kind].split(' (')[0]}: {ref.value:.3g}"
        if low <= ref.value <= high:
            ax.axhline(ref.value, ls=LINE_STYLES[ref.kind], lw=1.6, color="black")
            drawn.add(ref.kind)
        elif ref.value > high:
            ax.annotate(f"↑ {text} (above this range)", xy=(0.01, 0.97), xycoords="axes fraction", va="top",
                        fontsize=8, color="#333")
        else:
            ax.annotate(f"↓ {text} (below this range)", xy=(0.01, 0.03), xycoords="axes fraction", va="bottom",
                        fontsize=8, color="#333")
    return drawn


def _style_legend(ax, methods: Sequence[str], styles: dict[str, MethodStyle], line_styles: set[str]) -> None:
    handles = _method_handles(methods, styles)
    handles += [Line2D([], [], ls=LINE_STYLES[s], color="black", label=STYLE_MEANINGS[s])
                for s in LINE_STYLES if s in line_styles]
    ax.legend(handles=handles, fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


# ------------------------------------------------------------------------------------------ efficiency
def efficiency_figure(grid: ResultGrid, styles: Optional[dict[str, MethodStyle]] = None) -> Optional[Figure]:
    """Left: total peak memory per method, DP and ε = ∞, stacked by its analytic parts. Right: throughput
    per method and ε with 95% intervals. A panel with nothing recorded is left out; None when both are."""
    styles = styles or method_styles(grid.methods)
    panels = [draw for draw, metric in ((_memory_breakdown, "total_peak_memory_bytes"),
                                        (_throughput_bars, "throughput_examples_per_s"))
              if any(metric_value(r, metric) is not None for r in grid.runs)]
    if not panels:
        return None
    figure = new_figure(6.2 * len(panels), 4.8)
    for ax, draw in zip(np.atleast_1d(figure.subplots(1, len(panels))), panels):
        draw(ax, grid, styles)
    return figure


MEMORY_PART_SHADES = (1.0, 0.75, 0.55, 0.38, 0.2)  # colour strength per stacked part, darkest first


def _memory_breakdown(ax, grid: ResultGrid, styles: dict[str, MethodStyle]) -> None:
    """Bars in the method's colour; the parts are shades of it (legend in greys), ε = ∞ hatched."""
    parts = MEMORY_PARTS + ("activations and other (measured − analytic)",)
    bars = []
    for method in grid.methods:
        for private in (True, False):
            runs = [r for e in grid.epsilons if math.isfinite(e) == private for r in grid.cell(method, e)
                    if r.total_peak_memory_bytes is not None]
            if runs:
                bars.append((method, private, _mean_breakdown(runs)))
    for x, (method, private, stack) in enumerate(bars):
        bottom = 0.0
        for j, part in enumerate(parts):
            ax.bar(x, stack[j] / MiB, bottom=bottom / MiB, color=styles[method].color, alpha=MEMORY_PART_SHADES[j],
                   edgecolor="#555", lw=0.6, hatch=None if private else NONPRIVATE_HATCH)
            bottom += stack[j]
    ax.set_xticks(range(len(bars)), labels=[f"{m}\n{'DP' if p else 'ε = ∞'}" for m, p, _ in bars], fontsize=7.5,
                  rotation=30 if len(bars) > 8 else 0)
    ax.set_ylabel("total peak memory (MiB)")
    ax.set_title("Total peak memory by part (hatched: ε = ∞, non-private)", fontsize=10)
    # below the axes: inside, it would cover the tallest bars
    ax.legend(handles=[Patch(facecolor="black", alpha=MEMORY_PART_SHADES[j], edgecolor="#555", label=part)
                       for j, part in enumerate(parts)], fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16),
              ncol=3, frameon=False)
    ax.grid(alpha=0.3, axis="y")


def _mean_breakdown(runs) -> list[float]:
    """Mean analytic parts over runs, then what the measured total leaves for activations and the rest."""
    parts = [float(np.mean([r.memory_breakdown.get(p, 0) for r in runs])) for p in MEMORY_PARTS]
    total = mean_of(runs, "total_peak_memory_bytes")
    return parts + [max(0.0, total - sum(parts)) if total is not None else 0.0]


def _throughput_bars(ax, grid: ResultGrid, styles: dict[str, MethodStyle]) -> None:
    """Groups per ε, one bar per method in its colour (ε = ∞ hatched), asymmetric 95% error bars on the log
    scale: never below 0."""
    methods = [m for m in grid.methods if any(grid.cell(m, e) for e in grid.epsilons)]
    width = 0.8 / max(1, len(methods))
    for k, method in enumerate(methods):
        for j, eps in enumerate(grid.epsilons):
            interval = interval_of(grid.cell(method, eps), "throughput_examples_per_s")
            if interval is None:
                continue
            errors = None if interval.low is None else [[interval.mean - interval.low], [interval.high - interval.mean]]
            ax.bar(j + (k - (len(methods) - 1) / 2) * width, interval.mean, width, yerr=errors, capsize=2,
                   color=styles[method].color, edgecolor="#555", lw=0.6,
                   hatch=None if math.isfinite(eps) else NONPRIVATE_HATCH)
    ax.set_xticks(range(len(grid.epsilons)),
                  labels=[f"ε = {display_epsilon(e)}" + ("" if math.isfinite(e) else "\n(non-private)")
                          for e in grid.epsilons])
    ax.set_ylabel("throughput (examples / s, higher is better)")
    ax.set_title("Throughput (error bars: 95% interval over seeds, log scale)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(handles=[Patch(color=styles[m].color, label=m) for m in methods], fontsize=7.5)


# ------------------------------------------------------------------------------------------ Pareto
PARETO_COSTS = (("total_peak_memory_bytes", "total peak memory (MiB, lower is better)", 1 / MiB, True),
                ("throughput_examples_per_s", "throughput (examples / s, higher is better)", 1.0, False))


def pareto_figure(grid: ResultGrid, styles: Optional[dict[str, MethodStyle]] = None) -> Optional[Figure]:
    """Accuracy against memory and against throughput, one column per finite ε; circled: Pareto-optimal
    methods at that ε. Only the costs and ε with points are drawn; None when there are none."""
    styles = styles or method_styles(grid.methods)
    panels = {(cost, eps): pareto_points(grid, eps, cost, lower_is_better)
              for cost, _, _, lower_is_better in PARETO_COSTS for eps in grid.finite_epsilons}
    rows = [c for c in PARETO_COSTS if any(panels[(c[0], e)] for e in grid.finite_epsilons)]
    columns = [e for e in grid.finite_epsilons if any(panels[(c[0], e)] for c in rows)]
    if not rows or not columns:
        return None
    figure = new_figure(3.8 * len(columns) + 1.2, 3.6 * len(rows) + 0.8)
    axes = figure.subplots(len(rows), len(columns), squeeze=False)
    for row, (cost, label, scale, _) in enumerate(rows):
        for column, eps in enumerate(columns):
            ax = axes[row, column]
            ax.set_xlabel(label, fontsize=8)
            ax.grid(alpha=0.3)
            ax.set_title(f"ε = {display_epsilon(eps)}")
            for p in panels[(cost, eps)]:
                ax.scatter(p.cost * scale, p.accuracy, marker=styles[p.method].marker, s=55,
                           color=styles[p.method].color, zorder=3)
                if p.optimal:
                    ax.scatter(p.cost * scale, p.accuracy, s=260, facecolors="none", edgecolors="crimson", zorder=2)
            ax.margins(0.2)
        axes[row, 0].set_ylabel("downstream accuracy")
    handles = [Line2D([], [], ls="", marker=styles[m].marker, color=styles[m].color, label=m) for m in grid.methods]
    handles.append(Line2D([], [], ls="", marker="o", markersize=12, markerfacecolor="none",
                          markeredgecolor="crimson", label="Pareto-optimal at this ε"))
    # as many columns as the figure's width holds (~1.7 in each): a wider legend is cut off at both sides
    columns_fit = max(1, int(figure.get_figwidth() / 1.7))
    figure.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), columns_fit), fontsize=8)
    return figure


# ------------------------------------------------------------------------------------------ profiles
@dataclass(frozen=True)
class Series:
    """One line of a profile figure: a method in one mode ("dp" or "nonprivate")."""

    method: str
    mode: str
    x: Sequence[float]
    y: Sequence[Optional[float]]


def profile_figure(panels: Sequence[tuple[str, Sequence[Series]]], xlabel: str, xticks: Sequence[tuple[float, str]],
                   methods: Sequence[str], styles: Optional[dict[str, MethodStyle]] = None) -> Figure:
    """Panels (title, series), two per row, over a shared kind of x axis: batch size or model size.
    DP solid with the method's marker, non-private dashed with hollow markers, as everywhere."""
    columns = min(2, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = new_figure(5.6 * columns + 1.6, 4.4 * rows)
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    styles = styles or method_styles(methods)
    for ax, (title, series) in zip(axes, panels):
        for s in series:
            points = [(x, y) for x, y in zip(s.x, s.y) if y is not None]
            if points:
                style = styles[s.method]
                ax.plot(*zip(*points), ls=LINE_STYLES[s.mode], marker=style.marker, color=style.color,
                        markerfacecolor=style.color if s.mode == "dp" else "none")
        ax.set_xscale("log")
        # labels of sizes close on a log axis would overlap: slant them
        ax.set_xticks([x for x, _ in xticks], labels=[t for _, t in xticks], fontsize=7.5, rotation=30, ha="right")
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    modes = {s.mode for _, series in panels for s in series}
    line_styles = [Line2D([], [], ls=LINE_STYLES[m], color="black", label="DP" if m == "dp" else "non-private")
                   for m in ("dp", "nonprivate") if m in modes]
    figure.legend(handles=_method_handles(methods, styles) + line_styles, loc="outside right upper", fontsize=8)
    return figure
