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

import math

import pytest
import torch

from dpbench.engine.trainer import DPTrainer, OptimSettings, prepare_model
from dpbench.models.diffusion import build_unet, make_noise_scheduler
from dpbench.privacy.accounting import PrivacyPlan
from dpbench.registry import METHODS, load_builtin_entries

load_builtin_entries()
BATCH = 32


def _trainer(method: str, private: bool) -> DPTrainer:
    torch.manual_seed(0)
    model = prepare_model(build_unet("tiny", 16, 1, 10), METHODS.get(method)(), 10, "cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, 1, 16, 16, generator=gen) * 2 - 1
    y = torch.randint(0, 10, (BATCH,), generator=gen)
    plan = PrivacyPlan(epsilon=1.0 if private else math.inf, delta=1e-5, accountant="rdp", sample_rate=1.0,
                       steps=10**9, expected_batch_size=BATCH, noise_multiplier=1.0 if private else 0.0,
                       max_grad_norm=1.0 if private else math.inf, noise_multiplicity=1,
                       physical_batch_size=BATCH, num_examples=BATCH)
    return DPTrainer(model, make_noise_scheduler(), x, y, plan, OptimSettings(ema_decay=None), 0, "cpu")


@pytest.mark.parametrize("mode", ["dp", "nonprivate"])
@pytest.mark.parametrize("method", ["full", "bias", "lora", "loda", "attention"])
def test_step(benchmark, method, mode):
    trainer = _trainer(method, mode == "dp")
    trainer.train_step()  # warm-up
    benchmark.pedantic(trainer.train_step, rounds=8, iterations=1, warmup_rounds=1)
