"""Shared helpers of the report and the regression check: result frames, DP/non-private pairs,
Pareto fronts and plain-text number formatting. Everything here reads result records only."""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

# Methods in the order the report shows them; unknown methods follow alphabetically.
METHOD_ORDER = ("full", "lora", "loda", "bias", "attention")

NUMERIC_KEYS = (
    "seed", "epsilon", "delta", "epsilon_spent", "noise_multiplier", "sample_rate", "steps",
    "expected_batch_size", "physical_batch_size", "max_grad_norm", "noise_multiplicity",
    "trainable_params", "total_params", "downstream_accuracy", "downstream_accuracy_std", "fid",
    "fid_num_samples", "precision", "recall", "peak_memory_bytes", "nvml_peak_memory_bytes",
    "throughput_examples_per_s", "step_time_s", "train_seconds", "sample_seconds", "eval_seconds",
    "final_loss",
)


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def as_float(value: Any) -> float | None:
    """A finite-or-infinite float, or None for null / NaN / non-numbers."""
    if isinstance(value, bool) or is_missing(value):
        return None
    if isinstance(value, str) and value.strip().lower() in ("inf", "infinity"):
        return math.inf
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def method_sort_key(label: str, method: str | None = None) -> tuple:
    base = method if method in METHOD_ORDER else label
    rank = METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)
    return (rank, str(label))


def ordered_methods(records: Iterable[dict]) -> list[str]:
    seen: dict[str, str | None] = {}
    for r in records:
        label = str(r.get("method_label") or r.get("method") or "?")
        seen.setdefault(label, r.get("method"))
    return sorted(seen, key=lambda label: method_sort_key(label, seen[label]))


def method_label(record: dict) -> str:
    return str(record.get("method_label") or record.get("method") or "?")


def records_frame(records: Sequence[dict]) -> pd.DataFrame:
    """One row per run; numeric columns are floats (NaN where null), epsilon is inf for the reference."""
    rows = []
    for r in records:
        row = {"run_id": r.get("run_id"), "method": r.get("method"), "method_label": method_label(r),
               "memory_kind": r.get("memory_kind"), "status": r.get("status")}
        for key in NUMERIC_KEYS:
            value = as_float(r.get(key))
            row[key] = np.nan if value is None else value
        if math.isnan(row["epsilon"]):
            row["epsilon"] = math.inf  # results.parse_epsilon: a missing epsilon is the non-private reference
        rows.append(row)
    columns = ["run_id", "method", "method_label", "memory_kind", "status", *NUMERIC_KEYS]
    return pd.DataFrame(rows, columns=columns)


def aggregate(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """mean, std (0 for a single seed) and count of ``column`` per (method_label, epsilon), nulls dropped."""
    sub = df[["method_label", "epsilon", column]].dropna(subset=[column])
    if sub.empty:
        return pd.DataFrame(columns=["method_label", "epsilon", "mean", "std", "n"])
    grouped = sub.groupby(["method_label", "epsilon"], sort=False)[column]
    out = grouped.agg(["mean", "std", "count"]).reset_index().rename(columns={"count": "n"})
    out["std"] = out["std"].fillna(0.0)
    return out


def dp_overhead_pairs(records: Sequence[dict]) -> list[dict]:
    """For every DP run (finite ε), its ratios to the ε=inf run of the same method label and seed
    (and suite): step_time_s(DP)/step_time_s(inf) and peak_memory_bytes(DP)/peak_memory_bytes(inf).
    A ratio is None where either value is missing; runs without a reference are left out."""
    reference: dict[tuple, dict] = {}
    for r in records:
        eps = as_float(r.get("epsilon"))
        if eps is None or math.isinf(eps):
            reference.setdefault((r.get("suite"), method_label(r), r.get("seed")), r)
    pairs = []
    for r in records:
        eps = as_float(r.get("epsilon"))
        if eps is None or math.isinf(eps):
            continue
        ref = reference.get((r.get("suite"), method_label(r), r.get("seed")))
        if ref is None:
            continue
        pairs.append({
            "suite": r.get("suite"), "method_label": method_label(r), "epsilon": eps, "seed": r.get("seed"),
            "run_id": r.get("run_id"), "reference_run_id": ref.get("run_id"),
            "step_time_ratio": ratio(r.get("step_time_s"), ref.get("step_time_s")),
            "peak_memory_ratio": ratio(r.get("peak_memory_bytes"), ref.get("peak_memory_bytes")),
        })
    return pairs


def ratio(numerator: Any, denominator: Any) -> float | None:
    a, b = as_float(numerator), as_float(denominator)
    if a is None or b is None or b == 0 or math.isinf(a) or math.isinf(b):
        return None
    return a / b


def mean_or_none(values: Iterable[Any]) -> float | None:
    vals = [v for v in (as_float(x) for x in values) if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def pareto_mask(cost: Sequence[float], utility: Sequence[float], cost_lower_is_better: bool = True) -> list[bool]:
    """True for points no other point beats: utility at least as high and cost at least as good, one strictly."""
    pts = [(c if cost_lower_is_better else -c, -u) for c, u in zip(cost, utility)]  # both: lower is better
    out = []
    for i, (c, u) in enumerate(pts):
        dominated = any(
            (c2 <= c and u2 <= u) and (c2 < c or u2 < u) for j, (c2, u2) in enumerate(pts) if j != i
        )
        out.append(not dominated)
    return out


# ---------------------------------------------------------------------------------------------- format

def fmt_epsilon(eps: Any) -> str:
    value = as_float(eps)
    if value is None or math.isinf(value):
        return "∞"
    return f"{value:g}"


def fmt_number(value: Any, digits: int = 4) -> str:
    """A table cell: '—' for missing, exact integers, ``digits`` significant digits for other floats."""
    if isinstance(value, bool):
        return str(value).lower()
    if is_missing(value):
        return "—"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt_number(v, digits) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt_number(v, digits)}" for k, v in value.items())
    return str(value)


def fmt_mean_std(mean: Any, std: Any, n: int | None = None, digits: int = 4) -> str:
    if is_missing(mean):
        return "—"
    text = fmt_number(float(mean), digits)
    if n is not None and n > 1 and not is_missing(std):
        text += f" ± {float(std):.2g}"
    return text


def fmt_bytes(value: Any) -> str:
    v = as_float(value)
    if v is None:
        return "—"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(v) >= scale:
            return f"{v / scale:.1f} {unit}"
    return f"{v:.0f} B"


def fmt_ratio(value: Any) -> str:
    v = as_float(value)
    return "—" if v is None else f"{v:.3g}×"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table (cells are str()-ed; '|' and newlines are escaped)."""
    def cell(value: Any) -> str:
        text = value if isinstance(value, str) else fmt_number(value)
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ") or " "

    head = [cell(h) for h in headers]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width plain-text table for terminals."""
    cells = [[str(h) for h in headers]] + [[v if isinstance(v, str) else fmt_number(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cells[0], widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells[1:]]
    return "\n".join(lines)
