"""Cost of one DP-loop step at a full physical batch: peak memory and step time, measured apart.

Memory does not depend on the pixel values, so a :class:`StepProbe` runs the real DP loop (a fresh
copy of the model prepared by the method from a :class:`~dpbench.engine.setup.ModelRecipe`, the run's
backend, optimiser, EMA and K) on *random* images of the private data's shape: it costs no privacy and
can be repeated. Two numbers:

- ``peak_memory_bytes``: the step alone, above what was allocated before it (median of 3 single-step
  peaks after warm-up steps), which isolates the DP step's own cost;
- ``total_peak_memory_bytes``: the peak of training in total — what training holds between steps
  (weights, optimizer state such as Adam's 2×P for full fine-tuning, EMA, the clipping engine's
  persistent per-example buffers) plus that step peak
  (activations, per-sample state); what a user pays. CUDA: the held part is measured (allocated bytes
  from before the model copy; the reserved peak is recorded too). CPU: the held part is counted from
  the tensors (resident-set deltas of allocations this size were not repeatable), the step is the
  measured resident-set peak.

On CPU precise RSS accounting makes allocation slow, so timed steps run without it (see memory.py).
Measured this way the same step repeats to within ~1% in one process on CPU (up to 15% across fresh
processes). To compare DP with non-private steps, time them *interleaved* (:func:`time_interleaved`):
on a shared machine, drift between two back-to-back blocks of steps was larger than the effect measured.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import TYPE_CHECKING

import torch

from dpbench.engine.memory import PeakMemory, resident_bytes

if TYPE_CHECKING:
    from dpbench.engine.setup import ModelRecipe


def probe_step(batch: int, private: bool, noise_multiplicity: int = 1, clipping=None):
    """A DP step configuration for probes: q = 1 (every step is a full physical batch), σ = 1."""
    from dpbench.privacy.accounting import ClippingRule, DPStep

    if clipping is None or not private:
        clipping = ClippingRule(mode="fixed", max_grad_norm=1.0) if private else ClippingRule(mode="none", max_grad_norm=math.inf)
    return DPStep(private=private, noise_multiplier=1.0 if private else 0.0, clipping=clipping, sample_rate=1.0,
                  steps=1 << 62, expected_batch_size=batch, physical_batch_size=batch,
                  noise_multiplicity=noise_multiplicity, num_examples=batch)


def optimizer_state_copies(training) -> int:
    """Copies of the trainable parameters the optimiser keeps: Adam(W) 2, SGD with momentum 1, plain SGD 0."""
    if training.optimizer == "sgd":
        return 0 if training.momentum == 0 else 1
    return 2


def memory_breakdown(trainer) -> dict[str, int]:
    """Analytic bytes, so a reader sees *why* one method uses less than another."""
    params = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in trainer.params)
    s = trainer.training
    states = optimizer_state_copies(s)
    out = {"parameters": params, "trainable": trainable, "optimizer_state": states * trainable,
           "ema": trainable if trainer.ema is not None else 0}
    if trainer.backend is not None:
        per_example = getattr(trainer.backend, "per_example_bytes", None)
        out["per_sample_gradients"] = int(per_example() if per_example else trainable) * trainer.config.physical_batch_size
    return out


class StepProbe:
    """One DP-loop step of ``batch`` random examples, repeatable (q = 1: no Poisson variation)."""

    def __init__(self, recipe: "ModelRecipe", training, *, batch: int, private: bool, image_shape: tuple,
                 noise_multiplicity: int = 1, warmup: int = 1, clipping=None):
        from dpbench.engine.trainer import TrainerSetup

        self.device, self.batch = recipe.device, batch
        gen = torch.Generator().manual_seed(0)
        images = torch.rand((batch, *image_shape), generator=gen) * 2 - 1
        labels = torch.randint(0, recipe.num_classes, (batch,), generator=gen)
        step = probe_step(batch, private, noise_multiplicity, clipping)
        # A probe measures exactly ``batch``: running out of memory is its answer, not a reason to halve.
        training = training.model_copy(update={"min_physical_batch_size": batch})
        before = resident_bytes(self.device) if self.device.type == "cuda" else 0
        with PeakMemory(self.device) as warmup_window:
            model = recipe.prepare(seed=0)
            self.trainer = recipe.trainer(model, images, labels, TrainerSetup(step, training, seed=0))
            for _ in range(max(1, warmup)):
                self.trainer.train_step()
        self.total_reserved_bytes = warmup_window.reserved_bytes
        if self.device.type == "cuda":
            self.held_between_steps = max(0, resident_bytes(self.device) - before)
        else:
            # The process's resident set moved by ±50% between probes of the same method (glibc reuses
            # freed heap pages for the many small tensors): on CPU what training holds between steps is
            # counted exactly instead — the model copy, optimizer state, EMA and the buffers the clipping
            # engine keeps from step to step (book-keeping's per-example gradient workspaces: allocated in
            # the warm-up, they are resident before a measured step starts, so its peak does not see them)
            # — and only the step is measured.
            held = memory_breakdown(self.trainer)
            backend = self.trainer.backend
            self.held_between_steps = (held["parameters"] + held["optimizer_state"] + held["ema"]
                                       + (backend.held_bytes() if backend is not None else 0))

    def memory(self, steps: int = 3) -> dict:
        peaks, nvml, kind = [], [], None
        for _ in range(steps):
            with PeakMemory(self.device) as mem:
                self.trainer.train_step()
            peaks.append(mem.peak_bytes)
            nvml.append(mem.nvml_peak_bytes)
            kind = mem.kind
        step_peak = int(statistics.median(peaks))
        return {
            "peak_memory_bytes": step_peak,
            "total_peak_memory_bytes": self.held_between_steps + step_peak,
            "reserved_memory_bytes": self.total_reserved_bytes,
            "nvml_peak_memory_bytes": max(nvml) if None not in nvml else None,
            "memory_kind": kind,
            "memory_breakdown": memory_breakdown(self.trainer),
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


def measure_step_memory(recipe: "ModelRecipe", training, **probe_args) -> dict:
    """Peak memory of the run's DP loop at a full physical batch (what result.json reports)."""
    probe = StepProbe(recipe, training, **probe_args)
    try:
        return probe.memory()
    finally:
        probe.close()
