"""The report's cost sections: efficiency, the Pareto view and the profiles (one function each).

Memory is the total peak of training (weights + optimizer + EMA + activations + per-sample state),
shown beside its analytic parts; the cost of privacy is each DP run divided by the ε = ∞ run of the
same method and seed, which cancels the machine's speed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from dpbench.reporting.document import Document, Picture
from dpbench.reporting.figures import MiB, Series, efficiency_figure, pareto_figure, profile_figure
from dpbench.reporting.files import safe_file_name
from dpbench.reporting.findings import pareto_points
from dpbench.reporting.formatting import (
    MISSING, format_bytes, format_count, format_distinct, format_number, format_ratio)
from dpbench.reporting.grid import mean_of
from dpbench.reporting.profiles import (
    CROSSOVER_FIELDS, MODES, Scaling, crossovers, max_batch_rows, profile_methods, profile_pairs, profile_table,
    scaling)
from dpbench.reporting.sections import ReportContext
from dpbench.reporting.tables import Table, interval_cell, mean_cell, method_epsilon_table
from dpbench.results import Profile, display_epsilon


def efficiency_section(doc: Document, ctx: ReportContext) -> None:
    grid = ctx.grid
    doc.section("efficiency", "Efficiency")
    ctx.add_figure(doc, "efficiency.png", efficiency_figure(grid, ctx.styles), "memory and throughput",
                   "Total peak memory of training per method (its colour), DP and ε = ∞ (hatched), stacked by its "
                   "analytic parts (shades); the top part is what the measured total leaves for activations and "
                   "the rest. Throughput per method and ε with 95% intervals over seeds (log scale: never below 0).",
                   "No run recorded total peak memory or throughput (results written before dpbench measured "
                   "them): no efficiency figure.")
    columns = {
        "total peak memory": mean_cell("total_peak_memory_bytes", format_bytes),
        "one step's peak": mean_cell("peak_memory_bytes", format_bytes),
        "memory kind": lambda runs: format_distinct(r.memory_kind for r in runs),
        "examples/s [95% CI]": interval_cell("throughput_examples_per_s"),
        "step time (s)": mean_cell("step_time_s"),
        "trainable params": mean_cell("trainable_params"),
        "train time (s)": mean_cell("train_seconds"),
    }
    if any(r.energy_joules is not None for r in grid.runs):  # NVML measured it: GPU runs only
        columns["GPU energy per run (kJ)"] = mean_cell(lambda r: r.energy_joules / 1000 if r.energy_joules is not None
                                                       else None)
    doc.table(method_epsilon_table(grid, columns, "efficiency"))
    doc.subsection("Cost of privacy: DP / non-private ratios")
    if not grid.reference_pairs():
        doc.paragraph("No DP run has an ε = ∞ run of the same method and seed to compare with.", "note")
        return
    doc.paragraph("Each DP run divided by the ε = ∞ run of the same method and seed, then over seeds.", "note")
    doc.table(method_epsilon_table(grid, {
        "step time DP / non-private [95% CI]": interval_cell(grid.dp_ratio("step_time_s"), "log"),
        "total peak memory DP / non-private": mean_cell(grid.dp_ratio("total_peak_memory_bytes"), format_ratio),
        "throughput DP / non-private [95% CI]": interval_cell(grid.dp_ratio("throughput_examples_per_s"), "log"),
    }, "dp-ratios", epsilons=grid.finite_epsilons))


def pareto_section(doc: Document, ctx: ReportContext) -> None:
    grid = ctx.grid
    doc.section("pareto", "Pareto view")
    ctx.add_figure(doc, "pareto.png", pareto_figure(grid, ctx.styles), "Pareto view",
                   "Downstream accuracy against total peak memory (top) and throughput (bottom), one panel per "
                   "finite ε, one marker per method (means over seeds); circled: Pareto-optimal.",
                   "No DP run recorded both an accuracy and a cost: no Pareto figure.")
    rows = []
    for eps in grid.finite_epsilons:
        memory = {p.method: p.optimal for p in pareto_points(grid, eps, "total_peak_memory_bytes", True)}
        speed = {p.method: p.optimal for p in pareto_points(grid, eps, "throughput_examples_per_s", False)}
        for method in grid.methods:
            runs = grid.cell(method, eps)
            if runs:
                rows.append([display_epsilon(eps), method, format_number(mean_of(runs, "downstream_accuracy")),
                             format_bytes(mean_of(runs, "total_peak_memory_bytes")),
                             format_number(mean_of(runs, "throughput_examples_per_s")),
                             _yes_no(memory.get(method)), _yes_no(speed.get(method))])
    doc.table(Table(["ε", "method", "accuracy", "total peak memory", "examples/s", "Pareto-optimal (memory)",
                     "Pareto-optimal (throughput)"], rows, "pareto"))


def _yes_no(flag) -> str:
    return MISSING if flag is None else ("yes" if flag else "no")


def profiles_section(doc: Document, ctx: ReportContext) -> None:
    if not ctx.profiles:
        return
    doc.section("profiles", "Profiles: DP and non-private steps side by side")
    doc.paragraph("Measured by `dpbench profile`: DP and non-private steps of each method in the same process, "
                  "so their ratio does not depend on the machine's speed.", "note")
    for path, profile in ctx.profiles:
        stem = safe_file_name(Path(path).stem)
        doc.subsection(f"{Path(path).name}: {profile.source} on {profile.device or 'unknown device'}")
        doc.table(profile_table(profile, f"profile-{stem}"))
        if profile.max_batch_size:
            doc.table(Table(["method", "max batch (DP)", "max batch (non-private)"], max_batch_rows(profile),
                            f"max-batch-{stem}"))
        result = scaling(profile)
        if result is not None:
            _scaling(doc, ctx, result, stem)
        else:
            doc.figure(Picture(ctx.save_figure(f"{stem}.png", _batch_figure(profile, ctx.styles)), f"profile {stem}",
                               "Step time and total peak memory against physical batch size; solid: DP, dashed: "
                               "non-private."))


# (field, name, unit, scale to that unit)
PROFILE_PANELS = (("step_time_s", "step time", "s", 1.0),
                  ("total_peak_memory_bytes", "total peak memory", "MiB", 1 / MiB))


def _cost_panels(methods: Sequence[str], x: Callable[[str], list], y: Callable[[str, str, str], list]) -> list:
    """Step time and total peak memory panels: one DP and one non-private series per method."""
    return [(f"{name} ({unit})", [Series(m, mode, x(m), [None if v is None else v * scale for v in y(m, mode, field)])
                                  for m in methods for mode in MODES])
            for field, name, unit, scale in PROFILE_PANELS]


def _batch_figure(profile: Profile, styles):
    pairs = profile_pairs(profile)
    methods = profile_methods(profile)
    panels = _cost_panels(methods, lambda m: [p.batch for p in pairs if p.method_label == m],
                          lambda m, mode, field: [p.value(mode, field) for p in pairs if p.method_label == m])
    batches = sorted({p.batch for p in pairs})
    return profile_figure(panels, "physical batch size (log scale)", [(b, str(b)) for b in batches], methods, styles)


def _scaling(doc: Document, ctx: ReportContext, result: Scaling, stem: str) -> None:
    doc.subsection(f"Scaling with model size (batch {result.batch})")
    params = [p for _, p in result.sizes]
    ticks = [(p, f"{model.label} ({format_count(p)})") for model, p in result.sizes]
    panels = _cost_panels(result.methods, lambda m: params, result.series)
    panels += [(f"{name}: DP / non-private", [Series(m, "dp", params, result.ratios(m, field)) for m in result.methods])
               for field, name, _, _ in PROFILE_PANELS]
    doc.figure(Picture(ctx.save_figure(f"{stem}-scaling.png", profile_figure(
        panels, "model size (total parameters, log scale)", ticks, result.methods, ctx.styles)), f"scaling {stem}",
        "DP (solid) and non-private (dashed) step time and total peak memory against model size per method, "
        "then their DP / non-private ratios."))
    rows = crossovers(result)
    if rows is None:
        doc.paragraph("No full fine-tuning method in this profile: no crossover to report.", "note")
        return
    doc.paragraph("Crossover: the smallest measured model size from which each method's DP cost stays below "
                  "full fine-tuning's DP cost.", "note")
    doc.table(Table(["method", *(f"{label} below full's from" for _, label in CROSSOVER_FIELDS)], rows,
                    f"crossover-{stem}"))
