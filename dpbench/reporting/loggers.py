"""`--report-to tensorboard|mlflow`: a suite's runs in the experiment trackers ML people already use, built
from the result files alone (like every report).

Per run: its settings (method, options, ε, seed, lr, clipping, σ, steps, batches, K, dataset, config hash,
noise source, smoke), its metrics (accuracy, FID, precision, recall, ε spent, memory, throughput, step time,
phase times, GPU energy) and the curves it recorded (``RunResult.curves``: step times; C of the quantile
rule; the training loss of ε = ∞ runs only — a private run's loss is never logged, even if a file carried
one).

* TensorBoard (``pip install 'dpbench[tensorboard]'``): one event folder per run,
  ``<results>/tensorboard/<run_id>/``; scalars ``metrics/<name>`` at step 0 and ``curves/<name>`` per
  logical step; the settings as a text summary. Each folder is written apart and swapped in whole, so
  logging again replaces a run's events instead of doubling them. ``tensorboard --logdir <results>/tensorboard``.
* MLflow (``pip install 'dpbench[mlflow]'``): one MLflow run per dpbench run in the experiment named after the
  suite; params, metrics and curves (metric history by step); tags ``dpbench.run_id``, ``dpbench.config_hash``,
  ``dpbench.status``. The tracking URI is ``$MLFLOW_TRACKING_URI`` when set, else a file store inside the
  results folder (``<results>/mlruns``). A run already logged with the same config hash is skipped.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

from dpbench.errors import UserError
from dpbench.results import RunResult, ensure_inside, format_epsilon, load_results

TARGETS = ("tensorboard", "mlflow")
EXTRAS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
METRICS = ("downstream_accuracy", "downstream_accuracy_std", "fid", "precision", "recall", "epsilon_spent",
           "total_peak_memory_bytes", "peak_memory_bytes", "throughput_examples_per_s", "step_time_s",
           "train_seconds", "sample_seconds", "eval_seconds", "energy_joules", "final_loss", "trainable_params",
           "total_params")


def run_settings(run: RunResult) -> dict[str, str]:
    """What determines a run, as text (trackers store parameters as strings)."""
    settings: dict[str, Any] = {
        "method": run.method, "method_label": run.method_label, "epsilon": format_epsilon(run.epsilon),
        "delta": run.delta, "seed": run.seed, "lr": run.lr, "class_embedding_lr": run.class_embedding_lr,
        "clipping": run.clipping.mode, "max_grad_norm": run.clipping.max_grad_norm,
        "target_quantile": run.clipping.target_quantile, "noise_multiplier": run.noise_multiplier,
        "noise_source": run.noise_source, "accountant": run.accountant, "steps": run.steps,
        "sample_rate": run.sample_rate, "expected_batch_size": run.expected_batch_size,
        "physical_batch_size": run.physical_batch_size, "noise_multiplicity": run.noise_multiplicity,
        "world_size": run.world_size, "dataset": run.dataset, "public_dataset": run.public_dataset,
        "suite": run.suite, "config_hash": run.config_hash, "smoke": run.smoke, "status": run.status,
        "device": run.device, "git_sha": run.git_sha,
    }
    settings.update({f"option.{key}": value for key, value in sorted(run.method_options.items())})
    return {key: str(value) for key, value in settings.items() if value is not None}


def run_metrics(run: RunResult) -> dict[str, float]:
    """The run's finite numeric results."""
    out = {}
    for name in METRICS:
        value = getattr(run, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def run_curves(run: RunResult) -> dict[str, list[float]]:
    """The curves that may leave the run: a private run's loss never does (the mechanism did not release it)."""
    return {name: values for name, values in run.curves.items()
            if not (name == "loss" and math.isfinite(run.epsilon))}


def _require(target: str):
    try:
        if target == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            return SummaryWriter
        from mlflow.tracking import MlflowClient

        return MlflowClient
    except ImportError:
        raise UserError(f"--report-to {target} needs the {target} package, which is not installed: "
                        f"pip install 'dpbench[{EXTRAS[target]}]'") from None


def require_targets(targets: Sequence[str]) -> dict:
    """Each target's writer class; a missing extra is a one-line error (checked before any work is done)."""
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise UserError(f"--report-to {unknown[0]!r}: expected {' or '.join(TARGETS)}")
    return {target: _require(target) for target in dict.fromkeys(targets)}


def report_to(results_dir: str | os.PathLike, targets: Sequence[str]) -> list[str]:
    """Log every run of one suite's results to each target; returns one line per target saying where."""
    clients = require_targets(targets)
    results_dir = Path(results_dir)
    runs = load_results(results_dir)
    if not runs:
        raise UserError(f"{results_dir}: no runs to log (no runs/<run_id>/result.json)")
    lines = []
    if "tensorboard" in clients:
        lines.append(f"tensorboard: {to_tensorboard(results_dir, runs, clients['tensorboard'])}")
    if "mlflow" in clients:
        lines.append(f"mlflow: {to_mlflow(results_dir, runs, clients['mlflow'])}")
    return lines


def to_tensorboard(results_dir: Path, runs: Sequence[RunResult], writer_class) -> Path:
    root = results_dir / "tensorboard"
    for run in runs:
        target = ensure_inside(root / run.run_id, results_dir)
        staging = target.with_name(f".{run.run_id}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        writer = writer_class(log_dir=str(staging))
        try:
            for name, value in run_metrics(run).items():
                writer.add_scalar(f"metrics/{name}", value, 0)
            for name, values in run_curves(run).items():
                for step, value in enumerate(values):
                    writer.add_scalar(f"curves/{name}", value, step)
            writer.add_text("settings", "\n".join(f"    {k}: {v}" for k, v in run_settings(run).items()), 0)
        finally:
            writer.close()
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    return root


def _tracking_uri(results_dir: Path) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    # MLflow 3 keeps its file store in maintenance mode and asks for this opt-in; a local store inside the
    # results folder needs no server and no database.
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return (results_dir / "mlruns").resolve().as_uri()


def to_mlflow(results_dir: Path, runs: Sequence[RunResult], client_class, uri: Optional[str] = None) -> str:
    from mlflow.entities import Metric, Param

    uri = uri or _tracking_uri(results_dir)
    client = client_class(tracking_uri=uri)
    suite = runs[0].suite
    experiment = client.get_experiment_by_name(suite)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(suite)
    logged = {(r.data.tags.get("dpbench.run_id"), r.data.tags.get("dpbench.config_hash"))
              for r in client.search_runs([experiment_id], max_results=50_000)}
    for run in runs:
        if (run.run_id, str(run.config_hash)) in logged:
            continue
        tags = {"dpbench.run_id": run.run_id, "dpbench.config_hash": str(run.config_hash),
                "dpbench.status": run.status, "dpbench.smoke": str(run.smoke).lower()}
        created = client.create_run(experiment_id, run_name=run.run_id, tags=tags)
        metrics = [Metric(name, value, 0, 0) for name, value in run_metrics(run).items()]
        metrics += [Metric(f"curve.{name}", value, 0, step) for name, values in run_curves(run).items()
                    for step, value in enumerate(values)]
        params = [Param(key, value[:6000]) for key, value in run_settings(run).items()]
        for start in range(0, max(len(metrics), 1), 1000):  # MLflow takes at most 1000 metrics per batch
            client.log_batch(created.info.run_id, metrics=metrics[start:start + 1000],
                             params=params if start == 0 else [])
        client.set_terminated(created.info.run_id, "FINISHED" if run.status == "ok" else "FAILED")
    return uri
