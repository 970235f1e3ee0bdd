"""`dpbench run SUITE`: plan the grid, refuse stale results, pretrain and baseline, run the pending runs.

A finished run is skipped only when its ``config_hash`` matches the suite as it is now. A finished run
whose settings changed is never skipped silently: the command stops (exit 2) naming the changed runs
and the ways forward — a new results directory, or ``--rerun-changed``. Failed runs are retried.

Under ``torchrun --nproc-per-node N`` every process runs this: each run is trained by all N together
(dpbench/engine/distributed.py); rank 0 alone pretrains, computes the baselines, samples, evaluates and
writes files, while the others wait for it at the next collective.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from dpbench.config.overrides import effective_suite_yaml
from dpbench.errors import UserError
from dpbench.results import RunResult, rebuild_csv, run_dir, write_bytes_atomic
from dpbench.runner.context import RunContext, RunnerSettings
from dpbench.runner.plan import planned_grid, split_finished

log = logging.getLogger("dpbench")


@dataclass
class GridOutcome:
    results_dir: Path
    ran: int
    skipped: int
    seconds: float
    failed: list[RunResult] = field(default_factory=list)
    csv: Path | None = None


def run_suite(settings: RunnerSettings, only: list[str] = (), rerun_changed: bool = False) -> GridOutcome:
    from dpbench.engine.distributed import Distributed, launched_with_several_processes
    from dpbench.registry import EXECUTORS
    from dpbench.runner.devices import resolve_device

    suite = settings.suite
    executor = EXECUTORS.get(suite.executor.name, "executor.name")(**suite.executor.model_dump(exclude={"name"}))
    distributed = None
    if launched_with_several_processes():
        distributed = Distributed.from_env(resolve_device(settings.device or suite.device).type)
        settings = replace(settings, device=str(distributed.device))
    try:
        ctx = RunContext.build(executor.driver_settings(settings))
        ctx.distributed = distributed
        return _run_grid(ctx, executor, only, rerun_changed)
    finally:
        if distributed is not None:
            distributed.close()


def _run_grid(ctx: RunContext, executor, only: list[str], rerun_changed: bool) -> GridOutcome:
    from dpbench.runner.baselines import baselines_current

    suite, settings = ctx.suite, ctx.settings
    planned = planned_grid(ctx, only)
    done, changed, pending = split_finished(ctx, planned)
    if changed and not rerun_changed:
        names = ", ".join(p.spec.run_id for p in changed[:8]) + (f" (+{len(changed) - 8} more)" if len(changed) > 8 else "")
        raise UserError(f"{ctx.results_dir}: {len(changed)} finished run(s) were made with other settings than "
                        f"{settings.suite_path} now has: {names} — use a new --results-dir, or --rerun-changed to "
                        "run them again")
    rerun = {p.spec.run_id for p in changed + pending}
    pending = [p for p in planned if p.spec.run_id in rerun]  # in the grid's order, the same on every torchrun rank
    if ctx.is_root:
        ctx.results_dir.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(ctx.results_dir / "suite.yaml", effective_suite_yaml(settings.suite_path, settings.overrides,
                                                               settings.suite_mapping),
                           inside=ctx.results_dir)
        for p in changed:  # a re-run starts from scratch, not from a checkpoint of the old settings
            (run_dir(ctx.results_dir, p.spec.run_id) / "result.json").unlink(missing_ok=True)
    if ctx.distributed is not None:
        where = f"{ctx.distributed.world_size} processes ({ctx.device.type})"
    else:
        where = str(ctx.device) if suite.executor.name == "local" else f"executor {suite.executor.name}"
    log.info("dpbench: suite %r: %d runs (%d already finished, %d to run) on %s; results in %s", suite.name,
             len(planned), len(done), len(pending), where, ctx.results_dir)
    wall = time.perf_counter()
    if ctx.is_root and (pending or not baselines_current(ctx)):
        executor.prepare(ctx)
    if ctx.distributed is not None:  # the pretrained model is in the cache before any rank loads it
        ctx.distributed.barrier()
    results = executor.execute(pending, ctx)
    return GridOutcome(results_dir=ctx.results_dir, ran=len(pending), skipped=len(done),
                       seconds=time.perf_counter() - wall, failed=[r for r in results if r.status == "failed"],
                       csv=rebuild_csv(ctx.results_dir) if ctx.is_root else None)
