"""The suite's baselines: the pretrained model before fine-tuning (the bar every method must beat) and
the classifier trained on the real private data (the ceiling).

Both are non-private references computed on the private data without the mechanism, like the ε = ∞
runs: they belong to the benchmark, not to a DP release (docs/threat-model.md).
"""

from __future__ import annotations

import copy
import logging

from dpbench.config.suite import stable_hash
from dpbench.results import Baselines, load_baselines, write_model
from dpbench.runner.context import RunContext

log = logging.getLogger("dpbench")


def baselines_hash(ctx: RunContext) -> str:
    suite = ctx.suite
    dump = suite.model_dump(mode="json")
    return stable_hash({"data": dump["data"], "model": dump["model"], "pretrain": dump["pretrain"],
                        "sampling": dump["sampling"], "evaluation": dump["evaluation"], "num_examples": len(ctx.train[0])})


def baselines_current(ctx: RunContext) -> bool:
    base = load_baselines(ctx.results_dir)
    return base is not None and base.config_hash == baselines_hash(ctx)


def ensure_baselines(ctx: RunContext) -> Baselines:
    """Compute the baselines unless the results directory has them for these settings."""
    if baselines_current(ctx):
        return load_baselines(ctx.results_dir)
    from dpbench.evaluation.classifiers import train_and_evaluate
    from dpbench.models.diffusion import reset_class_embedding
    from dpbench.provenance import provenance
    from dpbench.runner.evaluate import classifier_training, sample_and_evaluate

    suite, e = ctx.suite, ctx.suite.evaluation
    log.info("dpbench: baselines: pretrained model before fine-tuning, and the classifier on real private data")
    model = copy.deepcopy(ctx.pretrained.model).to(ctx.device)
    reset_class_embedding(model, ctx.num_classes)  # what every method starts from
    model.eval()
    metrics = sample_and_evaluate(ctx, model, seed=0, folder=ctx.results_dir / "baseline")
    record = Baselines(
        suite=suite.name, dataset=suite.data.private.name, dataset_label=suite.data.label or suite.data.private.name,
        fid_backbone=e.fid_backbone, fid_num_samples=metrics["fid_num_samples"], fid_reference=metrics["fid_reference"],
        classifier=e.classifier, config_hash=baselines_hash(ctx), pretrained_fid=metrics["fid"],
        pretrained_precision=metrics["precision"], pretrained_recall=metrics["recall"],
        pretrained_accuracy=metrics["downstream_accuracy"], pretrained_accuracies=metrics["downstream_accuracies"],
        samples_grid="baseline/samples.png", **provenance(ctx.device))
    if e.real_data_ceiling:
        clf = train_and_evaluate(classifier_training(e), ctx.train[0], ctx.train[1], ctx.test[0], ctx.test[1],
                                 ctx.num_classes, device=str(ctx.device), progress=ctx.progress)
        record.real_data_accuracy, record.real_data_accuracy_std = clf["accuracy"], clf["accuracy_std"]
    write_model(ctx.results_dir / "baselines.json", record, inside=ctx.results_dir)
    ceiling = "n/a" if record.real_data_accuracy is None else f"{record.real_data_accuracy:.3f}"
    log.info("   pretrained FID %.2f, accuracy %.3f; real-data classifier accuracy %s", record.pretrained_fid,
             record.pretrained_accuracy, ceiling)
    return record
