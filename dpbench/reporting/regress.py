"""Performance regression checks: compare the peak memory and the DP throughput cost of a current set of
results or profiles against a baseline set.

Either side is a profile JSON file (``kind: dpbench-profile``), a suite results directory (with ``runs/``),
or a folder of those. Measurements are matched per (method_label, setting), the setting being ε for
results and (mode, physical batch size) for profiles:

* ``peak_memory_bytes``: worse when current > baseline × (1 + tolerance).
* ``dp_step_time_ratio``: DP step time / non-private step time measured in the same suite (the ε = ∞ run
  of the same method and seed) or the same profile (the nonprivate entry of the same method and batch
  size); worse when current ratio > baseline ratio × (1 + tolerance). A slower machine slows DP and
  non-private alike and leaves the ratio unchanged, so it does not read as a regression.
* ``throughput_examples_per_s``: only where a side has no non-private reference; worse when
  current < baseline / (1 + tolerance).

"better" is the mirror image; "missing" marks a measurement present on one side only (or not comparable,
e.g. different memory kinds). Missing rows do not fail the check; any "worse" row does.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpbench.errors import UserError
from dpbench.reporting.frames import (
    as_float, dp_overhead_pairs, fmt_bytes, fmt_epsilon, mean_or_none, method_label, method_sort_key,
    text_table,
)
from dpbench.reporting.profile_files import find_profiles, is_profile_file, load_profile, profile_pairs
from dpbench.results import iter_result_dirs, load_results

MEMORY = "peak_memory_bytes"
RATIO = "dp_step_time_ratio"
THROUGHPUT = "throughput_examples_per_s"
LOWER_IS_BETTER = {MEMORY: True, RATIO: True, THROUGHPUT: False}
ROW_KEYS = ("method", "setting", "metric", "baseline", "current", "change", "status", "note")


@dataclass
class _Measure:
    memory: float | None = None
    memory_kind: str | None = None
    ratio: float | None = None
    throughput: float | None = None
    reference: bool = False  # the non-private reference itself: no throughput comparison
    method: str | None = None


@dataclass
class _Source:
    kind: str  # "results" | "profile"
    group: str
    measures: dict[tuple, _Measure] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ loading

def _results_measures(records: list[dict]) -> dict[tuple, _Measure]:
    pairs = dp_overhead_pairs(records)
    cells: dict[tuple, list[dict]] = {}
    for r in records:
        eps = as_float(r.get("epsilon"))
        cells.setdefault((method_label(r), math.inf if eps is None else eps), []).append(r)
    out = {}
    for (label, eps), runs in cells.items():
        kinds = sorted({str(r["memory_kind"]) for r in runs if r.get("memory_kind")})
        ratios = [p["step_time_ratio"] for p in pairs if p["method_label"] == label and p["epsilon"] == eps]
        out[(label, ("eps", eps))] = _Measure(
            memory=mean_or_none(r.get("peak_memory_bytes") for r in runs),
            memory_kind=", ".join(kinds) or None,
            ratio=mean_or_none(ratios),
            throughput=mean_or_none(r.get("throughput_examples_per_s") for r in runs),
            reference=math.isinf(eps),
            method=runs[0].get("method"),
        )
    return out


def _profile_measures(profile: dict) -> dict[tuple, _Measure]:
    ratios = {(p["method_label"], p["physical_batch_size"]): p["step_time_ratio"] for p in profile_pairs(profile)}
    out = {}
    for e in profile["entries"]:
        label, mode, batch = e["method_label"], e["mode"], e["physical_batch_size"]
        out[(label, ("profile", mode, batch))] = _Measure(
            memory=as_float(e.get("peak_memory_bytes")),
            memory_kind=e.get("memory_kind"),
            ratio=ratios.get((label, batch)) if mode == "dp" else None,
            throughput=as_float(e.get("examples_per_s")),
            reference=mode == "nonprivate",
            method=e.get("method"),
        )
    return out


def _collect(path: str | os.PathLike, side: str) -> list[_Source]:
    root = Path(path)
    if not root.exists():
        raise UserError(f"{side} {root} does not exist; pass a profile JSON file, a suite results directory "
                        "or a folder of those")
    if root.is_file():
        profile = load_profile(root)
        return [_Source("profile", root.name, _profile_measures(profile))]
    sources: list[_Source] = []
    suite_dirs = list(iter_result_dirs(root))
    for suite_dir in suite_dirs:
        try:
            records = load_results(suite_dir)
        except ValueError as err:
            raise UserError(f"a result.json under {suite_dir}/runs is not valid JSON ({err}); delete or re-run "
                            "that run") from err
        if records:
            sources.append(_Source("results", suite_dir.name if suite_dir != root else root.resolve().name,
                                   _results_measures(records)))
        for profile in find_profiles(suite_dir, "*.json"):
            sources.append(_Source("profile", _rel(Path(profile["path"]), root), _profile_measures(profile)))
    if root not in suite_dirs:
        for p in sorted(root.glob("*.json")):
            if is_profile_file(p):
                sources.append(_Source("profile", p.name, _profile_measures(load_profile(p))))
    if not sources:
        raise UserError(f"{side} {root} holds no finished runs (runs/<run_id>/result.json) and no profile files "
                        "(kind dpbench-profile); pass a suite results directory or a profile JSON file")
    return sources


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return path.name


def _measures_by_key(sources: list[_Source], normalize: set[str]) -> dict[tuple, _Measure]:
    out: dict[tuple, _Measure] = {}
    for s in sources:
        group = "" if s.kind in normalize else s.group
        for (label, setting), m in s.measures.items():
            out[(s.kind, group, label, setting)] = m
    return out


# ------------------------------------------------------------------------------------------ comparing

def _judge(metric: str, baseline: float, current: float, tolerance: float) -> str:
    if LOWER_IS_BETTER[metric]:
        if current > baseline * (1 + tolerance):
            return "worse"
        if current < baseline / (1 + tolerance):
            return "better"
    else:
        if current < baseline / (1 + tolerance):
            return "worse"
        if current > baseline * (1 + tolerance):
            return "better"
    return "ok"


def _row(label: str, setting: str, metric: str, baseline: float | None, current: float | None, tolerance: float,
         note: str = "") -> dict:
    if baseline is None or current is None:
        status, change = "missing", None
        if not note:
            note = "no baseline value" if baseline is None else "no current value"
    else:
        status = _judge(metric, baseline, current, tolerance)
        change = (current / baseline - 1.0) if baseline else None
    return {"method": label, "setting": setting, "metric": metric, "baseline": baseline, "current": current,
            "change": change, "status": status, "note": note}


def _setting_text(group: str, setting: tuple) -> str:
    if setting[0] == "eps":
        text = f"ε={fmt_epsilon(setting[1])}"
    else:
        text = f"{setting[1]}, batch {setting[2]}"
    return f"{group}: {text}" if group else text


def _setting_order(setting: tuple) -> tuple:
    if setting[0] == "eps":
        return (0, math.isinf(setting[1]), setting[1], 0)
    return (1, setting[1] != "dp", setting[2], 0)


def regress(current: str | os.PathLike, baseline: str | os.PathLike, tolerance: float = 0.15) -> tuple[list[dict], bool]:
    """Compare ``current`` against ``baseline`` (profile files, suite results directories or folders of
    those). Returns the rows (keys: method, setting, metric, baseline, current, change, status, note;
    change = current / baseline - 1) and ok = no row is "worse"."""
    tol = as_float(tolerance)
    if tol is None or not math.isfinite(tol) or tol < 0:
        raise UserError(f"tolerance must be a number >= 0 (got {tolerance!r}), e.g. 0.15 for 15%")
    cur_sources, base_sources = _collect(current, "current"), _collect(baseline, "baseline")
    normalize = set()
    for kind in ("results", "profile"):
        # One item of a kind on each side: compare them whatever they are called.
        if sum(s.kind == kind for s in cur_sources) == 1 and sum(s.kind == kind for s in base_sources) == 1:
            normalize.add(kind)
    cur, base = _measures_by_key(cur_sources, normalize), _measures_by_key(base_sources, normalize)
    if not set(cur) & set(base):
        raise UserError(f"nothing to compare: current {current} and baseline {baseline} share no method and "
                        "setting (are they results of the same suite, or profiles of the same kind?)")

    def order(key: tuple) -> tuple:
        kind, group, label, setting = key
        m = cur.get(key) or base.get(key)
        return (kind != "results", group, method_sort_key(label, m.method), _setting_order(setting))

    rows = []
    for key in sorted(set(cur) | set(base), key=order):
        _, group, label, setting = key
        c, b = cur.get(key), base.get(key)
        text = _setting_text(group, setting)
        if c is None or b is None:
            only = "baseline" if c is None else "current"
            m = c or b
            rows.append(_row(label, text, MEMORY, b and b.memory, c and c.memory, tol, f"only in {only}"))
            if not m.reference:
                metric = RATIO if m.ratio is not None else THROUGHPUT
                value = m.ratio if metric == RATIO else m.throughput
                rows.append(_row(label, text, metric, value if c is None else None, value if b is None else None,
                                 tol, f"only in {only}"))
            continue
        if b.memory_kind and c.memory_kind and b.memory_kind != c.memory_kind:
            rows.append(_row(label, text, MEMORY, None, None, tol,
                             f"memory kinds differ: baseline {b.memory_kind}, current {c.memory_kind}"))
            rows[-1].update(baseline=b.memory, current=c.memory)
        else:
            rows.append(_row(label, text, MEMORY, b.memory, c.memory, tol))
        if c.reference and b.reference:
            continue  # the non-private reference: its speed is the machine's, not a regression
        if c.ratio is not None and b.ratio is not None:
            rows.append(_row(label, text, RATIO, b.ratio, c.ratio, tol))
        else:
            rows.append(_row(label, text, THROUGHPUT, b.throughput, c.throughput, tol,
                             "no non-private reference on both sides: raw throughput compared"))
    return rows, not any(r["status"] == "worse" for r in rows)


# ------------------------------------------------------------------------------------------ printing

def _fmt_value(metric: str, value: Any) -> str:
    if value is None:
        return "—"
    if metric == MEMORY:
        return fmt_bytes(value)
    if metric == RATIO:
        return f"{value:.3f}×"
    if metric == THROUGHPUT:
        return f"{value:.4g}/s"
    return f"{value:.4g}"


def format_regress_table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table followed by a one-line summary."""
    if not rows:
        return "no measurements to compare"
    with_notes = any(r.get("note") for r in rows)
    headers = ["method", "setting", "metric", "baseline", "current", "change", "status"] + (["note"] if with_notes else [])
    body = []
    for r in rows:
        change = "—" if r.get("change") is None else f"{r['change'] * 100:+.1f}%"
        status = r["status"].upper() if r["status"] == "worse" else r["status"]
        line = [str(r["method"]), str(r["setting"]), str(r["metric"]), _fmt_value(r["metric"], r.get("baseline")),
                _fmt_value(r["metric"], r.get("current")), change, status]
        if with_notes:
            line.append(r.get("note") or "")
        body.append(line)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("worse", "better", "ok", "missing")}
    verdict = "REGRESSION" if counts["worse"] else "no regression"
    summary = f"{verdict}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    return text_table(headers, body) + "\n" + summary
