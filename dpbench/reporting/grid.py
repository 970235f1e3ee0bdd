"""One suite's results as a method × ε × seed grid: what every table, figure and check reads.

Finished runs (status "ok") are the statistics' inputs; failed runs are kept apart, to be listed. A
method is its suite label (``method_label``), ordered as the suite listed it (``method_index``), then
by name. ε is ordered ascending with ∞, the non-private reference, last. Seeds are the replicates:
intervals are over the seeds of one (method, ε) cell, differences are paired within (ε, seed).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

from dpbench.errors import UserError
from dpbench.reporting.stats import Interval, PairedDiff, Scale, mean_interval, paired_difference
from dpbench.results import Baselines, RunResult, load_baselines, load_results

# A metric is a RunResult field name, or a function of a run for derived quantities.
Metric = Union[str, Callable[[RunResult], Optional[float]]]


def metric_value(run: RunResult, metric: Metric) -> Optional[float]:
    """The metric of one run; None when it was not recorded or is not a finite number (no mean describes it)."""
    value = metric(run) if callable(metric) else getattr(run, metric)
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def values_by_seed(runs: Iterable[RunResult], metric: Metric) -> dict[int, float]:
    values = {}
    for run in runs:
        value = metric_value(run, metric)
        if value is not None:
            values[run.seed] = value
    return values


# The range each recorded quantity lives in, so that its interval stays inside it (stats.mean_interval):
# fractions on the logit scale, positive amounts on the log scale. Anything else is linear.
METRIC_SCALES: dict[str, Scale] = {
    "downstream_accuracy": "logit", "precision": "logit", "recall": "logit",
    "fid": "log", "total_peak_memory_bytes": "log", "peak_memory_bytes": "log", "throughput_examples_per_s": "log",
    "step_time_s": "log", "train_seconds": "log",
}


def scale_of(metric: Metric) -> Scale:
    return METRIC_SCALES.get(metric, "linear") if isinstance(metric, str) else "linear"


def interval_of(runs: Iterable[RunResult], metric: Metric, scale: Optional[Scale] = None) -> Optional[Interval]:
    """Mean over seeds with its 95% t-interval on the metric's own scale (:data:`METRIC_SCALES`, or
    ``scale``); None when no run has the metric."""
    values = list(values_by_seed(runs, metric).values())
    return mean_interval(values, scale=scale or scale_of(metric)) if values else None


def paired_ratio(a_runs: Iterable[RunResult], b_runs: Iterable[RunResult], metric: Metric) -> Optional[Interval]:
    """a / b per seed both ran, then the mean of those ratios with a log-scale interval (ratios are positive);
    None when no seed has a positive value on both sides."""
    a, b = values_by_seed(a_runs, metric), values_by_seed(b_runs, metric)
    ratios = [a[seed] / b[seed] for seed in set(a) & set(b) if b[seed] > 0 and a[seed] > 0]
    return mean_interval(ratios, scale="log") if ratios else None


def mean_of(runs: Iterable[RunResult], metric: Metric) -> Optional[float]:
    interval = interval_of(runs, metric)
    return None if interval is None else interval.mean


def paired_by_seed(a_runs: Iterable[RunResult], b_runs: Iterable[RunResult], metric: Metric) -> Optional[PairedDiff]:
    """a − b paired within seeds; None when no seed has the metric on both sides."""
    a, b = values_by_seed(a_runs, metric), values_by_seed(b_runs, metric)
    return paired_difference(a, b) if set(a) & set(b) else None


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def epsilon_order(eps: float) -> tuple:
    return (math.isinf(eps), eps)


def method_order(runs: Iterable[RunResult]) -> list[str]:
    """Labels in the suite's order (``method_index``), then by name; no method list is built in."""
    index: dict[str, float] = {}
    for run in runs:
        position = math.inf if run.method_index is None else run.method_index
        index[run.method_label] = min(index.get(run.method_label, math.inf), position)
    return sorted(index, key=lambda label: (index[label], label))


@dataclass(frozen=True)
class ResultGrid:
    results_dir: Path
    runs: tuple[RunResult, ...]
    failed: tuple[RunResult, ...]
    baselines: Optional[Baselines]
    methods: tuple[str, ...]
    epsilons: tuple[float, ...]
    _cells: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_results(cls, results_dir: Path, results: Sequence[RunResult],
                     baselines: Optional[Baselines] = None) -> "ResultGrid":
        finished = tuple(r for r in results if r.status == "ok")
        cells: dict[tuple[str, float], list[RunResult]] = {}
        for run in sorted(finished, key=lambda r: r.seed):
            cells.setdefault((run.method_label, run.epsilon), []).append(run)
        return cls(results_dir=Path(results_dir), runs=finished,
                   failed=tuple(r for r in results if r.status != "ok"), baselines=baselines,
                   methods=tuple(method_order(results)),
                   epsilons=tuple(sorted({r.epsilon for r in results}, key=epsilon_order)), _cells=cells)

    @property
    def finite_epsilons(self) -> tuple[float, ...]:
        return tuple(e for e in self.epsilons if math.isfinite(e))

    @property
    def suite(self) -> str:
        names = {r.suite for r in self.runs + self.failed}
        return names.pop() if len(names) == 1 else self.results_dir.resolve().name

    @property
    def full_label(self) -> Optional[str]:
        """The first method (in suite order) that is full fine-tuning, the reference for relative cost."""
        full = {r.method_label for r in self.runs if r.method == "full"}
        return next((m for m in self.methods if m in full), None)

    @property
    def max_seeds(self) -> int:
        return max((len(runs) for runs in self._cells.values()), default=0)

    def cell(self, method: str, eps: float) -> list[RunResult]:
        return list(self._cells.get((method, eps), ()))

    def reference_pairs(self) -> list[tuple[RunResult, RunResult]]:
        """Every DP run with the ε = ∞ run of the same method and seed (runs without one are left out)."""
        reference = {(r.method_label, r.seed): r for r in self.runs if math.isinf(r.epsilon)}
        return [(run, reference[(run.method_label, run.seed)]) for run in self.runs
                if math.isfinite(run.epsilon) and (run.method_label, run.seed) in reference]

    def dp_ratio(self, field: str) -> Callable[[RunResult], Optional[float]]:
        """A metric of DP runs: ``field`` divided by that of the ε = ∞ run of the same method and seed.
        A slower machine slows both alike, so the ratio is the cost of privacy itself."""
        partners = {run.run_id: reference for run, reference in self.reference_pairs()}

        def value(run: RunResult) -> Optional[float]:
            reference = partners.get(run.run_id)
            return None if reference is None else ratio(getattr(run, field), getattr(reference, field))

        return value


def load_grid(results_dir: str | os.PathLike) -> ResultGrid:
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UserError(f"results directory {results_dir} does not exist; pass the folder a suite run wrote "
                        "(results/<suite>/)")
    results = load_results(results_dir)
    if not results:
        raise UserError(f"no finished runs in {results_dir} (expected runs/<run_id>/result.json); "
                        "run the suite first or pass its results directory")
    smoke = sorted(r.run_id for r in results if r.smoke)
    if smoke and len(smoke) < len(results):
        raise UserError(f"{results_dir}: mixes {len(smoke)} --smoke runs (e.g. {smoke[0]}) with "
                        f"{len(results) - len(smoke)} real runs; smoke runs measure nothing — remove their "
                        "runs/<run_id>/ folders, or report them apart (dpbench run --smoke writes to <suite>-smoke/)")
    return ResultGrid.from_results(results_dir, results, load_baselines(results_dir))
