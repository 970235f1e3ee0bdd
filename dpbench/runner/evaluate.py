"""The runner's evaluation stage: sampling and evaluation of one model, timed apart from training (and
from each other).

Shared by every run and by the suite's baselines, so the pretrained model and the fine-tuned ones are
measured the same way: balanced labels (never the private class histogram), a sample grid with real
test images beside the samples, a classifier trained on the samples and tested once on the real test
split, and FID / precision / recall against the real reference split.

It lives in the runner, not in dpbench/evaluation/, because it is where a suite meets the metrics: it
reads the suite's sampling and evaluation settings, the run's context (test split, cached FID
reference features, device) and writes the sample grid into the run's folder. dpbench/evaluation/ holds
the metrics themselves, which know nothing of suites or runs.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from dpbench.runner.context import RunContext

if TYPE_CHECKING:
    from dpbench.config.suite import EvaluationSettings, Suite
    from dpbench.evaluation.classifiers import ClassifierTraining
    from dpbench.evaluation.sampling import SamplerSettings


def sampler_settings(suite: "Suite") -> "SamplerSettings":
    """The suite's sampling settings, with the noise schedule its model was trained with."""
    from dpbench.evaluation.sampling import SamplerSettings

    s, m = suite.sampling, suite.model
    return SamplerSettings(scheduler=s.scheduler, steps=s.steps, guidance_scale=s.guidance_scale,
                           batch_size=s.batch_size, num_train_timesteps=m.num_train_timesteps,
                           beta_schedule=m.beta_schedule)


def classifier_training(evaluation: "EvaluationSettings") -> "ClassifierTraining":
    """How the suite trains its downstream classifier (on samples, and on the real data for the ceiling)."""
    from dpbench.evaluation.classifiers import ClassifierTraining

    e = evaluation
    return ClassifierTraining(e.classifier, seeds=e.classifier_seeds, epochs=e.classifier_epochs,
                              batch_size=e.classifier_batch_size, lr=e.classifier_lr)


def sample_and_evaluate(ctx: RunContext, model, seed: int, folder: Optional[Path], telemetry=None,
                        sampling_steps: Optional[int] = None) -> dict:
    """Sampling and evaluation metrics; ``telemetry`` (dpbench/engine/telemetry.py), if given, records
    the two phases; ``sampling_steps`` replaces the suite's step count (``dpbench tune --sampling-steps``)."""
    from dpbench.evaluation.classifiers import train_and_evaluate
    from dpbench.evaluation.features import extract_features
    from dpbench.evaluation.metrics import frechet_distance, precision_recall
    from dpbench.evaluation.sampling import balanced_labels, sample_images, save_grid

    phase = telemetry.phase if telemetry is not None else lambda name: nullcontext()
    s, e = ctx.suite.sampling, ctx.suite.evaluation
    start = time.perf_counter()
    labels = balanced_labels(s.num_samples, ctx.num_classes)
    with phase("sample"):
        sampler = sampler_settings(ctx.suite)
        if sampling_steps is not None:
            sampler = replace(sampler, steps=sampling_steps)
        images = sample_images(model, labels, sampler, seed=seed, device=str(ctx.device),
                               progress=ctx.progress)
    out = {"sample_seconds": time.perf_counter() - start}
    if folder is not None:
        save_grid(images, labels, folder / "samples.png", per_class=s.grid_per_class, real=ctx.test)
        out["samples_grid"] = "samples.png"
    start = time.perf_counter()
    with phase("evaluate"):
        clf = train_and_evaluate(classifier_training(e), images, labels, ctx.test[0], ctx.test[1],
                                 ctx.num_classes, device=str(ctx.device), progress=ctx.progress)
        fake = extract_features(e.fid_backbone, images, device=str(ctx.device))
        real = ctx.reference_features()
        precision, recall = precision_recall(real, fake, k=e.precision_recall_k)
    out.update(
        downstream_accuracy=clf["accuracy"], downstream_accuracy_std=clf["accuracy_std"],
        downstream_accuracies=clf["accuracies"], per_class_accuracy=clf["per_class_accuracy"],
        classifier=clf["classifier"], fid=frechet_distance(real, fake), fid_backbone=e.fid_backbone,
        fid_num_samples=len(images), fid_reference=f"{ctx.suite.data.private.name}:{e.fid_reference_split}[:{len(real)}]",
        precision=precision, recall=recall, eval_seconds=time.perf_counter() - start,
    )
    return out
