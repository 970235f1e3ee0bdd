"""Executors decide *where* runs execute; the runner decides *what* a run is.

An executor gets the pending runs and a function that performs one run and returns its record. A
distributed executor (one process per GPU, a cluster queue) is one more registry entry with this
interface; the runner does not change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Sequence

from dpbench.config.suite import RunSpec


class Executor(ABC):
    @abstractmethod
    def execute(self, runs: Sequence[RunSpec], run_one: Callable[[RunSpec], dict]) -> list[dict]:
        """Perform every run (each writes its own result file) and return the records."""


class LocalExecutor(Executor):
    def execute(self, runs, run_one):
        return [run_one(run) for run in runs]
