"""Executors decide *where* runs execute; the runner decides *what* a run is.

An executor first prepares what every run needs (the pretrained model and the suite's baselines, both
cached), then gets the pending runs and the invocation's :class:`RunContext`, performs every run (each
writes its own result file) and returns the results. A run is fully described by its
:class:`PlannedRun` and the context's :class:`RunnerSettings`, both picklable, so a distributed
executor ships only those (dpbench/runner/ray_executor.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

from dpbench.results import RunResult
from dpbench.runner.context import RunContext, RunnerSettings
from dpbench.runner.plan import PlannedRun


class Executor(ABC):
    def __init__(self, **options):
        self.options = options

    def driver_settings(self, settings: RunnerSettings) -> RunnerSettings:
        """The settings of this process's own context (where it plans and, locally, runs)."""
        return settings

    def prepare(self, ctx: RunContext) -> None:
        """Pretrain (or load) the model and compute the suite's baselines before any run."""
        from dpbench.runner.baselines import ensure_baselines

        ensure_baselines(ctx)

    @abstractmethod
    def execute(self, runs: Sequence[PlannedRun], ctx: RunContext) -> list[RunResult]:
        """Perform every run and return its result (status ok or failed)."""


class LocalExecutor(Executor):
    """One run after another in this process, sharing the loaded data, model and probes."""

    def execute(self, runs, ctx):
        from dpbench.runner.single_run import run_one
        from dpbench.runner.progress import GridProgress

        progress = GridProgress(len(runs))
        results = []
        for planned in runs:
            result = run_one(ctx, planned)
            if result is not None:  # None: a torchrun rank other than 0 took part in the training
                results.append(result)
                progress.finished(planned.spec.run_id, result.status)
        return results
