"""The DP step's total peak memory next to the non-private total, per method — a benchmark that can fail.

Memory ratios are robust on a shared machine (what a step allocates does not depend on what else runs),
so each method's DP total / non-private total, measured in one process with the probes of
dpbench/engine/measure.py (weights + optimizer state + the engine's buffers kept between steps + the
step's measured peak), is compared with the committed baseline ``benchmarks/baseline/dp_memory_cpu.json``
on two settings (issue 20):

- ``ddpm32``: 36M parameters, 32×32×3, physical batch 8 — targets: full ≤ 1.3×, every PEFT method
  ≤ 1.15×, LoDA's DP total ≤ 0.5× full's DP total;
- ``small``: 1.2M parameters, 28×28×1, physical batch 32 — targets: every PEFT method ≤ 1.15×.

One warm-up step, then one measured step per probe (a step's peak repeats to ~1% in one process).

FAIL when a ratio exceeds its baseline by more than ``TOLERANCE`` (5%), or exceeds its target where the
baseline met it. A target the baseline misses is printed as missed, not asserted: the baseline records
where the engine stands, and the test fails as soon as it gets worse. Book-keeping's per-layer rule is
the default (``memory``); full fine-tuning is measured under the ``time`` rule as well, side by side.

Refresh the baseline (nothing else running is not needed for memory):
``DPBENCH_REFRESH_BASELINE=1 python -m pytest benchmarks/test_dp_memory.py -s``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from dpbench.config.suite import TrainingSettings
from dpbench.engine.measure import StepProbe
from dpbench.engine.setup import ModelRecipe
from dpbench.models.diffusion import build_unet, make_noise_scheduler

BASELINE = Path(__file__).parent / "baseline" / "dp_memory_cpu.json"
TOLERANCE = 0.05
PEFT = ("loda", "lora", "bias", "attention")
SETTINGS = {  # name: (preset, image size, channels, physical batch, targets)
    "ddpm32": ("ddpm32", 32, 3, 8, {"full": 1.3, **{m: 1.15 for m in PEFT}}),
    "small": ("small", 28, 1, 32, {"full": None, **{m: 1.15 for m in PEFT}}),
}
LODA_VS_FULL_TARGET = 0.5  # at ddpm32
MIB = 2**20


def total_peak(model, method: str, private: bool, setting: str, rule: str = "memory") -> int:
    _, size, channels, batch, _ = SETTINGS[setting]
    training = TrainingSettings(ema_decay=None, bookkeeping_rule=rule)
    probe = StepProbe(ModelRecipe.of(model, method, None, 10, "cpu", scheduler=make_noise_scheduler()), training,
                      batch=batch, private=private, image_shape=(channels, size, size), warmup=1)
    try:
        return probe.memory(steps=1)["total_peak_memory_bytes"]
    finally:
        probe.close()


def measure(setting: str) -> dict:
    preset, size, channels, _, targets = SETTINGS[setting]
    torch.manual_seed(0)
    model = build_unet(preset, size, channels, 10)
    out = {}
    for method in targets:
        nonprivate, dp = total_peak(model, method, False, setting), total_peak(model, method, True, setting)
        out[method] = {"ratio": dp / nonprivate, "dp_total_mib": dp / MIB, "nonprivate_total_mib": nonprivate / MIB}
        print(f"{setting} {method}: DP {dp / MIB:.1f} MiB / non-private {nonprivate / MIB:.1f} MiB = "
              f"{dp / nonprivate:.2f}×", flush=True)
    time_rule = total_peak(model, "full", True, setting, rule="time")
    out["full"]["dp_total_mib_time_rule"] = time_rule / MIB
    out["full"]["ratio_time_rule"] = time_rule / MIB / out["full"]["nonprivate_total_mib"]
    return out


def refresh(setting: str, measured: dict) -> None:
    stored = json.loads(BASELINE.read_text()) if BASELINE.is_file() else {}
    preset, size, channels, batch, targets = SETTINGS[setting]
    for method, target in targets.items():
        measured[method]["target"] = target
        measured[method]["target_met"] = target is not None and measured[method]["ratio"] <= target
    stored[setting] = {"setting": f"{preset} {size}x{size}x{channels} batch {batch}, bookkeeping memory rule "
                                  "(full also under the time rule)", "methods": measured}
    BASELINE.write_text(json.dumps(stored, indent=2) + "\n")


@pytest.fixture(scope="module", params=list(SETTINGS))
def measured(request) -> tuple[str, dict]:
    result = measure(request.param)
    if os.environ.get("DPBENCH_REFRESH_BASELINE"):
        refresh(request.param, result)
    return request.param, result


def test_dp_memory_has_not_regressed(measured):
    setting, result = measured
    baseline = json.loads(BASELINE.read_text())[setting]["methods"]
    failures = []
    for method, target in SETTINGS[setting][4].items():
        ratio, stored = result[method]["ratio"], baseline[method]
        met = "met" if target is not None and ratio <= target else "MISSED"
        print(f"{setting} {method}: DP/non-private total {ratio:.2f}× (baseline {stored['ratio']:.2f}×"
              + (f", target ≤ {target}×: {met})" if target is not None else ")"))
        if ratio > stored["ratio"] * (1 + TOLERANCE):
            failures.append(f"{method} {ratio:.3f}× vs baseline {stored['ratio']:.3f}×")
        if stored.get("target_met") and ratio > target:
            failures.append(f"{method} {ratio:.3f}× above its target {target}× (met by the baseline)")
    assert not failures, f"{setting}: " + "; ".join(failures)


def test_memory_rule_holds_full_below_the_time_rule(measured):
    setting, result = measured
    full = result["full"]
    print(f"{setting} full DP total: memory rule {full['dp_total_mib']:.1f} MiB, time rule "
          f"{full['dp_total_mib_time_rule']:.1f} MiB (non-private {full['nonprivate_total_mib']:.1f} MiB)")
    assert full["dp_total_mib"] < full["dp_total_mib_time_rule"]


def test_loda_vs_full_dp_memory(measured):
    """LoDA's DP total against full's. The ratio is a finding about the methods, and it rises whenever the
    engine serves full fine-tuning better (0.53× → 0.56× when full's convolutions stopped forming a batch
    weight gradient in the backward), so what fails is LoDA's own DP total growing past its baseline; the
    target is asserted only where the baseline met it."""
    setting, result = measured
    if setting != "ddpm32":
        pytest.skip("the LoDA/full target is stated at ddpm32")
    ratio = result["loda"]["dp_total_mib"] / result["full"]["dp_total_mib"]
    stored = json.loads(BASELINE.read_text())[setting]["methods"]
    baseline = stored["loda"]["dp_total_mib"] / stored["full"]["dp_total_mib"]
    met = "met" if ratio <= LODA_VS_FULL_TARGET else "MISSED"
    print(f"ddpm32 LoDA / full DP total: {ratio:.2f}× (baseline {baseline:.2f}×, target ≤ {LODA_VS_FULL_TARGET}×: {met})")
    assert result["loda"]["dp_total_mib"] <= stored["loda"]["dp_total_mib"] * (1 + TOLERANCE)
    if baseline <= LODA_VS_FULL_TARGET:
        assert ratio <= LODA_VS_FULL_TARGET
