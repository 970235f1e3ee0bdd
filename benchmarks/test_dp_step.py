"""pytest-benchmark: one DP logical step (and its non-private twin) per method on the `tiny` preset.

Not part of the default test run (`testpaths = tests`). Run and compare with the committed CPU
baseline:

    python -m pytest benchmarks --benchmark-only --benchmark-storage=file://benchmarks/baseline --benchmark-compare

Refresh the baseline (on the reference machine, nothing else running):

    python -m pytest benchmarks --benchmark-only --benchmark-storage=file://benchmarks/baseline --benchmark-save=cpu

Absolute times depend on the machine; the DP/non-private ratio of the same method in the same run
is what `dpbench profile` / `dpbench regress` compare across machines.
"""

from __future__ import annotations

import pytest
import torch

from dpbench.engine.measure import StepProbe
from dpbench.engine.trainer import OptimSettings, prepare_model
from dpbench.models.diffusion import build_unet, make_noise_scheduler
from dpbench.registry import METHODS

BATCH = 32


@pytest.mark.parametrize("mode", ["dp", "nonprivate"])
@pytest.mark.parametrize("method", ["full", "bias", "lora", "loda", "attention"])
def test_step(benchmark, method, mode):
    torch.manual_seed(0)
    model = prepare_model(build_unet("tiny", 16, 1, 10), METHODS.get(method)(), 10, "cpu")
    probe = StepProbe(model, make_noise_scheduler(), OptimSettings(ema_decay=None), "cpu", batch=BATCH,
                      private=mode == "dp", image_shape=(1, 16, 16), num_classes=10, copy_model=False)
    benchmark.pedantic(probe.trainer.train_step, rounds=8, iterations=1, warmup_rounds=1)
    probe.close()
