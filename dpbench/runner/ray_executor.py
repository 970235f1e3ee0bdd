"""``executor: {name: ray}``: every pending run of the grid as one Ray task, on a local Ray instance or a cluster.

This process (the driver) plans the grid and refuses stale results as `executor: local` does; then one
task pretrains the suite's model and computes its baselines (both cached), and one task per pending
run executes it with ``gpus_per_run`` GPUs (0: on CPU) and ``cpus_per_run`` CPUs. A task receives only
picklable values — the :class:`RunnerSettings` with absolute paths, the :class:`PlannedRun` the driver
planned (the task neither reads the suite file nor plans the grid again; it checks only that the
private data it loads gives the run the driver's config hash), and the plug-ins registered here with
``Registry.add`` — and rebuilds its own :class:`RunContext`. The data, the cache and the results
directory must therefore be the same paths on every node (one machine, or a shared filesystem).

A run that fails in its own code is recorded as failed by its task (as with `executor: local`) and is
not retried. A task whose worker process dies (killed, node lost) is retried up to ``max_retries``
times and resumes from the run's last checkpoint, so its accountant history stays that of the steps
behind the released model; when every try died, the driver records the run as failed (phase
``worker``). The driver collects the results and rebuilds results.csv; the CLI builds the report.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

from dpbench.errors import UserError
from dpbench.runner.context import RunContext, RunnerSettings
from dpbench.runner.executors import Executor
from dpbench.runner.plan import PlannedRun

log = logging.getLogger("dpbench")


def _set_up_worker(working_dir: str, plugins: dict) -> None:
    import ray
    import torch

    from dpbench.registry import add_objects

    # torch's thread pool as large as the task's CPUs: Ray reuses a worker process across tasks of other
    # sizes, so OMP_NUM_THREADS from the worker's first task would not do (the pretraining task has a node's
    # CPUs, a run task cpus_per_run).
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    if Path(working_dir).is_dir():  # relative paths inside the suite mean what they mean to the driver
        os.chdir(working_dir)
    logging.getLogger("dpbench").setLevel(logging.INFO)  # what run_one logs goes to the run's run.log
    add_objects(plugins)


def prepare_task(settings: RunnerSettings, working_dir: str, plugins: dict) -> None:
    """Pretrain (or load from the cache) and compute the baselines, on a worker with a run's resources."""
    from dpbench.runner.baselines import ensure_baselines

    _set_up_worker(working_dir, plugins)
    ensure_baselines(RunContext.build(settings))


def run_task(settings: RunnerSettings, planned: PlannedRun, working_dir: str, plugins: dict):
    """One run, from nothing but picklable values (the driver's plan of the run included); returns its RunResult."""
    from dpbench.runner.single_run import run_one

    _set_up_worker(working_dir, plugins)
    ctx = RunContext.build(settings)
    if not _same_data(ctx, planned):
        raise UserError(f"{planned.spec.run_id}: the private data on this worker ({len(ctx.train[0])} examples) is not "
                        "the data the driver planned with — give every node the same data folder")
    return run_one(ctx, planned)


def _same_data(ctx: RunContext, planned: PlannedRun) -> bool:
    """Whether the private data this worker loaded gives the run the config hash the driver planned (N
    enters q, T and σ)."""
    from dpbench.config.suite import run_config_hash

    return run_config_hash(ctx.suite, planned.spec, len(ctx.train[0])) == planned.config_hash


def _cause(err: BaseException) -> BaseException:
    """The exception a task raised, out of Ray's wrapper."""
    return getattr(err, "cause", None) or err


class RayExecutor(Executor):
    """Options: the suite's ``executor:`` mapping (address, gpus_per_run, cpus_per_run, max_retries)."""

    def __init__(self, **options):
        from dpbench.config.suite import ExecutorSettings

        super().__init__(**options)
        self.config = ExecutorSettings(name="ray", **options)
        self._started_here = False  # a local Ray instance this executor started (and shuts down)

    def driver_settings(self, settings: RunnerSettings) -> RunnerSettings:
        # The driver only plans and collects: the runs, the pretraining and the baselines are tasks.
        return replace(settings, device="cpu")

    def _ray(self):
        import ray

        if not ray.is_initialized():
            ray.init(address=self.config.address, include_dashboard=False, log_to_driver=False)
            self._started_here = self.config.address is None
        gpus, cpus = self.config.gpus_per_run, self.config.cpus_per_run
        available = ray.cluster_resources()
        if available.get("GPU", 0) < gpus:
            where = self.config.address or "this machine"
            raise UserError(f"executor.gpus_per_run: {gpus:g} GPU(s) per run, but the Ray cluster at {where} has "
                            f"{available.get('GPU', 0):g} — set executor.gpus_per_run: 0 to run on CPU, or give "
                            "executor.address of a cluster with GPUs")
        if available.get("CPU", 0) < cpus:
            raise UserError(f"executor.cpus_per_run: {cpus:g} CPU(s) per run, but the Ray cluster has "
                            f"{available.get('CPU', 0):g} — lower it")
        return ray

    def _task(self, ray, fn, cpus: float | None = None):
        env = {name: os.environ[name] for name in ("DPBENCH_DATA",) if name in os.environ}
        return ray.remote(fn).options(num_gpus=self.config.gpus_per_run, num_cpus=cpus or self.config.cpus_per_run,
                                      max_retries=self.config.max_retries,
                                      runtime_env={"env_vars": env} if env else None)

    def _worker_settings(self, ctx: RunContext) -> RunnerSettings:
        from dpbench.models.pretrain import cache_root

        s = ctx.settings
        absolute = lambda path: str(Path(path).resolve()) if path else None  # noqa: E731
        return RunnerSettings(suite_path=absolute(s.suite_path), suite=s.suite, suite_mapping=s.suite_mapping,
                              results_root=absolute(s.results_root),
                              data_root=absolute(s.data_root), cache_dir=str(cache_root(s.cache_dir).resolve()),
                              device="cuda" if self.config.gpus_per_run > 0 else "cpu", progress=False,
                              overrides=s.overrides, smoke=s.smoke)

    def prepare(self, ctx: RunContext) -> None:
        from dpbench.registry import added_objects

        ray = self._ray()
        # Nothing else of this suite runs yet: the pretraining task takes every CPU of the largest node that
        # has the GPUs a run needs, not cpus_per_run (on 2 cores with cpus_per_run 1, the other core would
        # idle through the public pretraining). A node without those GPUs could never take the task.
        cpus = max([self.config.cpus_per_run] + [node["Resources"].get("CPU", 0) for node in ray.nodes()
                                                 if node["Alive"] and node["Resources"].get("GPU", 0) >= self.config.gpus_per_run])
        log.info("dpbench: ray: pretraining (or loading) the model and computing the baselines in a task (%g CPUs)", cpus)
        try:
            ray.get(self._task(ray, prepare_task, cpus).remote(self._worker_settings(ctx), os.getcwd(), added_objects()))
        except ray.exceptions.RayTaskError as err:
            if isinstance(_cause(err), UserError):
                raise _cause(err) from None
            raise

    def execute(self, runs, ctx):
        try:
            return self._execute(runs, ctx) if runs else []
        finally:
            if self._started_here:
                import ray

                ray.shutdown()
                self._started_here = False

    def _execute(self, runs, ctx):
        from dpbench.registry import added_objects
        from dpbench.runner.single_run import record_failure
        from dpbench.runner.progress import GridProgress

        ray = self._ray()
        task, settings, plugins = self._task(ray, run_task), self._worker_settings(ctx), added_objects()
        refs = {task.remote(settings, p, os.getcwd(), plugins): p for p in runs}
        remaining, results, progress = list(refs), [], GridProgress(len(runs))
        try:
            while remaining:
                (ref,), remaining = ray.wait(remaining, num_returns=1)
                planned = refs[ref]
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as err:  # every try's worker died, or the task could not start
                    cause = _cause(err)
                    result = record_failure(ctx, planned, f"{type(cause).__name__}: {cause}", "worker",
                                            device=None)  # the driver's device is not where the run was
                results.append(result)
                progress.finished(planned.spec.run_id, result.status)
        except KeyboardInterrupt:
            for ref in remaining:
                ray.cancel(ref, force=True)
            raise
        return results
