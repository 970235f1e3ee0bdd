"""The suite report: ``index.html`` + ``report.md`` + PNG figures, built from result files alone.

Inputs, all inside one suite's results directory (see :mod:`dpbench.results`): ``runs/*/result.json``,
``baselines.json``, ``profile*.json``, ``runs/*/audit*.json`` and the sample grids they name. Nothing is
recomputed: every number is one of those files' numbers or a mean, interval, difference or ratio of
them. What each section shows and how to read it: docs/report.md.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Optional

from dpbench.reporting.cost_sections import efficiency_section, pareto_section, profiles_section
from dpbench.reporting.document import Document
from dpbench.reporting.files import OutputFolder
from dpbench.reporting.grid import load_grid
from dpbench.reporting.sections import (
    ReportContext, audits_section, baselines_section, headline_section, per_class_section, privacy_banner,
    privacy_section, provenance_table, runs_section, samples_section, utility_section)
from dpbench.results import load_audits, load_profiles

SECTIONS = (privacy_banner, headline_section, privacy_section, utility_section, per_class_section, samples_section,
            efficiency_section, pareto_section, profiles_section, audits_section, runs_section, baselines_section)


def build_report(results_dir: str | os.PathLike, out_dir: Optional[str | os.PathLike] = None) -> Path:
    """Write the report of one suite's results directory into ``out_dir`` (default ``<results_dir>/report/``,
    as the command line does: the report stays inside the folder it is built from) and return the path of
    its ``index.html``. Raises
    :class:`~dpbench.errors.UserError` when the directory is missing or holds no run."""
    grid = load_grid(results_dir)
    out = Path(out_dir) if out_dir is not None else Path(results_dir) / "report"
    ctx = ReportContext(grid, load_profiles(results_dir), load_audits(results_dir), OutputFolder(out))
    doc = Document(f"dpbench report: {grid.suite}")
    for section in SECTIONS:
        section(doc, ctx)
    footer = provenance_table(ctx, datetime.now(timezone.utc).isoformat(timespec="seconds"), _version())
    ctx.output.write("report.md", doc.render_markdown(footer).encode())
    return out / ctx.output.write("index.html", doc.render_html(footer).encode())


def _version() -> str:
    try:
        return metadata.version("dpbench")
    except metadata.PackageNotFoundError:  # a source checkout that was never installed
        return "unknown"
