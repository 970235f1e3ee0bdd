"""Reading the profiler's JSON files (``kind: dpbench-profile``) for reports and regression checks.

Format (schema_version 1)::

    {"schema_version": 1, "kind": "dpbench-profile", "created_at": ..., "device": ..., "versions": {...},
     "git_sha": ..., "source": "preset:small", "image_size": 28,
     "entries": [{"method", "method_label", "mode": "dp" | "nonprivate", "physical_batch_size",
                  "step_time_s", "examples_per_s", "peak_memory_bytes", "memory_kind",
                  "trainable_params", "total_params"}, ...],
     "max_batch_size": {"<method_label>": {"dp": 512, "nonprivate": 2048}}}   # GPU only, optional
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dpbench.errors import UserError
from dpbench.reporting.frames import as_float, method_sort_key, ratio

PROFILE_KIND = "dpbench-profile"
MODES = ("dp", "nonprivate")
ENTRY_KEYS = ("method_label", "mode", "physical_batch_size")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from err
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err.msg}, line {err.lineno}); re-run `dpbench profile`") from err


def is_profile_file(path: str | os.PathLike) -> bool:
    """True for a readable JSON file whose ``kind`` is dpbench-profile (never raises)."""
    path = Path(path)
    if not path.is_file() or path.suffix != ".json":
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("kind") == PROFILE_KIND


def load_profile(path: str | os.PathLike) -> dict:
    """A validated profile: entries carry ``method_label`` (defaulting to ``method``) and an int batch size."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or data.get("kind") != PROFILE_KIND:
        raise UserError(f"{path} is not a dpbench profile (expected \"kind\": \"{PROFILE_KIND}\"); "
                        "pass a file written by `dpbench profile`")
    entries = data.get("entries")
    if not isinstance(entries, list):
        raise UserError(f"{path}: \"entries\" must be a list; re-run `dpbench profile`")
    clean = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise UserError(f"{path}: entries[{i}] is not an object; re-run `dpbench profile`")
        entry = dict(entry)
        entry["method_label"] = str(entry.get("method_label") or entry.get("method") or "")
        if not entry["method_label"]:
            raise UserError(f"{path}: entries[{i}] has no method_label; re-run `dpbench profile`")
        if entry.get("mode") not in MODES:
            raise UserError(f"{path}: entries[{i}].mode must be one of {', '.join(MODES)} (got {entry.get('mode')!r})")
        batch = as_float(entry.get("physical_batch_size"))
        if batch is None or batch <= 0 or not batch.is_integer():
            raise UserError(f"{path}: entries[{i}].physical_batch_size must be a positive integer")
        entry["physical_batch_size"] = int(batch)
        clean.append(entry)
    out = dict(data)
    out["entries"] = clean
    out["path"] = str(path)
    if not isinstance(out.get("max_batch_size"), dict):
        out["max_batch_size"] = {}
    return out


def find_profiles(directory: str | os.PathLike, pattern: str = "profile*.json") -> list[dict]:
    """Profiles matching ``pattern`` directly inside ``directory`` (files of another kind are skipped)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return [load_profile(p) for p in sorted(directory.glob(pattern)) if is_profile_file(p)]


def profile_methods(profile: dict) -> list[str]:
    methods = {e["method_label"]: e.get("method") for e in profile["entries"]}
    return sorted(methods, key=lambda m: method_sort_key(m, methods[m]))


def profile_pairs(profile: dict) -> list[dict]:
    """One row per (method_label, physical_batch_size): dp and nonprivate step time and peak memory and
    their DP/non-private ratios (None where a mode or value is missing)."""
    cells: dict[tuple, dict] = {}
    for e in profile["entries"]:
        cells.setdefault((e["method_label"], e["physical_batch_size"]), {})[e["mode"]] = e
    rows = []
    order = {m: i for i, m in enumerate(profile_methods(profile))}
    for (label, batch), modes in sorted(cells.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        dp, npv = modes.get("dp", {}), modes.get("nonprivate", {})
        rows.append({
            "method_label": label, "physical_batch_size": batch,
            "dp_step_time_s": as_float(dp.get("step_time_s")),
            "nonprivate_step_time_s": as_float(npv.get("step_time_s")),
            "step_time_ratio": ratio(dp.get("step_time_s"), npv.get("step_time_s")),
            "dp_peak_memory_bytes": as_float(dp.get("peak_memory_bytes")),
            "nonprivate_peak_memory_bytes": as_float(npv.get("peak_memory_bytes")),
            "peak_memory_ratio": ratio(dp.get("peak_memory_bytes"), npv.get("peak_memory_bytes")),
            "dp_examples_per_s": as_float(dp.get("examples_per_s")),
            "nonprivate_examples_per_s": as_float(npv.get("examples_per_s")),
            "memory_kind": dp.get("memory_kind") or npv.get("memory_kind"),
        })
    return rows
