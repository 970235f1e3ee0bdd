"""What a planned run of a suite trains: its model recipe and its trainer's settings, from one place.

A run (dpbench/runner/single_run.py), the audit of that run (dpbench/audit/run.py) and the probes that size and
measure it (dpbench/runner/batch_size.py, dpbench/engine/measure.py) must all prepare the same model the
same way: the suite's pretrained model, the run's method and options, the suite's noise scheduler, the
run's seed. Written here once, on top of the engine's :class:`~dpbench.engine.setup.ModelRecipe`.
"""

from __future__ import annotations

from typing import Optional

from dpbench.engine.setup import ModelRecipe
from dpbench.engine.trainer import TrainerSetup
from dpbench.privacy.accounting import DPStep
from dpbench.runner.context import RunContext
from dpbench.runner.plan import PlannedRun


def run_recipe(ctx: RunContext, planned: PlannedRun) -> ModelRecipe:
    """The suite's pretrained model for the run's method (options validated), with the suite's scheduler."""
    from dpbench.models.diffusion import make_noise_scheduler

    model = ctx.suite.model
    return ModelRecipe.of(ctx.pretrained.model, planned.spec.method, planned.method.options, ctx.num_classes,
                          ctx.device, scheduler=make_noise_scheduler(model.num_train_timesteps, model.beta_schedule))


def run_trainer_setup(ctx: RunContext, planned: PlannedRun, step: Optional[DPStep] = None) -> TrainerSetup:
    """The run's step (``step`` where the run changed it: another physical batch, canaries in the
    population), training settings, seed and budget; reproducible randomness only where the suite asks."""
    return TrainerSetup(step if step is not None else planned.plan.step, planned.training, planned.spec.seed,
                        budget=planned.plan.budget, reproducible=ctx.suite.privacy.reproducible)
