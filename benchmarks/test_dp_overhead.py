"""The DP step's cost next to the non-private step, per method — a benchmark that can fail.

Absolute step times depend on the machine; the ratio DP / non-private of the same method, measured in
the same process with the steps interleaved (dpbench/engine/measure.py), does not (much). Each method's
ratio on the issue's reference setting (`small` preset, 28×28, physical batch 32, the default
per-example gradient engine) is compared with the committed baseline
``benchmarks/baseline/dp_overhead_cpu.json``:

- FAIL when a ratio exceeds its baseline by more than ``TOLERANCE`` (25%: CPU step times on a shared
  2-core machine vary by ±20% between invocations; interleaving removes most of it from the ratio);
- FAIL when a ratio exceeds the target the project committed to (1.25× for adapter methods, 1.5× for
  full fine-tuning; issue 11).

Refresh the baseline (on the reference machine, nothing else running), then the README's table from it:
``DPBENCH_REFRESH_BASELINE=1 python -m pytest benchmarks/test_dp_overhead.py && dpbench docs``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dpbench.config.suite import TrainingSettings
from dpbench.engine.measure import StepProbe, time_interleaved
from dpbench.engine.setup import ModelRecipe
from dpbench.models.diffusion import build_unet, make_noise_scheduler
from dpbench.results import DpOverheadBaseline, read_model, write_model

BASELINE = Path(__file__).parent / "baseline" / "dp_overhead_cpu.json"
TOLERANCE = 0.25
TARGET = {"full": 1.5, "lora": 1.25, "loda": 1.25, "bias": 1.25, "attention": 1.25}
PRESET, IMAGE_SIZE, BATCH, STEPS = "small", 28, 32, 8


@pytest.fixture(scope="module")
def measured() -> dict:
    torch.manual_seed(0)
    model = build_unet(PRESET, IMAGE_SIZE, 1, 10)
    training = TrainingSettings(ema_decay=None)
    # Every method's DP and non-private probe in one interleaved loop: the ratios and the comparison of
    # step times *between* methods (LoDA vs full) then see the same machine state.
    cases = [(method, private) for method in TARGET for private in (True, False)]
    probes = [StepProbe(ModelRecipe.of(model, method, None, 10, "cpu", scheduler=make_noise_scheduler()), training,
                        batch=BATCH, private=private, image_shape=(1, IMAGE_SIZE, IMAGE_SIZE), warmup=2)
              for method, private in cases]
    timed = dict(zip(cases, time_interleaved(probes, STEPS)))
    for probe in probes:
        probe.close()
    out = {}
    for method in TARGET:
        dp, nonprivate = timed[method, True], timed[method, False]
        out[method] = {"ratio": dp["step_time_s"] / nonprivate["step_time_s"], "dp_step_time_s": dp["step_time_s"],
                       "nonprivate_step_time_s": nonprivate["step_time_s"]}
    if os.environ.get("DPBENCH_REFRESH_BASELINE"):
        # The README's DP-engine table is generated from this file (`dpbench docs`): refresh both together.
        write_model(BASELINE, DpOverheadBaseline(
            setting=f"{PRESET} {IMAGE_SIZE}x{IMAGE_SIZE} batch {BATCH}, {torch.get_num_threads()} threads",
            methods={method: {**values, "target": TARGET[method]} for method, values in out.items()}))
    return out


@pytest.mark.parametrize("method", list(TARGET))
def test_dp_overhead_has_not_regressed(measured, method):
    baseline = read_model(BASELINE, DpOverheadBaseline).methods[method].ratio
    ratio = measured[method]["ratio"]
    print(f"{method}: DP / non-private {ratio:.3f}× (baseline {baseline:.3f}×, target ≤ {TARGET[method]}×)")
    assert ratio <= baseline * (1 + TOLERANCE), f"{method}: DP/non-private {ratio:.3f}× vs baseline {baseline:.3f}×"
    assert ratio <= TARGET[method], f"{method}: DP/non-private {ratio:.3f}× above the target {TARGET[method]}×"


def test_loda_is_cheaper_than_full_under_dp_at_scale():
    """The paper's throughput claim, on this engine, at the scale it is made for: LoDA's DP step is faster
    than full fine-tuning's on ddpm32 (36M parameters, 32×32×3, batch 8; interleaved). On the 1.2M-parameter
    `small` preset above the two are level since full's convolutions stopped forming the weight gradient
    twice (measured 517 ms full vs 525 ms LoDA): LoDA's many rank-r convolutions cost more per FLOP there,
    and the README's scaling table shows where LoDA pulls ahead."""
    torch.manual_seed(0)
    model = build_unet("ddpm32", 32, 3, 10)
    probes = [StepProbe(ModelRecipe.of(model, method, None, 10, "cpu", scheduler=make_noise_scheduler()),
                        TrainingSettings(ema_decay=None), batch=8, private=True, image_shape=(3, 32, 32), warmup=1)
              for method in ("loda", "full")]
    loda, full = time_interleaved(probes, 3)
    for probe in probes:
        probe.close()
    print(f"ddpm32 DP step: loda {loda['step_time_s'] * 1e3:.0f} ms, full {full['step_time_s'] * 1e3:.0f} ms")
    assert loda["step_time_s"] < full["step_time_s"]
