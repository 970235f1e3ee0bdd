"""`dpbench export`: every run of one or more suites' results as one table, for pandas, spreadsheets and
notebooks — built from the ``result.json`` files alone, with pandas.

One row per run (finished and failed; ``status`` says which), one column per documented field of
:class:`~dpbench.results.RunResult` (docs/results.md). Nested fields are flattened with dots:
``clipping.mode``, ``clipping_diagnostics.signal_to_noise``, ``memory_breakdown.per_sample_gradients``,
``gpu_phases.train.energy_joules``, ``versions.torch``, ``method_options.rank``; lists
(``downstream_accuracies``, ``per_class_accuracy``) stay lists in JSON Lines and Parquet and are JSON text in
CSV. ``results_dir`` names the suite folder each row came from. ε is a float (``inf`` for the non-private
reference) in CSV and Parquet and, as in the result files, the string ``"inf"`` in JSON Lines.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any, Optional

from dpbench.errors import UserError
from dpbench.results import iter_result_dirs, load_results, write_bytes_atomic

FORMATS = ("csv", "jsonl", "parquet")


def _flatten(prefix: str, value: Any, row: dict) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, row)
    else:
        row[prefix] = value


def run_rows(results: str | os.PathLike) -> list[dict]:
    """One flat dict per run below ``results`` (a suite's results folder, or a folder of them)."""
    folders = list(iter_result_dirs(results))
    if not folders:
        raise UserError(f"{results}: no suite results here (expected runs/<run_id>/result.json, or folders that "
                        "hold them); pass results/<suite>/ or results/")
    rows = []
    for folder in folders:
        for run in load_results(folder):
            row = {"results_dir": str(folder)}
            _flatten("", run.model_dump(mode="python"), row)
            row["epsilon"] = run.epsilon  # a float here; the result files' "inf" is restored for JSON Lines
            rows.append(row)
    if not rows:
        raise UserError(f"{results}: no runs to export (no runs/<run_id>/result.json); run the suite first")
    return rows


def runs_frame(results: str | os.PathLike):
    """The runs as a pandas DataFrame, columns in the result files' field order."""
    import pandas as pd

    rows = run_rows(results)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return pd.DataFrame(rows, columns=columns)


def export_bytes(results: str | os.PathLike, fmt: str) -> bytes:
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    frame = runs_frame(results)
    if fmt == "csv":
        return _json_text(frame, _has_lists).to_csv(index=False).encode()
    if fmt == "jsonl":
        frame = frame.astype(object).where(frame.notna(), None)
        frame["epsilon"] = [("inf" if math.isinf(e) else e) for e in frame["epsilon"]]
        return frame.to_json(orient="records", lines=True, force_ascii=False).encode()
    return _parquet(frame)


def _json_text(frame, needs_text):
    """Columns a format cannot hold as they are (lists in CSV; mixed types in Parquet) as JSON text."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype == object and needs_text(frame[column]):
            frame[column] = frame[column].map(lambda v: None if v is None else json.dumps(v))
    return frame


def _present(column) -> list:
    return [v for v in column if v is not None and not (isinstance(v, float) and math.isnan(v))]


def _has_lists(column) -> bool:
    return any(isinstance(v, (list, dict)) for v in _present(column))


def _mixed_types(column) -> bool:
    return len({type(v) for v in _present(column)}) > 1


def _parquet(frame) -> bytes:
    try:
        import pyarrow  # noqa: F401  (pandas' Parquet engine)
    except ImportError:
        raise UserError("--format parquet needs pyarrow, which is not installed: pip install 'dpbench[parquet]' "
                        "(or use --format csv or jsonl)") from None
    buffer = io.BytesIO()
    _json_text(frame, _mixed_types).to_parquet(buffer, index=False)
    return buffer.getvalue()


def export_results(results: str | os.PathLike, fmt: str = "csv",
                   out: Optional[str | os.PathLike] = None) -> Optional[Path]:
    """Write the export to ``out`` (atomically) and return its path; without ``out``, CSV and JSON Lines go to
    standard output (None is returned) and Parquet, which is binary, is refused."""
    data = export_bytes(results, fmt)
    if out is None:
        if fmt == "parquet":
            raise UserError("--format parquet writes a binary file: pass --out FILE.parquet")
        import sys

        sys.stdout.write(data.decode())
        sys.stdout.flush()
        return None
    return write_bytes_atomic(out, data)
