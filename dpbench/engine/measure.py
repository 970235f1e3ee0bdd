"""Cost of one DP-loop step at a full physical batch: peak memory and step time, measured apart.

Memory does not depend on the pixel values, so a :class:`StepProbe` runs the real DP loop (same
model copy, method, hooks, optimiser, K) on *random* images of the private data's shape: it costs no
privacy and can be repeated. Memory is the median over single-step peaks after a warm-up step (on
CPU, precise RSS accounting makes allocation slow, so timed steps run without it; see
dpbench/engine/memory.py). Measured this way the same step repeats to within ~1% in one process on CPU (up to 15% across fresh processes), where peaks
taken during real training varied by ±30% with the Poisson batch sizes of the first steps.

To compare DP with non-private steps, time them *interleaved* (:func:`time_interleaved`): on a
shared machine, drift between two back-to-back blocks of steps was larger than the effect measured.
"""

from __future__ import annotations

import copy
import math
import statistics
import time

import torch

from dpbench.engine.memory import PeakMemory


class StepProbe:
    """One DP-loop step of ``batch`` random examples, repeatable (q = 1: no Poisson variation)."""

    def __init__(self, model, scheduler, settings, device, *, batch: int, private: bool, image_shape: tuple,
                 num_classes: int, noise_multiplicity: int = 1, copy_model: bool = True, warmup: int = 1):
        from dpbench.engine.trainer import DPTrainer
        from dpbench.privacy.accounting import PrivacyPlan

        self.device, self.batch = torch.device(device), batch
        model = copy.deepcopy(model) if copy_model else model
        gen = torch.Generator().manual_seed(0)
        images = torch.rand((batch, *image_shape), generator=gen) * 2 - 1
        labels = torch.randint(0, num_classes, (batch,), generator=gen)
        plan = PrivacyPlan(epsilon=1.0 if private else math.inf, delta=1e-5, accountant="rdp", sample_rate=1.0,
                           steps=10**9, expected_batch_size=batch, noise_multiplier=1.0 if private else 0.0,
                           max_grad_norm=1.0 if private else math.inf, noise_multiplicity=noise_multiplicity,
                           physical_batch_size=batch, num_examples=batch)
        self.trainer = DPTrainer(model, scheduler, images, labels, plan, settings, 0, device)
        for _ in range(warmup):
            self.trainer.train_step()

    def memory(self, steps: int = 3) -> dict:
        peaks, reserved, nvml, kind = [], [], [], None
        for _ in range(steps):
            with PeakMemory(self.device) as mem:
                self.trainer.train_step()
            peaks.append(mem.peak_bytes)
            reserved.append(mem.reserved_bytes)
            nvml.append(mem.nvml_peak_bytes)
            kind = mem.kind
        return {
            "peak_memory_bytes": int(statistics.median(peaks)),
            "reserved_memory_bytes": max(reserved) if None not in reserved else None,
            "nvml_peak_memory_bytes": max(nvml) if None not in nvml else None,
            "memory_kind": kind,
        }

    def time_step(self) -> float:
        t0 = time.perf_counter()
        self.trainer.train_step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0

    def close(self) -> None:
        self.trainer.finish()


def time_interleaved(probes: list[StepProbe], steps: int) -> list[dict]:
    """Median step time of each probe, their steps alternating (A B A B ...) so drift hits all alike."""
    times = [[] for _ in probes]
    for _ in range(steps):
        for i, probe in enumerate(probes):
            times[i].append(probe.time_step())
    out = []
    for probe, ts in zip(probes, times):
        median = statistics.median(ts)
        out.append({"step_time_s": median, "examples_per_s": probe.batch / median})
    return out


def measure_step_memory(model, scheduler, settings, device, **probe_args) -> dict:
    """Peak memory of one step of the run's DP loop at a full physical batch (what result.json reports)."""
    probe = StepProbe(model, scheduler, settings, device, **probe_args)
    try:
        return probe.memory()
    finally:
        probe.close()
