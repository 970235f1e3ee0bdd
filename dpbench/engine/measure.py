"""Cost of one DP-loop step at a full physical batch: step time and peak memory, measured apart.

Memory does not depend on the pixel values, so this runs the real DP loop (same model, method,
hooks, optimiser, K) on *random* images of the private data's shape: it costs no privacy and can
be repeated. Memory is the median over single-step peaks after a warm-up step (on CPU, precise RSS
accounting makes allocation slow, so the timed steps run separately; see dpbench/engine/memory.py).
Measured this way the same step repeats to within ~1% on CPU, where peaks taken during real
training varied by ±30% with the Poisson batch sizes of the first steps.
"""

from __future__ import annotations

import copy
import math
import statistics
import time

import torch

from dpbench.engine.memory import PeakMemory


def measure_step_cost(model, scheduler, settings, device, *, batch: int, private: bool, image_shape: tuple,
                      num_classes: int, noise_multiplicity: int = 1, memory_steps: int = 3, timed_steps: int = 0,
                      warmup: int = 1, copy_model: bool = True) -> dict:
    """Peak memory (and, if ``timed_steps``, median step time) of one logical step of ``batch`` examples."""
    from dpbench.engine.trainer import DPTrainer
    from dpbench.privacy.accounting import PrivacyPlan

    device = torch.device(device)
    model = copy.deepcopy(model) if copy_model else model
    gen = torch.Generator().manual_seed(0)
    images = torch.rand((batch, *image_shape), generator=gen) * 2 - 1
    labels = torch.randint(0, num_classes, (batch,), generator=gen)
    plan = PrivacyPlan(epsilon=1.0 if private else math.inf, delta=1e-5, accountant="rdp", sample_rate=1.0,
                       steps=10**9, expected_batch_size=batch, noise_multiplier=1.0 if private else 0.0,
                       max_grad_norm=1.0 if private else math.inf, noise_multiplicity=noise_multiplicity,
                       physical_batch_size=batch, num_examples=batch)
    trainer = DPTrainer(model, scheduler, images, labels, plan, settings, 0, device)
    for _ in range(warmup):
        trainer.train_step()
    peaks, reserved, nvml, kind = [], [], [], None
    for _ in range(memory_steps):
        with PeakMemory(device) as memory:
            trainer.train_step()
        peaks.append(memory.peak_bytes)
        reserved.append(memory.reserved_bytes)
        nvml.append(memory.nvml_peak_bytes)
        kind = memory.kind
    times = []
    for _ in range(timed_steps):
        t0 = time.perf_counter()
        trainer.train_step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    trainer.finish()
    step_time = statistics.median(times) if times else None
    return {
        "peak_memory_bytes": int(statistics.median(peaks)) if peaks else None,
        "reserved_memory_bytes": max(reserved) if reserved and None not in reserved else None,
        "nvml_peak_memory_bytes": max(nvml) if nvml and None not in nvml else None,
        "memory_kind": kind,
        "step_time_s": step_time,
        "examples_per_s": batch / step_time if step_time else None,
    }
