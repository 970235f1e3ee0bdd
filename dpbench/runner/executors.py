"""Executors decide *where* runs execute; the runner decides *what* a run is.

An executor gets the pending runs and the invocation's :class:`RunContext`, performs every run (each
writes its own result file) and returns the results. A run is fully described by its run id and the
context's picklable :class:`RunnerSettings`, so a distributed executor ships only those.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

from dpbench.results import RunResult
from dpbench.runner.context import RunContext
from dpbench.runner.plan import PlannedRun


class Executor(ABC):
    def __init__(self, **options):
        self.options = options

    @abstractmethod
    def execute(self, runs: Sequence[PlannedRun], ctx: RunContext) -> list[RunResult]:
        """Perform every run and return its result (status ok or failed)."""


class LocalExecutor(Executor):
    """One run after another in this process, sharing the loaded data, model and probes."""

    def execute(self, runs, ctx):
        from dpbench.runner.cell import run_cell
        from dpbench.runner.progress import GridProgress

        progress = GridProgress(len(runs))
        results = []
        for planned in runs:
            results.append(run_cell(ctx, planned))
            progress.finished(planned.spec.run_id, results[-1].status)
        return results
