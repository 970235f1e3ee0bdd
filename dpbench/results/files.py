"""Result files on disk: atomic writes that honour the umask and never leave their results directory,
validated reads (a bad file is a one-line error naming it), the scans that find a suite's runs,
baselines, profiles and audits, the results.csv rebuilt from them, and the rule for names that become
path components (:func:`check_name`).

Layout under a suite's results directory::

    <results>/<suite>/
        suite.yaml                  the suite as last run (provenance)
        baselines.json              Baselines: pretrained model before fine-tuning, real-data ceiling
        runs/<run_id>/result.json   RunResult, written atomically and last: its presence means "finished"
        runs/<run_id>/samples.png   sample grid (rows = classes, last row real data when recorded)
        runs/<run_id>/trainable.safetensors   the fine-tuned (EMA) trainable weights
        runs/<run_id>/run.log       the run's log (never a statistic of private data outside the mechanism)
        runs/<run_id>/checkpoint.pt while a run is in progress only (resume state; private, like the weights)
        runs/<run_id>/audit.json    AuditResult, from `dpbench audit`
        profile*.json               Profile, from `dpbench profile`
        results.csv                 one row per run, rebuilt from the result.json files
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Optional, TypeVar

from pydantic import BaseModel, ValidationError

from dpbench.errors import UserError
from dpbench.results.schema import SCHEMA_VERSION, AuditResult, Baselines, Profile, RunResult
from dpbench.results.upgrade import upgrade

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # anything that becomes a path component
_NAME_RE = re.compile(NAME_PATTERN)


def check_name(value: str, field: str) -> str:
    """Names that become path components (suite name, method label, run id) cannot climb out of a folder."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise UserError(f"{field}: {value!r} is not a valid name — use letters, digits, '.', '_' and '-', "
                        "starting with a letter or digit")
    return value


M = TypeVar("M", bound=BaseModel)


def to_json_bytes(model: BaseModel) -> bytes:
    data = model.model_dump(mode="json")
    return (json.dumps(_finite(data), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: NaN becomes null (ε's inf is already "inf")."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def write_model(path: str | os.PathLike, model: BaseModel, *, inside: str | os.PathLike | None = None) -> Path:
    return write_bytes_atomic(path, to_json_bytes(model), inside=inside)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, inside: str | os.PathLike | None = None) -> Path:
    return write_bytes_atomic(path, (json.dumps(_finite(obj), indent=2, sort_keys=True) + "\n").encode(), inside=inside)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, inside: str | os.PathLike | None = None) -> Path:
    """Write via a temporary file and ``os.replace``; mode 0666 & ~umask like an ordinary file. With
    ``inside``, refuse a path that does not resolve inside that folder (no escape through names or links)."""
    path = Path(path)
    if inside is not None:
        ensure_inside(path, inside)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def ensure_inside(path: str | os.PathLike, folder: str | os.PathLike) -> Path:
    resolved, root = Path(path).resolve(), Path(folder).resolve()
    if resolved != root and root not in resolved.parents:
        raise UserError(f"{path}: refusing to write outside {folder}")
    return resolved


def read_model(path: str | os.PathLike, cls: type[M]) -> M:
    """Load and validate one result file; a bad file is a one-line error naming it."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read ({err})") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg}, line {err.lineno}) — delete it or re-run what wrote it") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a JSON object")
    raw = upgrade(raw, cls)
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise UserError(f"{path}: {loc}: {first['msg']} — the file is not a valid {cls.__name__} "
                        f"(schema {SCHEMA_VERSION}); re-run what wrote it") from None



def run_dir(results_dir: str | os.PathLike, run_id: str) -> Path:
    return Path(results_dir) / "runs" / check_name(run_id, "run_id")


def load_results(results_dir: str | os.PathLike) -> list[RunResult]:
    """Every run's result.json under one suite's results directory, sorted by run id."""
    return [read_model(p, RunResult) for p in sorted(Path(results_dir).glob("runs/*/result.json"))]


def load_baselines(results_dir: str | os.PathLike) -> Optional[Baselines]:
    path = Path(results_dir) / "baselines.json"
    return read_model(path, Baselines) if path.is_file() else None


def is_profile_file(path: str | os.PathLike) -> bool:
    """A JSON file whose ``kind`` is dpbench-profile (never raises)."""
    path = Path(path)
    if not path.is_file() or path.suffix != ".json":
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("kind") == "dpbench-profile"


def load_profiles(directory: str | os.PathLike, pattern: str = "profile*.json") -> list[tuple[Path, Profile]]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return [(p, read_model(p, Profile)) for p in sorted(directory.glob(pattern)) if is_profile_file(p)]


def load_audits(results_dir: str | os.PathLike) -> list[AuditResult]:
    return [read_model(p, AuditResult) for p in sorted(Path(results_dir).glob("runs/*/audit*.json"))]


CSV_EXCLUDE = {"versions", "downstream_accuracies", "per_class_accuracy", "memory_breakdown", "method_options",
               "clipping", "clipping_diagnostics", "gpu_phases", "curves"}


def csv_rows(results: list[RunResult]) -> tuple[list[str], list[dict]]:
    columns = [k for k in RunResult.model_fields if k not in CSV_EXCLUDE]
    columns += ["clipping_mode", "max_grad_norm", "unclipped_fraction"]
    rows = []
    for r in results:
        row = {k: v for k, v in r.model_dump(mode="json").items() if k in columns}
        row.update(clipping_mode=r.clipping.mode, max_grad_norm=r.clipping.max_grad_norm,
                   unclipped_fraction=r.clipping_diagnostics.unclipped_fraction if r.clipping_diagnostics else None)
        rows.append(row)
    return columns, rows


def rebuild_csv(results_dir: str | os.PathLike) -> Path:
    import csv
    import io

    columns, rows = csv_rows(load_results(results_dir))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return write_bytes_atomic(Path(results_dir) / "results.csv", buffer.getvalue().encode())


def iter_result_dirs(root: str | os.PathLike):
    """Suite result directories below ``root`` (``root`` itself if it holds runs/)."""
    root = Path(root)
    if (root / "runs").is_dir():
        yield root
        return
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        if (child / "runs").is_dir():
            yield child
