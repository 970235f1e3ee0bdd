"""Files of schema_version 1 (dpbench 0.1) still load: :func:`upgrade` rewrites a version-1 dict into the
current schema before validation, and leaves files of the current version untouched."""

from __future__ import annotations

import math

from dpbench.results.epsilon import parse_epsilon
from dpbench.results.schema import SCHEMA_VERSION, Baselines, Profile, RunResult


def upgrade(raw: dict, cls: type) -> dict:
    """A version-1 file's fields in the current schema (a copy; a current file is returned as it is)."""
    if raw.get("schema_version", 1) >= 2:
        return raw
    raw = dict(raw)
    raw["schema_version"] = SCHEMA_VERSION
    if cls is RunResult:
        eps = parse_epsilon(raw.get("epsilon", "inf") if raw.get("epsilon") is not None else "inf")
        private = math.isfinite(eps)
        raw.setdefault("clipping", {"mode": "fixed" if private else "none", "max_grad_norm": raw.get("max_grad_norm")})
        raw.pop("max_grad_norm", None)
        if private:
            raw.pop("final_loss", None)  # v1 wrote it for private runs: never carried forward
        raw["noise_source"] = "seeded" if private else "none"  # v1 noise was derived from the seed
        raw.setdefault("method_label", raw.get("method"))
        raw.setdefault("dataset_label", raw.get("dataset"))
        raw["downstream_accuracies"] = raw.get("downstream_accuracies") or []
        raw["versions"] = raw.get("versions") or {}
    elif cls is Baselines:
        raw["dataset_label"] = raw.get("dataset_label") or raw.get("dataset")
    elif cls is Profile:
        for entry in raw.get("entries", []):
            if isinstance(entry, dict):
                entry.setdefault("method_label", entry.get("method"))
    return raw
