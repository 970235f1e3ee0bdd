"""Performance regression checks: compare the peak memory and the DP throughput cost of a current set of
results or profiles against a baseline set.

Either side is a profile JSON file (``kind: dpbench-profile``), a suite results directory (with ``runs/``),
or a folder of those. Measurements are matched per (method label, setting), the setting being ε for
results and (mode, physical batch size, model) for profiles:

* memory: ``total_peak_memory_bytes`` when both sides recorded it, else ``peak_memory_bytes`` (the peak
  of one step); worse when current > baseline × (1 + tolerance).
* ``dp_step_time_ratio``: DP step time / non-private step time measured in the same suite (the ε = ∞ run
  of the same method and seed) or the same profile (the non-private entry of the same method, model and
  batch); worse when current > baseline × (1 + tolerance). A slower machine slows DP and non-private
  alike and leaves the ratio unchanged, so it does not read as a regression.
* ``throughput_examples_per_s``: only where a side has no non-private reference; worse when
  current < baseline / (1 + tolerance).

"better" is the mirror image; "missing" marks a measurement present on one side only (or not comparable,
e.g. different memory kinds). Missing rows do not fail the check; any "worse" row does.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from dpbench.errors import UserError
from dpbench.reporting.formatting import MISSING, format_bytes
from dpbench.reporting.grid import ResultGrid, mean_of
from dpbench.reporting.profiles import profile_pairs
from dpbench.reporting.tables import text_table
from dpbench.results import Profile, display_epsilon, is_profile_file, iter_result_dirs, load_results, read_model

TOTAL_MEMORY = "total_peak_memory_bytes"
STEP_MEMORY = "peak_memory_bytes"
RATIO = "dp_step_time_ratio"
THROUGHPUT = "throughput_examples_per_s"
LOWER_IS_BETTER = {TOTAL_MEMORY: True, STEP_MEMORY: True, RATIO: True, THROUGHPUT: False}


@dataclass(frozen=True)
class Measure:
    """One (method, setting) of one side, reduced to what the check compares."""

    order: tuple  # the method's place in its suite or profile
    memory: dict  # TOTAL_MEMORY / STEP_MEMORY -> bytes (None when not recorded)
    memory_kind: Optional[str]
    ratio: Optional[float]
    throughput: Optional[float]
    reference: bool  # the non-private reference itself: its speed is the machine's


@dataclass(frozen=True)
class Source:
    kind: str  # "results" | "profile"
    group: str
    measures: dict  # (method label, setting) -> Measure


# ------------------------------------------------------------------------------------------ loading
def _results_measures(grid: ResultGrid) -> dict:
    ratio_of = grid.dp_ratio("step_time_s")
    out = {}
    for index, method in enumerate(grid.methods):
        for eps in grid.epsilons:
            runs = grid.cell(method, eps)
            if runs:
                out[(method, ("eps", eps))] = Measure(
                    (index,), {f: mean_of(runs, f) for f in (TOTAL_MEMORY, STEP_MEMORY)},
                    ", ".join(sorted({r.memory_kind for r in runs if r.memory_kind})) or None,
                    mean_of(runs, ratio_of), mean_of(runs, THROUGHPUT), math.isinf(eps))
    return out


def _profile_measures(profile: Profile) -> dict:
    order = {m: i for i, m in enumerate(dict.fromkeys(e.method_label for e in profile.entries))}
    out = {}
    for pair in profile_pairs(profile):
        for mode, entry in (("dp", pair.dp), ("nonprivate", pair.nonprivate)):
            if entry is not None:
                setting = ("profile", mode, pair.batch, pair.model.preset or "", pair.model.image_size or 0)
                out[(pair.method_label, setting)] = Measure(
                    (order[pair.method_label],), {f: getattr(entry, f) for f in (TOTAL_MEMORY, STEP_MEMORY)},
                    entry.memory_kind, pair.dp_ratio("step_time_s") if mode == "dp" else None, entry.examples_per_s,
                    mode == "nonprivate")
    return out


def _read_profile(path: Path) -> Profile:
    if not is_profile_file(path):
        raise UserError(f"{path} is not a dpbench profile (expected \"kind\": \"dpbench-profile\"); pass a file "
                        "written by `dpbench profile`, a suite results directory or a folder of those")
    return read_model(path, Profile)


def _collect(path: str | os.PathLike, side: str) -> list[Source]:
    root = Path(path)
    if not root.exists():
        raise UserError(f"{side} {root} does not exist; pass a profile JSON file, a suite results directory "
                        "or a folder of those")
    if root.is_file():
        return [Source("profile", root.name, _profile_measures(_read_profile(root)))]
    sources, suite_dirs = [], list(iter_result_dirs(root))
    for suite_dir in suite_dirs:
        grid = ResultGrid.from_results(suite_dir, load_results(suite_dir))
        if grid.runs:
            sources.append(Source("results", suite_dir.resolve().name, _results_measures(grid)))
    for folder in dict.fromkeys([*suite_dirs, root]):
        for profile_path in sorted(folder.glob("*.json")):
            if is_profile_file(profile_path):
                sources.append(Source("profile", str(profile_path.relative_to(root)),
                                      _profile_measures(_read_profile(profile_path))))
    if not sources:
        raise UserError(f"{side} {root} holds no finished runs (runs/<run_id>/result.json) and no profile files "
                        "(kind dpbench-profile); pass a suite results directory or a profile JSON file")
    return sources


def _by_key(sources: list[Source], unnamed: set[str]) -> dict:
    """(kind, group, method, setting) -> Measure; a kind in ``unnamed`` is matched whatever it is called."""
    return {(s.kind, "" if s.kind in unnamed else s.group, label, setting): measure
            for s in sources for (label, setting), measure in s.measures.items()}


# ------------------------------------------------------------------------------------------ comparing
def _judge(metric: str, baseline: float, current: float, tolerance: float) -> str:
    worse, better = ((current > baseline * (1 + tolerance), current < baseline / (1 + tolerance))
                     if LOWER_IS_BETTER[metric] else
                     (current < baseline / (1 + tolerance), current > baseline * (1 + tolerance)))
    return "worse" if worse else "better" if better else "ok"


def _row(label: str, setting: str, metric: str, baseline: Optional[float], current: Optional[float],
         tolerance: float, note: str = "") -> dict:
    if baseline is None or current is None:
        status, change = "missing", None
        note = note or ("no baseline value" if baseline is None else "no current value")
    else:
        status = _judge(metric, baseline, current, tolerance)
        change = (current / baseline - 1.0) if baseline else None
    return {"method": label, "setting": setting, "metric": metric, "baseline": baseline, "current": current,
            "change": change, "status": status, "note": note}


def _setting_text(group: str, setting: tuple) -> str:
    if setting[0] == "eps":
        text = f"ε={display_epsilon(setting[1])}"
    else:
        _, mode, batch, preset, image_size = setting
        model = " ".join(p for p in (preset, f"{image_size}px" if image_size else "") if p)
        text = f"{mode}, batch {batch}" + (f", {model}" if model else "")
    return f"{group}: {text}" if group else text


def _setting_order(setting: tuple) -> tuple:
    if setting[0] == "eps":
        return (0, math.isinf(setting[1]), setting[1])
    _, mode, batch, preset, image_size = setting
    return (1, preset, image_size, mode != "dp", batch)


def _memory_metric(baseline: Optional[Measure], current: Optional[Measure]) -> str:
    sides = [m for m in (baseline, current) if m is not None]
    return TOTAL_MEMORY if all(m.memory[TOTAL_MEMORY] is not None for m in sides) else STEP_MEMORY


def _compare(label: str, text: str, b: Optional[Measure], c: Optional[Measure], tol: float) -> list[dict]:
    memory = _memory_metric(b, c)
    if c is None or b is None:
        only, m = ("baseline", b) if c is None else ("current", c)
        rows = [_row(label, text, memory, b and b.memory[memory], c and c.memory[memory], tol, f"only in {only}")]
        if not m.reference:
            metric, value = (RATIO, m.ratio) if m.ratio is not None else (THROUGHPUT, m.throughput)
            rows.append(_row(label, text, metric, value if c is None else None, value if b is None else None, tol,
                             f"only in {only}"))
        return rows
    if b.memory_kind and c.memory_kind and b.memory_kind != c.memory_kind:
        rows = [_row(label, text, memory, None, None, tol,
                     f"memory kinds differ: baseline {b.memory_kind}, current {c.memory_kind}")]
        rows[0].update(baseline=b.memory[memory], current=c.memory[memory])
    else:
        rows = [_row(label, text, memory, b.memory[memory], c.memory[memory], tol)]
    if c.reference and b.reference:
        return rows  # the non-private reference: its speed is the machine's, not a regression
    if c.ratio is not None and b.ratio is not None:
        return rows + [_row(label, text, RATIO, b.ratio, c.ratio, tol)]
    return rows + [_row(label, text, THROUGHPUT, b.throughput, c.throughput, tol,
                        "no non-private reference on both sides: raw throughput compared")]


def regress(current: str | os.PathLike, baseline: str | os.PathLike,
            tolerance: float = 0.15) -> tuple[list[dict], bool]:
    """Compare ``current`` against ``baseline`` (profile files, suite results directories or folders of
    those). Returns the rows (keys: method, setting, metric, baseline, current, change, status, note;
    change = current / baseline - 1) and ok = no row is "worse"."""
    if not isinstance(tolerance, (int, float)) or not math.isfinite(tolerance) or tolerance < 0:
        raise UserError(f"tolerance must be a number >= 0 (got {tolerance!r}), e.g. 0.15 for 15%")
    current_sources, baseline_sources = _collect(current, "current"), _collect(baseline, "baseline")
    # One item of a kind on each side: compare them whatever they are called.
    unnamed = {kind for kind in ("results", "profile")
               if [s.kind for s in current_sources].count(kind) == 1 == [s.kind for s in baseline_sources].count(kind)}
    cur, base = _by_key(current_sources, unnamed), _by_key(baseline_sources, unnamed)
    if not set(cur) & set(base):
        raise UserError(f"nothing to compare: current {current} and baseline {baseline} share no method and "
                        "setting (are they results of the same suite, or profiles of the same kind?)")

    def order(key: tuple) -> tuple:
        kind, group, label, setting = key
        return (kind != "results", group, (cur.get(key) or base[key]).order, label, _setting_order(setting))

    rows = []
    for key in sorted(set(cur) | set(base), key=order):
        _, group, label, setting = key
        rows += _compare(label, _setting_text(group, setting), base.get(key), cur.get(key), tolerance)
    return rows, not any(r["status"] == "worse" for r in rows)


# ------------------------------------------------------------------------------------------ printing
def _format_value(metric: str, value: Optional[float]) -> str:
    if value is None:
        return MISSING
    if metric in (TOTAL_MEMORY, STEP_MEMORY):
        return format_bytes(value)
    return f"{value:.3f}×" if metric == RATIO else f"{value:.4g}/s"


def format_regress_table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table followed by a one-line summary."""
    if not rows:
        return "no measurements to compare"
    with_notes = any(r.get("note") for r in rows)
    headers = ["method", "setting", "metric", "baseline", "current", "change", "status"]
    headers += ["note"] if with_notes else []
    body = []
    for r in rows:
        change = MISSING if r.get("change") is None else f"{r['change'] * 100:+.1f}%"
        line = [str(r["method"]), str(r["setting"]), r["metric"], _format_value(r["metric"], r.get("baseline")),
                _format_value(r["metric"], r.get("current")), change,
                r["status"].upper() if r["status"] == "worse" else r["status"]]
        body.append(line + ([r.get("note") or ""] if with_notes else []))
    counts = {s: sum(r["status"] == s for r in rows) for s in ("worse", "better", "ok", "missing")}
    summary = ("REGRESSION" if counts["worse"] else "no regression") + ": " + ", ".join(
        f"{n} {s}" for s, n in counts.items())
    return text_table(headers, body) + "\n" + summary
