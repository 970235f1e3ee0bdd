"""pytest-benchmark: one DP logical step (and its non-private twin) per method on the `tiny` preset.

Not part of the default test run (`testpaths = tests`). `tox -e bench` runs it with the committed CPU
baseline for comparison (absolute times are machine-specific, so this part reports, it does not fail);
benchmarks/test_dp_overhead.py is the part that fails on a regression of the DP/non-private ratio.

Refresh the baseline (on the reference machine, nothing else running):

    python -m pytest benchmarks/test_dp_step.py --benchmark-only --benchmark-storage=file://benchmarks/baseline --benchmark-save=cpu
"""

from __future__ import annotations

import pytest
import torch

from dpbench.config.suite import TrainingSettings
from dpbench.engine.measure import StepProbe
from dpbench.engine.setup import ModelRecipe
from dpbench.models.diffusion import build_unet, make_noise_scheduler

BATCH = 32


@pytest.mark.parametrize("mode", ["dp", "nonprivate"])
@pytest.mark.parametrize("method", ["full", "bias", "lora", "loda", "attention"])
def test_step(benchmark, method, mode):
    torch.manual_seed(0)
    recipe = ModelRecipe.of(build_unet("tiny", 16, 1, 10), method, None, 10, "cpu", scheduler=make_noise_scheduler())
    probe = StepProbe(recipe, TrainingSettings(ema_decay=None), batch=BATCH, private=mode == "dp",
                      image_shape=(1, 16, 16))
    benchmark.pedantic(probe.trainer.train_step, rounds=8, iterations=1, warmup_rounds=1)
    probe.close()
