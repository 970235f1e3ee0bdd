"""The report's figures, drawn on matplotlib's Agg canvas (no pyplot, no global backend state).

One meaning per line style in every figure, and every legend says so:

* solid line with a shaded band: DP runs (finite ε), mean over seeds and its 95% interval;
* dashed line, or hatched bar: ε = ∞, the non-private reference (DP mode "nonprivate" in profiles);
* dotted line: the pretrained model before fine-tuning (a non-private reference);
* dash-dot line: the real-data classifier, the ceiling.

Axes are scaled to the runs' values and intervals; a reference outside that range is written as an
arrow text at the edge instead of stretching the axis.
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
from dpbench.reporting.grid import Metric, ResultGrid, interval_of, mean_of
from dpbench.results import display_epsilon

DPI = 110
MiB = 2.0**20
LINE_STYLES = {"dp": "-", "nonprivate": "--", "pretrained": ":", "ceiling": "-."}
STYLE_MEANINGS = {
    "dp": "DP runs: mean over seeds, band = 95% interval",
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


def method_colors(methods: Sequence[str]) -> dict[str, tuple]:
    palette = colormaps["tab10"]
    return {method: palette(i % 10) for i, method in enumerate(methods)}


def _no_data(ax, text: str = "no values recorded") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#888")


# ------------------------------------------------------------------------------------------ metric vs ε
def metric_vs_epsilon(grid: ResultGrid, metric: Metric, ylabel: str, title: str,
                      references: Sequence[Reference] = ()) -> Figure:
    figure = new_figure(8.4, 4.6)
    ax = figure.add_subplot()
    colors = method_colors(grid.methods)
    plotted: dict[str, list[float]] = {"dp": [], "nonprivate": []}  # values drawn, per line style
    for method in grid.methods:
        plotted["dp"] += _dp_curve(ax, grid, method, metric, colors[method])
        plotted["nonprivate"] += _nonprivate_line(ax, grid, method, metric, colors[method])
    values = plotted["dp"] + plotted["nonprivate"]
    _epsilon_axis(ax, grid.finite_epsilons)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if not values:
        _no_data(ax)
        return figure
    limits = _padded_limits(values)
    ax.set_ylim(*limits)
    styles = {style for style, drawn in plotted.items() if drawn} | _references(ax, references, limits)
    _style_legend(ax, [m for m in grid.methods if any(grid.cell(m, e) for e in grid.epsilons)], colors, styles)
    return figure


def _dp_curve(ax, grid: ResultGrid, method: str, metric: Metric, color) -> list[float]:
    points = [(eps, interval_of(grid.cell(method, eps), metric)) for eps in grid.finite_epsilons]
    points = [(eps, i) for eps, i in points if i is not None]
    if not points:
        return []
    eps = [e for e, _ in points]
    ax.plot(eps, [i.mean for _, i in points], ls=LINE_STYLES["dp"], marker="o", color=color)
    with_band = [(e, i) for e, i in points if i.low is not None]
    if with_band:
        ax.fill_between([e for e, _ in with_band], [i.low for _, i in with_band], [i.high for _, i in with_band],
                        color=color, alpha=0.15, lw=0)
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
    ax.set_xlim(min(finite) / 1.6, max(finite) * 1.6)
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


def _style_legend(ax, methods: Sequence[str], colors: dict, styles: set[str]) -> None:
    handles = [Patch(color=colors[m], label=m) for m in methods]
    handles += [Line2D([], [], ls=LINE_STYLES[s], color="black", label=STYLE_MEANINGS[s])
                for s in LINE_STYLES if s in styles]
    ax.legend(handles=handles, fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


# ------------------------------------------------------------------------------------------ efficiency
def efficiency_figure(grid: ResultGrid) -> Figure:
    """Left: total peak memory per method, DP and ε = ∞, stacked by its analytic parts. Right: throughput
    per method and ε with 95% intervals."""
    figure = new_figure(12.0, 4.6)
    memory_ax, throughput_ax = figure.subplots(1, 2)
    _memory_breakdown(memory_ax, grid)
    _throughput_bars(throughput_ax, grid)
    return figure


def _memory_breakdown(ax, grid: ResultGrid) -> None:
    palette = colormaps["Set2"]
    parts = MEMORY_PARTS + ("activations and other (measured − analytic)",)
    bars = []
    for method in grid.methods:
        for private in (True, False):
            runs = [r for e in grid.epsilons if math.isfinite(e) == private for r in grid.cell(method, e)]
            if runs:
                bars.append((f"{method}\n{'DP' if private else 'ε = ∞'}", private, _mean_breakdown(runs)))
    if not bars:
        _no_data(ax)
        return
    for x, (_, private, stack) in enumerate(bars):
        bottom = 0.0
        for j, part in enumerate(parts):
            ax.bar(x, stack[j] / MiB, bottom=bottom / MiB, color=palette(j), edgecolor="#555",
                   hatch=None if private else NONPRIVATE_HATCH, label=part if x == 0 else None)
            bottom += stack[j]
    ax.set_xticks(range(len(bars)), labels=[label for label, _, _ in bars], fontsize=8)
    ax.set_ylabel("total peak memory (MiB)")
    ax.set_title("Total peak memory by part (hatched: ε = ∞, non-private)")
    ax.legend(fontsize=7.5, loc="upper right")
    ax.grid(alpha=0.3, axis="y")


def _mean_breakdown(runs) -> list[float]:
    """Mean analytic parts over runs, then what the measured total leaves for activations and the rest."""
    parts = [float(np.mean([r.memory_breakdown.get(p, 0) for r in runs])) for p in MEMORY_PARTS]
    total = mean_of(runs, "total_peak_memory_bytes")
    return parts + [max(0.0, total - sum(parts)) if total is not None else 0.0]


def _throughput_bars(ax, grid: ResultGrid) -> None:
    width = 0.8 / max(1, len(grid.epsilons))
    shades = colormaps["viridis"]
    drew = False
    for j, eps in enumerate(grid.epsilons):
        intervals = [interval_of(grid.cell(m, eps), "throughput_examples_per_s") for m in grid.methods]
        if not any(intervals):
            continue
        drew = True
        private = math.isfinite(eps)
        errors = [(i.half_width or 0.0) if i else 0.0 for i in intervals]
        ax.bar(np.arange(len(grid.methods)) + (j - (len(grid.epsilons) - 1) / 2) * width,
               [i.mean if i else np.nan for i in intervals], width, yerr=errors, capsize=2,
               color=shades(0.15 + 0.7 * j / max(1, len(grid.epsilons) - 1)) if private else "#cccccc",
               hatch=None if private else NONPRIVATE_HATCH, edgecolor="#555",
               label=f"ε = {display_epsilon(eps)}" + ("" if private else " (non-private)"))
    ax.set_xticks(range(len(grid.methods)), labels=list(grid.methods))
    ax.set_ylabel("throughput (examples / s, higher is better)")
    ax.set_title("Throughput (error bars: 95% interval over seeds)")
    ax.grid(alpha=0.3, axis="y")
    if drew:
        ax.legend(fontsize=7.5)
    else:
        _no_data(ax)


# ------------------------------------------------------------------------------------------ Pareto
PARETO_COSTS = (("total_peak_memory_bytes", "total peak memory (MiB, lower is better)", 1 / MiB, True),
                ("throughput_examples_per_s", "throughput (examples / s, higher is better)", 1.0, False))


def pareto_figure(grid: ResultGrid) -> Figure:
    """Accuracy against memory (top) and throughput (bottom), one column per finite ε; circled:
    Pareto-optimal methods at that ε."""
    columns = max(1, len(grid.finite_epsilons))
    figure = new_figure(3.8 * columns + 1.2, 7.2)
    axes = figure.subplots(len(PARETO_COSTS), columns, squeeze=False)
    colors = method_colors(grid.methods)
    markers = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(grid.methods)}
    for row, (cost, label, scale, lower_is_better) in enumerate(PARETO_COSTS):
        for column in range(columns):
            ax = axes[row, column]
            ax.set_xlabel(label, fontsize=8)
            ax.grid(alpha=0.3)
            points = (pareto_points(grid, grid.finite_epsilons[column], cost, lower_is_better)
                      if grid.finite_epsilons else [])
            if not points:
                _no_data(ax, "no DP runs with both values")
                continue
            ax.set_title(f"ε = {display_epsilon(grid.finite_epsilons[column])}")
            for p in points:
                ax.scatter(p.cost * scale, p.accuracy, marker=markers[p.method], s=55, color=colors[p.method],
                           zorder=3)
                if p.optimal:
                    ax.scatter(p.cost * scale, p.accuracy, s=260, facecolors="none", edgecolors="crimson", zorder=2)
            ax.margins(0.2)
        axes[row, 0].set_ylabel("downstream accuracy")
    handles = [Line2D([], [], ls="", marker=markers[m], color=colors[m], label=m) for m in grid.methods]
    handles.append(Line2D([], [], ls="", marker="o", markersize=12, markerfacecolor="none",
                          markeredgecolor="crimson", label="Pareto-optimal at this ε"))
    figure.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7), fontsize=8)
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
                   methods: Sequence[str]) -> Figure:
    """Panels (title, series), two per row, over a shared kind of x axis: batch size or model size.
    DP solid, non-private dashed, as everywhere."""
    columns = min(2, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = new_figure(5.4 * columns + 1.6, 4.2 * rows)
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    colors = method_colors(methods)
    for ax, (title, series) in zip(axes, panels):
        for s in series:
            points = [(x, y) for x, y in zip(s.x, s.y) if y is not None]
            if points:
                ax.plot(*zip(*points), ls=LINE_STYLES[s.mode], marker="o" if s.mode == "dp" else "x",
                        color=colors[s.method])
        ax.set_xscale("log")
        ax.set_xticks([x for x, _ in xticks], labels=[t for _, t in xticks], fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    modes = {s.mode for _, series in panels for s in series}
    styles = [Line2D([], [], ls=LINE_STYLES[m], color="black", label="DP" if m == "dp" else "non-private")
              for m in ("dp", "nonprivate") if m in modes]
    figure.legend(handles=[Patch(color=colors[m], label=m) for m in methods] + styles, loc="outside right upper",
                  fontsize=8)
    return figure
