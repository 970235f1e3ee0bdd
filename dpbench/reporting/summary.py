"""The terminal summary that `dpbench run` and `dpbench report` print: per method and ε, the mean
accuracy with its 95% interval over seeds, FID, ε spent, total peak memory, throughput and trainable
parameters, then the baselines and anything that must not be overlooked (seeded noise, failed runs,
mixed devices, a single seed)."""

from __future__ import annotations

import os

from dpbench.reporting.findings import seeded_noise_warning, single_seed_note, smoke_warning
from dpbench.reporting.formatting import format_bytes, format_number
from dpbench.reporting.grid import ResultGrid, load_grid
from dpbench.reporting.tables import CellFunction, interval_cell, mean_cell, method_epsilon_table, text_table


def summary_columns() -> dict[str, CellFunction]:
    """The summary's columns; the report's utility table starts from the same ones."""
    return {
        "accuracy [95% CI]": interval_cell("downstream_accuracy"),
        "FID [95% CI]": interval_cell("fid"),
        "ε spent": mean_cell("epsilon_spent"),
        "total peak memory": mean_cell("total_peak_memory_bytes", format_bytes),
        "examples/s [95% CI]": interval_cell("throughput_examples_per_s"),
        "trainable params": mean_cell("trainable_params"),
    }


def baselines_line(grid: ResultGrid) -> str:
    b = grid.baselines
    if b is None:
        return "baselines: none recorded (baselines.json)"
    return (f"baselines (non-private references): pretrained model accuracy {format_number(b.pretrained_accuracy)}, "
            f"FID {format_number(b.pretrained_fid)}; classifier trained on real data "
            f"{format_number(b.real_data_accuracy)}")


def format_summary(results_dir: str | os.PathLike) -> str:
    grid = load_grid(results_dir)
    table = method_epsilon_table(grid, summary_columns())
    lines = [f"{grid.suite}: {len(grid.runs)} finished runs" + (f", {len(grid.failed)} failed" if grid.failed else ""),
             text_table(table.headers, table.rows), baselines_line(grid)]
    notes = [smoke_warning(grid), seeded_noise_warning(grid), *table.warnings, single_seed_note(grid)]
    if grid.failed:
        notes.append("failed runs (left out of every statistic): " + ", ".join(r.run_id for r in grid.failed))
    lines += [f"WARNING: {note}" for note in notes if note]
    return "\n".join(lines)
