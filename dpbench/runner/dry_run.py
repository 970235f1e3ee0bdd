"""`dpbench run SUITE --dry-run`: the grid, σ/q/T per run, and what the suite will cost — before any work.

Memory is analytic (weights, optimiser state, EMA and the per-example gradients a DP step could hold
at the physical batch; activations not included): an upper bound on what the clipping engine adds,
computed from the model's parameter counts, so a GPU suite gets it on a laptop too.

Time is an estimate from short probes on *random* data with random weights (the cost does not depend
on them), on this machine, of every phase a `dpbench run` goes through:

- public pretraining (when the pretrained model is not cached): pretrain.steps plain training steps;
- per run: T logical steps of ⌈B / physical⌉ physical DP (or non-private) steps, timed per method
  after a warm-up step at a probe batch ≤ 64 and scaled per example; the run's memory measurement
  (a warm-up and three steps, once per method and kind of run); sampling (its denoising steps times
  the batches of samples); evaluation (the downstream classifier's epochs over the samples, for every
  classifier seed, plus FID features);
- the suite's baselines once (the pretrained model sampled and evaluated; the classifier on the real
  private images).

A suite this machine cannot run (no CUDA, no torch-fidelity, ...) is dry-run without the time: the
grid, the privacy numbers and the analytic memory, and a plain statement why time is not estimated.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from dpbench.runner.context import RunnerSettings

PROBE_BATCH = 64  # examples per probe step; scaled per example to the physical batch
PROBE_IMAGES = 128  # images timed through the classifier and the FID backbone


@dataclass
class RunEstimate:
    row: dict
    physical_batch: int
    memory_bytes: int
    train_s: Optional[float] = None
    sample_s: Optional[float] = None
    eval_s: Optional[float] = None

    @property
    def total_s(self) -> Optional[float]:
        parts = (self.train_s, self.sample_s, self.eval_s)
        return None if None in parts else sum(parts)


@dataclass
class DryRun:
    device: str
    num_examples: int
    num_examples_exact: bool
    runs: list[RunEstimate]
    time_estimated: bool
    notes: list[str] = field(default_factory=list)
    pretrain_s: Optional[float] = None
    baselines_s: Optional[float] = None
    probe_seconds: float = 0.0

    @property
    def total_s(self) -> Optional[float]:
        if not self.time_estimated:
            return None
        return sum(r.total_s for r in self.runs) + (self.pretrain_s or 0.0) + (self.baselines_s or 0.0)

    def as_json(self) -> dict:
        runs = [{**r.row, "physical_batch_size": r.physical_batch, "estimated_memory_bytes": r.memory_bytes,
                 "estimated_seconds": r.total_s,
                 "estimated_phase_seconds": {"train": r.train_s, "sample": r.sample_s, "evaluate": r.eval_s}}
                for r in self.runs]
        return {"device": self.device, "num_examples": self.num_examples,
                "num_examples_source": "data" if self.num_examples_exact else "nominal",
                "time_estimated": self.time_estimated, "pretrain_estimated_seconds": self.pretrain_s,
                "baselines_estimated_seconds": self.baselines_s, "total_estimated_seconds": self.total_s,
                "memory_estimate": "analytic: weights + optimiser state + EMA + per-example gradients at the physical "
                                   "batch (an upper bound for book-keeping); activations not included",
                "notes": self.notes, "runs": runs}


def analytic_memory_bytes(model: torch.nn.Module, training, private: bool, physical: int, k: int) -> int:
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    from dpbench.engine.measure import optimizer_state_copies

    states = optimizer_state_copies(training)
    ema = trainable if training.ema_decay is not None else 0
    per_example = trainable * physical * k if private else trainable  # a plain step holds one gradient
    return params + states * trainable + ema + per_example


def _timed(fn, repeats: int = 2) -> float:
    """Median seconds of ``fn`` after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


class _Costs:
    """Per-unit costs measured once per dry run: a forward of the sampler, a classifier step, FID features."""

    def __init__(self, model, suite, num_classes: int, device: torch.device):
        from dpbench.evaluation.classifiers import ClassifierTraining, train_and_evaluate
        from dpbench.evaluation.features import extract_features

        ref, s, e = suite.data.private, suite.sampling, suite.evaluation
        shape = (ref.channels, ref.image_size, ref.image_size)
        gen = torch.Generator().manual_seed(0)
        batch = min(s.batch_size, s.num_samples)
        x = torch.randn(batch, *shape, generator=gen).to(device)
        labels = (torch.arange(batch) % num_classes).to(device)
        t = torch.full((batch,), 500, device=device)
        with torch.no_grad():
            forward = _timed(lambda: model(x, t, class_labels=labels), repeats=1)
        passes = 2 if s.guidance_scale > 0 else 1
        self.sample_s = forward * passes * s.steps * math.ceil(s.num_samples / batch)

        n = min(PROBE_IMAGES, max(e.classifier_batch_size, 16))
        images = torch.rand(n, *shape, generator=gen) * 2 - 1
        targets = torch.arange(n) % num_classes
        one_epoch = _timed(lambda: train_and_evaluate(
            ClassifierTraining(e.classifier, seeds=[0], epochs=1, batch_size=e.classifier_batch_size,
                               lr=e.classifier_lr),
            images, targets, images[:16], targets[:16], num_classes, device=str(device)), repeats=1)
        self.classifier_per_image_epoch = one_epoch / n
        self.features_per_image = _timed(lambda: extract_features(e.fid_backbone, images, device=str(device)),
                                         repeats=1) / n

    def evaluation_s(self, suite, num_train_images: int, num_test: int) -> float:
        e = suite.evaluation
        seeds = len(e.classifier_seeds)
        train = seeds * e.classifier_epochs * num_train_images * self.classifier_per_image_epoch
        test = seeds * num_test * self.classifier_per_image_epoch / 3  # a forward costs about a third of a step
        return train + test + num_train_images * self.features_per_image


def dry_run(settings: RunnerSettings, only: list[str]) -> DryRun:
    from dpbench.data.base import dataset_num_classes, dataset_train_size
    from dpbench.engine.setup import ModelRecipe
    from dpbench.models.diffusion import build_unet
    from dpbench.runner.devices import resolve_device
    from dpbench.runner.plan import apply_filters, plan_runs
    from dpbench.runner.requirements import missing_requirements

    start = time.perf_counter()
    suite = settings.suite
    ref = suite.data.private
    root = suite.data_root(ref, settings.data_root)
    num_examples, exact = dataset_train_size(ref, root)
    num_classes = dataset_num_classes(ref, root)
    planned = apply_filters(plan_runs(suite, settings.data_root, num_examples), list(only), spec=lambda p: p.spec)
    problems = missing_requirements(suite, settings.device)
    device = resolve_device(settings.device or suite.device) if not problems else torch.device("cpu")
    notes = [] if exact else [f"the private data is not under {root or 'any data root'}: σ, q and T assume the "
                              f"dataset's nominal N={num_examples}"]
    if problems:
        notes.append("time not estimated: this machine cannot run the suite (" + "; ".join(problems) + ") — dry-run it "
                     "on the machine it is meant for")
    if suite.model.preset is None:
        notes.append("model.pretrained: memory from the preset is not available, and time needs the model — "
                     "estimates skipped")
        return DryRun(str(device), num_examples, exact, [_bare(p, exact) for p in planned], False, notes)

    torch.manual_seed(0)
    model = build_unet(suite.model.preset, ref.image_size, ref.channels, num_classes).to(device).eval()
    estimates, prepared = [], {}
    for p in planned:
        step = p.plan.step
        if p.spec.method_label not in prepared:
            prepared[p.spec.method_label] = ModelRecipe.of(model, p.spec.method, p.method.options, num_classes,
                                                         device).prepare()
        physical = step.physical_batch_size
        if p.physical_batch == "auto" and device.type == "cuda":
            physical = step.expected_batch_size  # the probe a run makes would start here
        memory = analytic_memory_bytes(prepared[p.spec.method_label], p.training, step.private, physical,
                                       step.noise_multiplicity)
        estimates.append(RunEstimate(_row(p, exact), physical, memory))
    result = DryRun(str(device), num_examples, exact, estimates, not problems, notes)
    if problems:
        return result
    _estimate_time(result, planned, suite, settings, model, num_classes, num_examples, device)
    result.probe_seconds = time.perf_counter() - start
    return result


def _row(p, exact: bool) -> dict:
    row = p.as_row()
    row["num_examples_source"] = "data" if exact else "nominal"
    return row


def _bare(p, exact: bool) -> RunEstimate:
    return RunEstimate(_row(p, exact), p.plan.step.physical_batch_size, 0)


def _estimate_time(result: DryRun, planned, suite, settings, model, num_classes: int, num_examples: int, device) -> None:
    from dpbench.data.base import dataset_num_classes
    from dpbench.engine.measure import StepProbe
    from dpbench.engine.setup import ModelRecipe
    from dpbench.models.diffusion import make_noise_scheduler
    from dpbench.models.pretrain import cache_root, pretrain_spec
    from dpbench.config.suite import stable_hash

    ref = suite.data.private
    shape = (ref.channels, ref.image_size, ref.image_size)
    scheduler = make_noise_scheduler()
    per_example: dict = {}

    def seconds_per_example(p, private: bool) -> float:
        key = (p.spec.method_label, private)
        if key not in per_example:
            step = p.plan.step
            batch = min(PROBE_BATCH, step.physical_batch_size)
            recipe = ModelRecipe.of(model, p.spec.method, p.method.options, num_classes, device, scheduler=scheduler)
            probe = StepProbe(recipe, p.training, batch=batch, private=private, image_shape=shape,
                              noise_multiplicity=step.noise_multiplicity, warmup=1, clipping=step.clipping)
            try:
                per_example[key] = _timed(probe.time_step, repeats=2) / batch
            finally:
                probe.close()
        return per_example[key]

    costs = _Costs(model, suite, num_classes, device)
    num_test = min(10_000, max(1, num_examples // 5))  # the test split is not loaded by a dry run
    evaluation = costs.evaluation_s(suite, suite.sampling.num_samples, num_test)
    memory_checked = set()
    for p, estimate in zip(planned, result.runs):
        step = p.plan.step
        per = seconds_per_example(p, step.private)
        logical = per * math.ceil(step.expected_batch_size / estimate.physical_batch) * estimate.physical_batch
        estimate.train_s = logical * step.steps
        key = (p.spec.method_label, step.private)
        if key not in memory_checked:  # each run measures memory once per method and kind (a warm-up + 3 steps)
            memory_checked.add(key)
            estimate.train_s += 4 * per * estimate.physical_batch
        estimate.sample_s, estimate.eval_s = costs.sample_s, evaluation
    real_ceiling = 0.0
    if suite.evaluation.real_data_ceiling:
        real_ceiling = costs.evaluation_s(suite, num_examples, num_test)
    result.baselines_s = costs.sample_s + evaluation + real_ceiling
    public = suite.data.public
    spec = pretrain_spec(suite, dataset_num_classes(public, suite.data_root(public, settings.data_root)))
    if (cache_root(settings.cache_dir) / "pretrained" / stable_hash(spec)).is_dir():
        result.pretrain_s = 0.0
        result.notes.append("the pretrained model is cached: no pretraining")
    else:
        pt = suite.pretrain
        probe_batch = min(PROBE_BATCH, pt.batch_size)
        probe = StepProbe(ModelRecipe.of(model, "full", None, num_classes, device, scheduler=scheduler),
                          planned[0].training.model_copy(update={"ema_decay": None}), batch=probe_batch,
                          private=False, image_shape=shape, warmup=1)
        try:
            result.pretrain_s = _timed(probe.time_step, repeats=2) / probe_batch * pt.batch_size * pt.steps
        finally:
            probe.close()

