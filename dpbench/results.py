"""Result files: the one schema every run writes and every report reads (documented in docs/results.md).

Layout under a results directory::

    results/<suite>/
        suite.yaml                  the suite as it was run (provenance)
        baselines.json              per-suite baselines: pretrained-model FID, real-data classifier ceiling
        runs/<run_id>/result.json   one file per run (schema below), written atomically when the run ends
        runs/<run_id>/samples.png   sample grid (rows = classes)
        runs/<run_id>/checkpoint/   training state while a run is in progress (resume)
        results.csv                 one row per run, rebuilt from the result.json files

Writes go to a temporary file in the same folder followed by ``os.replace``, so a killed process never
leaves a half-written file behind.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

SCHEMA_VERSION = 1

# Every result.json has every one of these keys (null where a value does not apply, e.g. epsilon_spent
# for the non-private reference is null and epsilon is "inf").
RESULT_KEYS = (
    "schema_version", "run_id", "suite", "method", "method_label", "dataset", "dataset_label",
    "public_dataset", "seed", "epsilon", "delta", "epsilon_spent", "accountant", "noise_multiplier",
    "sample_rate", "steps", "expected_batch_size", "physical_batch_size", "max_grad_norm",
    "noise_multiplicity", "trainable_params", "total_params", "downstream_accuracy",
    "downstream_accuracy_std", "downstream_accuracies", "classifier", "fid", "fid_backbone",
    "fid_num_samples", "fid_reference", "precision", "recall", "peak_memory_bytes", "memory_kind",
    "nvml_peak_memory_bytes", "throughput_examples_per_s", "step_time_s", "train_seconds",
    "sample_seconds", "eval_seconds", "final_loss", "samples_grid", "device", "versions", "git_sha",
    "created_at", "status",
)

BASELINE_KEYS = (
    "schema_version", "suite", "dataset", "dataset_label", "fid_backbone", "fid_num_samples",
    "fid_reference", "pretrained_fid", "pretrained_precision", "pretrained_recall", "pretrained_accuracy",
    "real_data_accuracy", "real_data_accuracy_std", "classifier",
)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n").encode())


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_jsonable(obj: Any) -> Any:
    """JSON has no infinity: epsilon = inf is stored as the string "inf"."""
    if isinstance(obj, float) and math.isinf(obj):
        return "inf" if obj > 0 else "-inf"
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return to_jsonable(obj.item())
    return obj


def parse_epsilon(value: Any) -> float:
    return math.inf if value in ("inf", "Infinity", None) else float(value)


def run_dir(results_dir: str | os.PathLike, run_id: str) -> Path:
    return Path(results_dir) / "runs" / run_id


def load_results(results_dir: str | os.PathLike) -> list[dict]:
    """All finished runs' result.json files under one suite's results directory, sorted by run id."""
    out = []
    for path in sorted(Path(results_dir).glob("runs/*/result.json")):
        record = json.loads(path.read_text())
        record["epsilon"] = parse_epsilon(record.get("epsilon"))
        out.append(record)
    return out


def load_baselines(results_dir: str | os.PathLike) -> dict:
    path = Path(results_dir) / "baselines.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def check_result(record: dict) -> list[str]:
    """Names of schema keys missing from a result record (empty when it is complete)."""
    return [k for k in RESULT_KEYS if k not in record]


def rebuild_csv(results_dir: str | os.PathLike) -> Path:
    import pandas as pd

    rows = []
    for record in load_results(results_dir):
        row = {k: record.get(k) for k in RESULT_KEYS if k not in ("versions", "downstream_accuracies")}
        row["epsilon"] = "inf" if math.isinf(record["epsilon"]) else record["epsilon"]
        rows.append(row)
    frame = pd.DataFrame(rows, columns=[k for k in RESULT_KEYS if k not in ("versions", "downstream_accuracies")])
    path = Path(results_dir) / "results.csv"
    write_bytes_atomic(path, frame.to_csv(index=False).encode())
    return path


def iter_result_dirs(root: str | os.PathLike) -> Iterable[Path]:
    """Suite result directories below ``root`` (``root`` itself if it holds runs/)."""
    root = Path(root)
    if (root / "runs").is_dir():
        yield root
        return
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        if (child / "runs").is_dir():
            yield child
