"""`dpbench run SUITE`: pretrain (or load, cached) → DP fine-tune each method → sample → evaluate → store.

Resumability: a finished run is a ``result.json`` (written atomically, last); on re-run it is skipped.
A run in progress checkpoints its complete training state (weights, optimiser, EMA, RNG streams and
the accountant's history) atomically every ``checkpoint_seconds``; a killed run restarts from that
checkpoint and replays the remaining steps with the same random streams, so its accountant history
is exactly that of the steps behind the released model and privacy is never under-counted.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import torch

from dpbench.config.suite import Suite, format_epsilon
from dpbench.errors import UserError
from dpbench.provenance import device_description, git_sha, library_versions
from dpbench.results import (
    BASELINE_KEYS, RESULT_KEYS, SCHEMA_VERSION, load_baselines, rebuild_csv, run_dir, write_bytes_atomic,
    write_json_atomic,
)
from dpbench.runner.plan import PlannedRun, apply_filters, plan_runs


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {requested}: CUDA is not available on this machine — use --device cpu")
    return torch.device(requested)


@dataclass
class RunContext:
    """What every run of one suite invocation shares (loaded once)."""

    suite: Suite
    results_dir: Path
    device: torch.device
    data_root: Optional[str]
    cache_dir: Optional[str]
    progress: bool
    pretrained: object = None
    train: tuple = None
    test: tuple = None
    num_classes: int = 0
    reference_features: object = None

    def say(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)


def run_suite(suite: Suite, suite_path: str | None, *, results_root: str = "results", only: list[str] = (),
              data_root: str | None = None, cache_dir: str | None = None, device: str | None = None,
              progress: bool = True, report: bool = True) -> dict:
    from dpbench.data.base import dataset_num_classes, load_dataset
    from dpbench.runner.plan import check_names

    check_names(suite)
    dev = resolve_device(device or suite.device)
    results_dir = Path(results_root) / suite.name
    ctx = RunContext(suite, results_dir, dev, data_root, cache_dir, progress)
    private_root = suite.data_root(suite.data.private, data_root)
    ctx.train = load_dataset(suite.data.private, private_root, "train", download=suite.data.download)
    ctx.test = load_dataset(suite.data.private, private_root, "test", download=suite.data.download)
    ctx.num_classes = dataset_num_classes(suite.data.private, private_root)
    planned = plan_runs(suite, data_root, num_examples=len(ctx.train[0]))
    keep = {r.run_id for r in apply_filters([p.spec for p in planned], list(only))}
    planned = [p for p in planned if p.spec.run_id in keep]
    results_dir.mkdir(parents=True, exist_ok=True)
    if suite_path:
        write_bytes_atomic(results_dir / "suite.yaml", Path(suite_path).read_bytes())

    done = [p for p in planned if (run_dir(results_dir, p.spec.run_id) / "result.json").is_file()]
    pending = [p for p in planned if p not in done]
    ctx.say(f"dpbench: suite {suite.name!r}: {len(planned)} runs ({len(done)} already finished, {len(pending)} to run) "
            f"on {dev}; results in {results_dir}")
    wall = time.perf_counter()
    if pending or not _baselines_complete(results_dir):
        start = time.perf_counter()
        ctx.pretrained = _load_pretrained(ctx)
        ctx.say(f"dpbench: pretrained model {ctx.pretrained.source} ({time.perf_counter() - start:.1f}s)")
        _ensure_baselines(ctx)
    from dpbench.registry import EXECUTORS

    executor = EXECUTORS.get(suite.executor)()
    by_id = {p.spec.run_id: p for p in pending}
    executor.execute([p.spec for p in pending], lambda spec: run_one(ctx, by_id[spec.run_id]))
    csv_path = rebuild_csv(results_dir)
    summary = format_summary(results_dir)
    print(summary, flush=True)
    out = {"results_dir": str(results_dir), "csv": str(csv_path), "ran": len(pending), "skipped": len(done),
           "seconds": time.perf_counter() - wall}
    if report:
        from dpbench.reporting.report import build_report

        index = build_report(results_dir)
        out["report"] = str(index)
        print(f"report: {index}", flush=True)
    return out


def _load_pretrained(ctx: RunContext):
    from dpbench.models.pretrain import load_pretrained

    return load_pretrained(ctx.suite, data_root=ctx.data_root, cache_dir=ctx.cache_dir, device=str(ctx.device),
                           progress=ctx.progress)


# --------------------------------------------------------------------------------------------- one run
def run_one(ctx: RunContext, planned: PlannedRun) -> dict:
    from dpbench.engine.measure import measure_step_memory
    from dpbench.engine.trainer import DPTrainer, OptimSettings, prepare_model
    from dpbench.models.diffusion import count_parameters, make_noise_scheduler
    from dpbench.registry import METHODS

    suite, spec, plan = ctx.suite, planned.spec, planned.plan
    folder = run_dir(ctx.results_dir, spec.run_id)
    folder.mkdir(parents=True, exist_ok=True)
    ctx.say(f"── {spec.run_id}: {spec.method} at ε={format_epsilon(spec.epsilon)} (σ={plan.noise_multiplier:.4g}, "
            f"q={plan.sample_rate:.4g}, T={plan.steps})")
    torch.manual_seed(spec.seed)
    method = METHODS.get(spec.method)(planned.method_options)
    model = prepare_model(ctx.pretrained.model, method, ctx.num_classes, ctx.device)
    trainable, total = count_parameters(model)
    t = suite.training
    settings = OptimSettings(optimizer=t.optimizer, lr=planned.lr, class_embedding_lr=t.class_embedding_lr, weight_decay=t.weight_decay, momentum=t.momentum,
                             ema_decay=t.ema_decay, grad_sample_mode=t.grad_sample_mode, label_dropout=t.label_dropout,
                             mixed_precision=t.mixed_precision, warmup_steps=t.warmup_steps)
    scheduler = make_noise_scheduler(suite.model.num_train_timesteps, suite.model.beta_schedule)
    memory = measure_step_memory(model, scheduler, settings, ctx.device, batch=plan.physical_batch_size,
                                 private=plan.private, image_shape=tuple(ctx.train[0].shape[1:]),
                                 num_classes=ctx.num_classes, noise_multiplicity=plan.noise_multiplicity)
    trainer = DPTrainer(model, scheduler, ctx.train[0], ctx.train[1], plan, settings, spec.seed, ctx.device)

    checkpoint = folder / "checkpoint.pt"
    fingerprint = {"plan": plan.as_dict(), "options": planned.method_options, "lr": planned.lr,
                   "pretrained": ctx.pretrained.source.split(":", 1)[1],
                   "training": t.model_dump(exclude={"checkpoint_seconds", "warmup_steps"})}
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if state.get("fingerprint") == repr(fingerprint):
            trainer.load_state_dict(state["trainer"])
            ctx.say(f"   resumed from step {trainer.step}/{plan.steps} (accountant history restored)")
        else:
            ctx.say("   checkpoint is from other settings: starting over")

    def save_checkpoint(tr: DPTrainer) -> None:
        import io

        buffer = io.BytesIO()
        torch.save({"fingerprint": repr(fingerprint), "trainer": tr.state_dict()}, buffer)
        write_bytes_atomic(checkpoint, buffer.getvalue())

    stats = trainer.train(progress=ctx.progress, on_checkpoint=save_checkpoint, checkpoint_seconds=t.checkpoint_seconds)
    eps_spent = stats.epsilon_spent
    if eps_spent is not None and eps_spent > plan.epsilon * (1 + 1e-9):
        raise RuntimeError(f"{spec.run_id}: ε spent {eps_spent} exceeds the target {plan.epsilon}")
    trainer.finish()
    _save_trainable(model, folder / "trainable.safetensors")

    record = {k: None for k in RESULT_KEYS}
    record.update(_sample_and_evaluate(ctx, model, spec.seed, folder))
    p = plan
    record.update(
        schema_version=SCHEMA_VERSION, run_id=spec.run_id, suite=suite.name, method=spec.method,
        method_label=spec.method_key, dataset=spec.dataset, dataset_label=suite.data.label or spec.dataset,
        public_dataset=spec.public_dataset, seed=spec.seed, epsilon=spec.epsilon, delta=p.delta,
        epsilon_spent=eps_spent, accountant=p.accountant if p.private else None,
        noise_multiplier=p.noise_multiplier, sample_rate=p.sample_rate, steps=p.steps,
        expected_batch_size=p.expected_batch_size, physical_batch_size=p.physical_batch_size,
        max_grad_norm=p.max_grad_norm if p.private else None, noise_multiplicity=p.noise_multiplicity,
        trainable_params=trainable, total_params=total, peak_memory_bytes=memory["peak_memory_bytes"],
        memory_kind=memory["memory_kind"], nvml_peak_memory_bytes=memory["nvml_peak_memory_bytes"],
        throughput_examples_per_s=stats.examples_per_second(p.expected_batch_size, t.warmup_steps),
        step_time_s=stats.step_time(t.warmup_steps), train_seconds=stats.train_seconds,
        final_loss=(sum(stats.losses[-10:]) / len(stats.losses[-10:])) if stats.losses else None,
        device=device_description(ctx.device), versions=library_versions(), git_sha=git_sha(),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), status="ok",
    )
    write_json_atomic(folder / "result.json", record)
    checkpoint.unlink(missing_ok=True)
    acc = record["downstream_accuracy"]
    ctx.say(f"   done: accuracy {acc:.3f}, FID {record['fid']:.2f}, ε spent {_fmt(eps_spent)}, "
            f"{record['throughput_examples_per_s'] or 0:.1f} ex/s, train {stats.train_seconds:.1f}s, "
            f"sample {record['sample_seconds']:.1f}s, eval {record['eval_seconds']:.1f}s")
    return record


def _sample_and_evaluate(ctx: RunContext, model, seed: int, folder: Path | None) -> dict:
    """Sampling and evaluation, timed separately from training (and from each other)."""
    from dpbench.evaluation.classifiers import train_and_evaluate
    from dpbench.evaluation.features import extract_features
    from dpbench.evaluation.metrics import frechet_distance, precision_recall
    from dpbench.evaluation.sampling import balanced_labels, sample_images, save_grid

    s, e, m = ctx.suite.sampling, ctx.suite.evaluation, ctx.suite.model
    start = time.perf_counter()
    labels = balanced_labels(s.num_samples, ctx.num_classes)
    images = sample_images(model, labels, scheduler=s.scheduler, steps=s.steps, guidance_scale=s.guidance_scale,
                           batch_size=s.batch_size, seed=seed, device=str(ctx.device),
                           num_train_timesteps=m.num_train_timesteps, beta_schedule=m.beta_schedule, progress=ctx.progress)
    sample_seconds = time.perf_counter() - start
    out = {"sample_seconds": sample_seconds}
    if folder is not None:
        save_grid(images, labels, folder / "samples.png", per_class=s.grid_per_class)
        out["samples_grid"] = "samples.png"
    start = time.perf_counter()
    clf = train_and_evaluate(e.classifier, images, labels, ctx.test[0], ctx.test[1], ctx.num_classes,
                             seeds=e.classifier_seeds, epochs=e.classifier_epochs, batch_size=e.classifier_batch_size,
                             lr=e.classifier_lr, device=str(ctx.device))
    fake = extract_features(e.fid_backbone, images, device=str(ctx.device))
    real = reference_features(ctx)
    precision, recall = precision_recall(real, fake, k=e.precision_recall_k)
    out.update(
        downstream_accuracy=clf["accuracy"], downstream_accuracy_std=clf["accuracy_std"],
        downstream_accuracies=clf["accuracies"], classifier=clf["classifier"],
        fid=frechet_distance(real, fake), fid_backbone=e.fid_backbone, fid_num_samples=len(images),
        fid_reference=f"{ctx.suite.data.private.name}:{e.fid_reference_split}[:{len(real)}]",
        precision=precision, recall=recall, eval_seconds=time.perf_counter() - start,
    )
    return out


def reference_features(ctx: RunContext):
    if ctx.reference_features is None:
        from dpbench.evaluation.features import extract_features

        e = ctx.suite.evaluation
        images = (ctx.train if e.fid_reference_split == "train" else ctx.test)[0][: e.fid_max_reference]
        ctx.reference_features = extract_features(e.fid_backbone, images, device=str(ctx.device))
    return ctx.reference_features


# ------------------------------------------------------------------------------------------ baselines
def _baselines_complete(results_dir: Path) -> bool:
    base = load_baselines(results_dir)
    return bool(base) and all(k in base for k in BASELINE_KEYS)


def _ensure_baselines(ctx: RunContext) -> None:
    """Pretrained-model FID (the bar every method must beat) and the real-data classifier ceiling."""
    if _baselines_complete(ctx.results_dir):
        return
    from dpbench.evaluation.classifiers import train_and_evaluate

    import copy

    from dpbench.models.diffusion import reset_class_embedding

    suite, e = ctx.suite, ctx.suite.evaluation
    ctx.say("dpbench: baselines: pretrained model before fine-tuning, and the classifier on real private data")

    model = copy.deepcopy(ctx.pretrained.model).to(ctx.device)
    reset_class_embedding(model, ctx.num_classes)  # what every method starts from
    model.eval()
    metrics = _sample_and_evaluate(ctx, model, seed=0, folder=ctx.results_dir / "baseline")
    record = {k: None for k in BASELINE_KEYS}
    record.update(schema_version=SCHEMA_VERSION, suite=suite.name, dataset=suite.data.private.name,
                  dataset_label=suite.data.label or suite.data.private.name, fid_backbone=e.fid_backbone,
                  fid_num_samples=metrics["fid_num_samples"], fid_reference=metrics["fid_reference"],
                  pretrained_fid=metrics["fid"], pretrained_precision=metrics["precision"],
                  pretrained_recall=metrics["recall"], pretrained_accuracy=metrics["downstream_accuracy"],
                  classifier=e.classifier)
    if e.real_data_ceiling:
        clf = train_and_evaluate(e.classifier, ctx.train[0], ctx.train[1], ctx.test[0], ctx.test[1], ctx.num_classes,
                                 seeds=e.classifier_seeds, epochs=e.classifier_epochs,
                                 batch_size=e.classifier_batch_size, lr=e.classifier_lr, device=str(ctx.device))
        record.update(real_data_accuracy=clf["accuracy"], real_data_accuracy_std=clf["accuracy_std"])
    write_json_atomic(ctx.results_dir / "baselines.json", record)
    ctx.say(f"   pretrained FID {record['pretrained_fid']:.2f}; real-data classifier accuracy "
            f"{_fmt(record['real_data_accuracy'])}")


# ------------------------------------------------------------------------------------------- helpers
def _save_trainable(model, path: Path) -> None:
    """The fine-tuned (EMA) trainable weights, safetensors, for reuse and inspection."""
    from safetensors.torch import save

    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    write_bytes_atomic(path, save(tensors))


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_summary(results_dir: Path) -> str:
    """Method × ε table of accuracy, FID, memory and throughput (mean over seeds)."""
    from dpbench.results import load_results

    records = load_results(results_dir)
    if not records:
        return "no finished runs"
    base = load_baselines(results_dir)
    groups: dict = {}
    for r in records:
        groups.setdefault((r["method_label"], r["epsilon"]), []).append(r)
    mean = lambda rs, k: (sum(x[k] for x in rs if x[k] is not None) / max(1, sum(x[k] is not None for x in rs)))  # noqa: E731
    head = f"{'method':<12} {'ε':>5} {'accuracy':>14} {'FID':>8} {'ε spent':>8} {'peak MiB':>9} {'ex/s':>8} {'trainable':>10}"
    lines = [f"{records[0]['suite']} — {records[0]['dataset_label']} (downstream accuracy on the real test split, FID: "
             f"{records[0]['fid_backbone']})", head, "-" * len(head)]
    for (label, eps), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        acc = mean(rs, "downstream_accuracy")
        std = rs[0]["downstream_accuracy_std"] if len(rs) == 1 else float(torch.tensor([x["downstream_accuracy"] for x in rs]).std())
        spent = [x["epsilon_spent"] for x in rs if x["epsilon_spent"] is not None]
        lines.append(
            f"{label:<12} {format_epsilon(eps):>5} {acc:>8.3f}±{std:<5.3f} {mean(rs, 'fid'):>8.2f} "
            f"{(f'{max(spent):.3f}' if spent else '—'):>8} {mean(rs, 'peak_memory_bytes') / 2**20:>9.1f} "
            f"{mean(rs, 'throughput_examples_per_s'):>8.1f} {rs[0]['trainable_params']:>10}"
        )
    if base:
        lines.append(f"baselines: pretrained FID {_fmt(base.get('pretrained_fid'))}, real-data classifier accuracy "
                     f"{_fmt(base.get('real_data_accuracy'))}")
    return "\n".join(lines)
