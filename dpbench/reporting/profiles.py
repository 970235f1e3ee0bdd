"""Profiles (``dpbench profile``): DP and non-private steps of each method measured side by side.

* :func:`profile_pairs` — each DP entry with the non-private entry of the same method, model and batch.
* :func:`format_profile` — the terminal table; :func:`profile_table` — the same rows for the report.
* :func:`scaling` / :func:`crossovers` — when a profile spans several model sizes (presets or image
  sizes): cost against model size per method, and from which size each adapter method's DP step is
  cheaper than full fine-tuning's DP step.

Methods keep the order the profiler measured them in (the suite's or ``--methods``' order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from dpbench.reporting.formatting import MISSING, format_bytes, format_count, format_number, format_ratio
from dpbench.reporting.grid import ratio
from dpbench.reporting.tables import Table, text_table
from dpbench.results import Profile, ProfileEntry

MODES = ("dp", "nonprivate")
# The method every adapter is measured against for the crossover (its registered name).
FULL_FINE_TUNING = "full"


@dataclass(frozen=True)
class ModelSize:
    preset: Optional[str]
    image_size: Optional[int]

    @property
    def label(self) -> str:
        size = f"{self.image_size}px" if self.image_size else ""
        return " ".join(part for part in (self.preset or "", size) if part) or "model"


@dataclass(frozen=True)
class ProfilePair:
    method_label: str
    method: str
    model: ModelSize
    batch: int
    dp: Optional[ProfileEntry]
    nonprivate: Optional[ProfileEntry]

    def value(self, mode: str, field: str) -> Optional[float]:
        entry = self.dp if mode == "dp" else self.nonprivate
        return None if entry is None else getattr(entry, field)

    def dp_ratio(self, field: str) -> Optional[float]:
        return ratio(self.value("dp", field), self.value("nonprivate", field))

    @property
    def errors(self) -> str:
        return "; ".join(f"{e.mode}: {e.error}" for e in (self.dp, self.nonprivate) if e is not None and e.error)


def profile_methods(profile: Profile) -> list[str]:
    return list(dict.fromkeys(e.method_label for e in profile.entries))


def profile_pairs(profile: Profile) -> list[ProfilePair]:
    """One pair per (method, model size, batch), in measuring order; a missing mode is None."""
    pairs: dict[tuple, dict[str, ProfileEntry]] = {}
    for entry in profile.entries:
        key = (entry.method_label, entry.method, ModelSize(entry.preset, entry.image_size), entry.physical_batch_size)
        pairs.setdefault(key, {})[entry.mode] = entry
    return [ProfilePair(label, method, model, batch, modes.get("dp"), modes.get("nonprivate"))
            for (label, method, model, batch), modes in pairs.items()]


PROFILE_HEADERS = ("method", "preset", "image size", "batch", "DP step (s)", "non-private step (s)",
                   "step DP / non-private",
                   "DP total peak", "non-private total peak", "memory DP / non-private", "error")


def profile_rows(profile: Profile) -> list[list[str]]:
    return [[p.method_label, p.model.preset or MISSING, format_number(p.model.image_size), str(p.batch),
             format_number(p.value("dp", "step_time_s")),
             format_number(p.value("nonprivate", "step_time_s")), format_ratio(p.dp_ratio("step_time_s")),
             format_bytes(p.value("dp", "total_peak_memory_bytes")),
             format_bytes(p.value("nonprivate", "total_peak_memory_bytes")),
             format_ratio(p.dp_ratio("total_peak_memory_bytes")), p.errors or MISSING]
            for p in profile_pairs(profile)]


def profile_table(profile: Profile, table_id: str) -> Table:
    return Table(PROFILE_HEADERS, profile_rows(profile), table_id)


def max_batch_rows(profile: Profile) -> list[list[str]]:
    return [[method, format_number(sizes.get("dp")), format_number(sizes.get("nonprivate"))]
            for method, sizes in profile.max_batch_size.items()]


def format_profile(profile: Profile) -> str:
    """The terminal view of one profile: its source and device, the pairs, and the largest batches."""
    lines = [f"profile of {profile.source} on {profile.device or 'unknown device'}"
             f" ({profile.grad_sample_mode or 'default'} per-example gradients"
             f"{f', {profile.bookkeeping_rule} rule' if profile.bookkeeping_rule else ''}, K = {profile.noise_multiplicity})",
             text_table(PROFILE_HEADERS, profile_rows(profile))]
    if profile.max_batch_size:
        lines.append(text_table(("method", "max batch (DP)", "max batch (non-private)"), max_batch_rows(profile)))
    return "\n\n".join(lines)


# ------------------------------------------------------------------------------------------ scaling
@dataclass(frozen=True)
class Scaling:
    """Cost against model size at one batch size measured for every model size."""

    batch: int
    sizes: tuple[tuple[ModelSize, int], ...]  # (model, total parameters), smallest first
    methods: tuple[str, ...]
    pairs: dict  # (method_label, ModelSize) -> ProfilePair

    def series(self, method: str, mode: str, field: str) -> list[Optional[float]]:
        pairs = [self.pairs.get((method, model)) for model, _ in self.sizes]
        return [None if p is None else p.value(mode, field) for p in pairs]

    def ratios(self, method: str, field: str) -> list[Optional[float]]:
        pairs = [self.pairs.get((method, model)) for model, _ in self.sizes]
        return [None if p is None else p.dp_ratio(field) for p in pairs]


def scaling(profile: Profile) -> Optional[Scaling]:
    """None unless the profile measured more than one model size at a common batch size."""
    pairs = profile_pairs(profile)
    models = list(dict.fromkeys(p.model for p in pairs))
    if len(models) < 2:
        return None
    common = set.intersection(*({p.batch for p in pairs if p.model == m} for m in models))
    if not common:
        return None
    batch = max(common)
    chosen = {(p.method_label, p.model): p for p in pairs if p.batch == batch}
    sizes = sorted(((m, _model_parameters(profile.entries, m)) for m in models), key=lambda s: (s[1], s[0].label))
    return Scaling(batch, tuple(sizes), tuple(profile_methods(profile)), chosen)


def _model_parameters(entries: Sequence[ProfileEntry], model: ModelSize) -> int:
    """The model without adapters: the fewest total parameters any method reported at that size."""
    counts = [e.total_params for e in entries
              if ModelSize(e.preset, e.image_size) == model and e.total_params is not None]
    return min(counts, default=0)


CROSSOVER_FIELDS = (("step_time_s", "DP step time"), ("total_peak_memory_bytes", "DP total peak memory"))


def crossovers(result: Scaling) -> Optional[list[list[str]]]:
    """Per adapter method and cost: the smallest model size from which its DP cost stays below full
    fine-tuning's DP cost at every larger measured size. None without a full fine-tuning method."""
    full = next((p.method_label for p in result.pairs.values() if p.method == FULL_FINE_TUNING), None)
    if full is None:
        return None
    rows = []
    for method in result.methods:
        if method == full:
            continue
        row = [method]
        for field, _ in CROSSOVER_FIELDS:
            below = [a is not None and b is not None and a < b
                     for a, b in zip(result.series(method, "dp", field), result.series(full, "dp", field))]
            row.append(_first_of_final_run(below, result.sizes))
        rows.append(row)
    return rows


def _first_of_final_run(below: Sequence[bool], sizes: Sequence[tuple[ModelSize, int]]) -> str:
    start = len(below)
    while start > 0 and below[start - 1]:
        start -= 1
    if start == len(below):
        return "not below full at the largest measured size"
    model, params = sizes[start]
    where = "at every measured size, from" if start == 0 else "from"
    return f"{where} {model.label} ({format_count(params)} parameters)"
