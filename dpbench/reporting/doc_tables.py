"""Measured numbers in README.md and docs/*.md, generated from committed data files (``dpbench docs``).

A generated block sits between two markers; the first names what to render and from which file
(relative to the repository root)::

    <!-- generated: scaling from docs/data/profile-scaling-cpu.json; regenerate with: dpbench docs -->
    ...
    <!-- /generated -->

:func:`update_documents` rewrites every block from its file, or with ``check=True`` only lists the
blocks that differ from what their file gives. :func:`summarize_results` turns a suite's results folder
into the compact :class:`~dpbench.results.ResultsSummary` that the results tables are rendered from.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from dpbench.errors import UserError
from dpbench.reporting.document import markdown_table
from dpbench.reporting.findings import seeded_noise_warning
from dpbench.reporting.formatting import (MISSING, format_bytes, format_count, format_distinct, format_epsilon_cell,
                                          format_number, format_ratio)
from dpbench.reporting.grid import ResultGrid, epsilon_order, interval_of, load_grid, mean_of, ratio
from dpbench.reporting.profiles import FULL_FINE_TUNING, Scaling, crossovers, profile_table, scaling
from dpbench.reporting.stats import Interval, format_interval
from dpbench.reporting.tables import Table
from dpbench.results import (DpOverheadBaseline, Estimate, Profile, ResultsSummary, SummaryCell, SummaryMethod,
                             check_name, display_epsilon, read_model, write_bytes_atomic, write_model)

COMMAND = "dpbench docs"
BLOCK = re.compile(r"(?P<open><!-- generated: (?P<name>[a-z0-9-]+) from (?P<source>[^;\s]+); "
                   r"regenerate with: dpbench docs -->\n)(?P<body>.*?)(?P<close><!-- /generated -->)", re.S)
DATA_FOLDER = Path("docs") / "data"


def documents(root: Path) -> list[Path]:
    """The files that may hold generated blocks: README.md and docs/*.md."""
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.is_file()]


# ------------------------------------------------------------------------------------------ renderers
def _milliseconds(seconds: Optional[float]) -> str:
    return MISSING if seconds is None else f"{seconds * 1000:.0f}"


def _model_label(result: Scaling, index: int) -> str:
    model, params = result.sizes[index]
    return f"{model.preset or model.label} ({format_count(params)})"


def render_scaling(profile: Profile) -> str:
    """DP step time (× the non-private step) and DP total peak memory (× full fine-tuning's) per model
    size and method, for every method and size the profile holds."""
    result = scaling(profile)
    if result is None:  # one model size: the plain profile table
        return markdown_table(profile_table(profile, "profile"))
    full = FULL_FINE_TUNING if FULL_FINE_TUNING in result.methods else None
    times, memories = [], []
    for index in range(len(result.sizes)):
        label = _model_label(result, index)
        times.append([label, *(f"{_milliseconds(result.series(m, 'dp', 'step_time_s')[index])} "
                               f"({format_ratio(result.ratios(m, 'step_time_s')[index])})" for m in result.methods)])
        full_memory = result.series(full, "dp", "total_peak_memory_bytes")[index] if full else None
        memories.append([label, *(_memory_cell(result.series(m, "dp", "total_peak_memory_bytes")[index], full_memory,
                                               m != full) for m in result.methods)])
    time_table = Table([f"preset (params), batch {result.batch}", *(f"{m} DP ms (× non-private)" for m in result.methods)],
                       times)
    against = f" (× {full})" if full else ""
    memory_table = Table([f"preset (params), batch {result.batch}",
                          *(f"{m} DP total peak{against if m != full else ''}" for m in result.methods)], memories)
    return markdown_table(time_table) + "\n\n" + markdown_table(memory_table)


def _memory_cell(value: Optional[float], full: Optional[float], compare: bool) -> str:
    text = format_bytes(value)
    return f"{text} ({format_ratio(ratio(value, full))})" if compare and full else text


def render_crossover(profile: Profile) -> str:
    """From which model size each adapter method's DP cost stays below full fine-tuning's."""
    result = scaling(profile)
    rows = crossovers(result) if result else None
    if not rows:
        return "(no crossover: the profile measures one model size, or no full fine-tuning)"
    def cost(what: str, where: str) -> str:
        return f"{what}: {where}" if where.startswith("not below") else f"below full's {what} {where}"

    return "\n".join(f"- {method}: below full fine-tuning's DP step time and DP total peak memory {time}." if time == memory
                     else f"- {method}: {cost('DP step time', time)}; {cost('DP total peak memory', memory)}."
                     for method, time, memory in rows)


def render_dp_overhead(baseline: DpOverheadBaseline) -> str:
    rows = [[method, _milliseconds(m.nonprivate_step_time_s), _milliseconds(m.dp_step_time_s), format_ratio(m.ratio),
             MISSING if m.target is None else f"≤ {format_number(m.target)}×"] for method, m in baseline.methods.items()]
    return markdown_table(Table(["method", "non-private ms", "DP ms", "DP / non-private", "target"], rows))


def _estimate_text(estimate: Optional[Estimate]) -> str:
    if estimate is None:
        return MISSING
    if estimate.low is None or estimate.high is None:
        return format_number(estimate.mean, 3)  # one seed: the single run's value
    return format_interval(Interval(estimate.mean, estimate.low, estimate.high, estimate.n, None))


def render_results(summary: ResultsSummary) -> str:
    """Accuracy per method and ε; then FID at the largest finite ε, trainable parameters, DP throughput
    and memory — each column only where the summary holds it."""
    cells = {(c.method_label, c.epsilon): c for c in summary.cells}
    epsilons = sorted({c.epsilon for c in summary.cells}, key=epsilon_order)
    fid_eps = max((c.epsilon for c in summary.cells if c.fid and math.isfinite(c.epsilon)), default=None)
    at = f" at ε = {display_epsilon(summary.cost_epsilon)}" if summary.cost_epsilon is not None else ""
    costs = [(header, field, fmt) for header, field, fmt in (
        ("trainable params", "trainable_params", lambda v: f"{v:,}"),
        (f"DP ex/s{at}", "dp_examples_per_s", lambda v: f"{v:.0f}"),
        (f"DP total peak memory{at}", "dp_total_peak_memory_bytes", format_bytes))
        if any(getattr(m, field) is not None for m in summary.methods)]

    def estimate(method: str, eps: Optional[float], metric: str) -> str:
        return _estimate_text(getattr(cells.get((method, eps)), metric, None))

    headers = ["method", *(f"ε = {format_epsilon_cell(eps)}" for eps in epsilons)]
    headers += [f"FID at ε = {display_epsilon(fid_eps)}"] if fid_eps is not None else []
    rows = []
    for m in summary.methods:
        row = [m.method_label, *(estimate(m.method_label, eps, "downstream_accuracy") for eps in epsilons)]
        row += [estimate(m.method_label, fid_eps, "fid")] if fid_eps is not None else []
        rows.append(row + [MISSING if getattr(m, field) is None else fmt(getattr(m, field)) for _, field, fmt in costs])
    return markdown_table(Table(headers + [header for header, _, _ in costs], rows))


def render_baselines(summary: ResultsSummary) -> str:
    return (f"Pretrained model before fine-tuning: accuracy {format_number(summary.pretrained_accuracy, 3)}, "
            f"FID {format_number(summary.pretrained_fid, 3)}; a classifier trained on the real private images: "
            f"{format_number(summary.real_data_accuracy, 3)}.")


@dataclass(frozen=True)
class Renderer:
    reads: type
    render: Callable[[object], str]


RENDERERS = {
    "scaling": Renderer(Profile, render_scaling),
    "scaling-crossover": Renderer(Profile, render_crossover),
    "dp-overhead": Renderer(DpOverheadBaseline, render_dp_overhead),
    "results-table": Renderer(ResultsSummary, render_results),
    "results-baselines": Renderer(ResultsSummary, render_baselines),
}


# ------------------------------------------------------------------------------------------ documents
def _render_block(root: Path, where: str, name: str, source: str) -> str:
    renderer = RENDERERS.get(name)
    if renderer is None:
        raise UserError(f"{where}: generated block {name!r} is unknown — use one of {', '.join(RENDERERS)}")
    path = root / source
    if not path.is_file():
        raise UserError(f"{where}: generated block {name!r} reads {source}, which does not exist — commit the data "
                        "file or correct the marker")
    return "\n" + renderer.render(read_model(path, renderer.reads)) + "\n\n"


def update_documents(root: str | os.PathLike, check: bool = False) -> list[str]:
    """Regenerate every block of README.md and docs/*.md under ``root`` from its data file. Returns the
    blocks ("FILE:LINE NAME from SOURCE") whose text differed; with ``check`` nothing is written."""
    root = Path(root)
    if not (root / "README.md").is_file():
        raise UserError(f"--root: {root} has no README.md — run from the repository root or pass --root DIR")
    differing = []
    for path in documents(root):
        text = path.read_text(encoding="utf-8")

        def regenerate(match: re.Match) -> str:
            line = text.count("\n", 0, match.start()) + 1
            where = f"{path.relative_to(root)}:{line}"
            body = _render_block(root, where, match["name"], match["source"])
            if body != match["body"]:
                differing.append(f"{where} {match['name']} from {match['source']}")
            return match["open"] + body + match["close"]

        updated = BLOCK.sub(regenerate, text)
        if updated != text and not check:
            write_bytes_atomic(path, updated.encode("utf-8"), inside=root)
    return differing


# ------------------------------------------------------------------------------------------ summaries
def _estimate(interval: Optional[Interval]) -> Optional[Estimate]:
    return None if interval is None else Estimate(mean=interval.mean, low=interval.low, high=interval.high, n=interval.n)


def _mean(value: Optional[float], integer: bool = False):
    return None if value is None else (round(value) if integer else value)


def summarize_grid(grid: ResultGrid) -> ResultsSummary:
    """Per cell the accuracy and FID over seeds; per method its parameters and, at the largest finite ε,
    the DP runs' throughput and total peak memory."""
    cost_eps = max(grid.finite_epsilons, default=None)
    cells = [SummaryCell(method_label=m, epsilon=eps, downstream_accuracy=_estimate(interval_of(runs, "downstream_accuracy")),
                         fid=_estimate(interval_of(runs, "fid")))
             for m in grid.methods for eps in grid.epsilons if (runs := grid.cell(m, eps))]
    methods = []
    for m in grid.methods:
        dp_runs = grid.cell(m, cost_eps) if cost_eps is not None else []
        methods.append(SummaryMethod(
            method_label=m, trainable_params=_mean(mean_of([r for r in grid.runs if r.method_label == m],
                                                           "trainable_params"), integer=True),
            dp_examples_per_s=_mean(mean_of(dp_runs, "throughput_examples_per_s")),
            dp_total_peak_memory_bytes=_mean(mean_of(dp_runs, "total_peak_memory_bytes"), integer=True)))
    notes = " ".join(note for note in [seeded_noise_warning(grid)] if note)
    baselines = grid.baselines
    return ResultsSummary(
        suite=grid.suite, cost_epsilon=cost_eps, cells=cells, methods=methods,
        provenance=f"`{COMMAND} --from-results {grid.results_dir}` over {len(grid.runs)} finished runs"
                   + (f" ({len(grid.failed)} failed runs left out)" if grid.failed else "") + (f". {notes}" if notes else ""),
        device=format_distinct(r.device for r in grid.runs), git_sha=format_distinct(r.git_sha for r in grid.runs),
        versions=grid.runs[0].versions if grid.runs else {},
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        pretrained_accuracy=baselines.pretrained_accuracy if baselines else None,
        pretrained_fid=baselines.pretrained_fid if baselines else None,
        real_data_accuracy=baselines.real_data_accuracy if baselines else None)


def summarize_results(results_dir: str | os.PathLike, name: str, root: str | os.PathLike) -> Path:
    """Write ``docs/data/<name>-summary.json`` under ``root`` from a suite's results folder."""
    folder = Path(root) / DATA_FOLDER
    path = folder / f"{check_name(name, '--name')}-summary.json"
    return write_model(path, summarize_grid(load_grid(results_dir)), inside=folder)
