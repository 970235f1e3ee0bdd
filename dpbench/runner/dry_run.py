"""`dpbench run SUITE --dry-run`: the grid, σ/q/T per cell, and estimated time and memory per run.

The estimate comes from a short probe on the current device: for every method, a few DP (or
non-private) steps of one physical batch of random images on the suite's architecture (random
weights: the cost does not depend on them), plus one sampling step. A logical step is
⌈B/physical⌉ physical steps, a run is T logical steps; sampling is its denoising steps times the
batches of samples. Evaluation and public pretraining are not included. Every number is an estimate.

The probe runs at the run's physical batch and, like a run, halves it while it runs out of memory;
``physical_batch_size: auto`` starts from the expected batch on a GPU. The table shows the batch the
estimate is for.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import torch

from dpbench.runner.context import RunnerSettings


def _sampling_seconds(model, suite, num_classes: int, device) -> float:
    s = suite.sampling
    batch = min(s.batch_size, s.num_samples)
    ref = suite.data.private
    x = torch.randn(batch, ref.channels, ref.image_size, ref.image_size, device=device)
    labels = torch.arange(batch, device=device) % num_classes
    t = torch.full((batch,), 500, device=device)
    with torch.no_grad():
        model(x, t, class_labels=labels)  # warm-up
        start = time.perf_counter()
        model(x, t, class_labels=labels)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    per_step = time.perf_counter() - start
    passes = 2 if s.guidance_scale > 0 else 1
    return per_step * passes * s.steps * math.ceil(s.num_samples / batch)


@dataclass(frozen=True)
class DryRun:
    """The planned runs with their estimates: ``str()`` is the table `--dry-run` prints, :meth:`to_json` what
    `--dry-run --json` prints (one object per run, then the totals)."""

    table: str
    runs: list[dict]
    device: str
    num_examples: int
    num_examples_exact: bool
    estimated_seconds: float

    def __str__(self) -> str:
        size = f"N={self.num_examples}" + ("" if self.num_examples_exact else " (nominal: the data is not present)")
        return (f"{self.table}\n{len(self.runs)} runs on {self.device}, {size}; estimated "
                f"{self.estimated_seconds / 60:.0f} min of training and sampling (estimates from a short probe with "
                "random weights; evaluation and public pretraining not included)")

    def to_json(self) -> str:
        return json.dumps({"runs": self.runs, "device": self.device, "num_examples": self.num_examples,
                           "num_examples_exact": self.num_examples_exact,
                           "estimated_seconds": self.estimated_seconds}, indent=2)


def dry_run(settings: RunnerSettings, only: list[str]) -> DryRun:
    from dpbench.config.suite import load_suite
    from dpbench.data.base import dataset_num_classes, dataset_train_size
    from dpbench.engine.measure import StepProbe, time_interleaved
    from dpbench.models.diffusion import build_unet, make_noise_scheduler
    from dpbench.registry import METHODS
    from dpbench.reporting.tables import text_table
    from dpbench.runner.batch_size import halving_on_out_of_memory
    from dpbench.runner.devices import resolve_device
    from dpbench.runner.plan import apply_filters, plan_runs

    suite = load_suite(settings.suite_path, settings.overrides)
    device = resolve_device(settings.device or suite.device)
    ref = suite.data.private
    root = suite.data_root(ref, settings.data_root)
    num_examples, exact = dataset_train_size(ref, root)
    num_classes = dataset_num_classes(ref, root)
    planned = apply_filters(plan_runs(suite, settings.data_root, num_examples), list(only), spec=lambda p: p.spec)
    if suite.model.preset is None:
        from dpbench.models.pretrain import load_pretrained

        model = load_pretrained(suite, data_root=settings.data_root, cache_dir=settings.cache_dir).model
    else:
        torch.manual_seed(0)
        model = build_unet(suite.model.preset, ref.image_size, ref.channels, num_classes)
    sampling = _sampling_seconds(model.to(device).eval(), suite, num_classes, device)
    probes: dict = {}
    rows, records, total_seconds = [], [], 0.0
    for p in planned:
        step = p.plan.step
        key = (p.spec.method_key, step.private)
        if key not in probes:
            def measure(batch: int, p=p, step=step) -> tuple[float, int]:
                probe = StepProbe(model, METHODS.get(p.spec.method)(p.method.options), num_classes,
                                  make_noise_scheduler(), p.training, device, batch=batch, private=step.private,
                                  image_shape=(ref.channels, ref.image_size, ref.image_size),
                                  noise_multiplicity=step.noise_multiplicity, warmup=1, clipping=step.clipping)
                try:
                    return (time_interleaved([probe], 2)[0]["step_time_s"],
                            probe.memory(steps=1)["total_peak_memory_bytes"])
                finally:
                    probe.close()

            auto = p.physical_batch == "auto" and device.type == "cuda"
            start = step.expected_batch_size if auto else step.physical_batch_size
            probes[key] = halving_on_out_of_memory(measure, start, p.training.min_physical_batch_size)
        (seconds, memory), physical = probes[key]
        train = seconds * math.ceil(step.expected_batch_size / physical) * step.steps
        total_seconds += train + sampling
        sigma = f"{p.plan.budget.noise_multiplier:.4g}" if step.private else "—"
        rows.append([p.spec.run_id, sigma, f"{step.sample_rate:.4g}", step.steps, step.clipping.mode, physical,
                     f"{train / 60:.1f} min", f"{sampling / 60:.1f} min", f"{memory / 2**20:.0f} MiB"])
        records.append({**p.as_row(), "physical_batch_size": physical, "estimated_train_seconds": train,
                        "estimated_sampling_seconds": sampling, "estimated_peak_memory_bytes": memory})
    table = text_table(["run", "σ", "q", "T", "clipping", "physical batch", "train (est.)", "sampling (est.)",
                        "peak memory (est.)"], rows)
    return DryRun(table, records, str(device), num_examples, exact, total_seconds)
