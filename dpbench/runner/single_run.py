"""One run of a suite: train → sample → evaluate → store, with resume and failure recording.

Resumability: a finished run is a ``result.json`` (written atomically, last). A run in progress
checkpoints its complete training state (weights, optimiser, EMA, RNG streams including the DP noise
generator's, the clipping state and the accountant's history) atomically every
``checkpoint_seconds``; a killed run restarts from that checkpoint and replays the remaining steps
with the same random streams, so its accountant history is exactly that of the steps behind the
released model and privacy is never under-counted. The checkpoint is keyed by the run's config hash
and deleted when the run finishes (it holds the noise generator's state: private, like the weights).

A run that fails (out of memory at the smallest physical batch, a library error) is recorded as
``status: failed`` with its error and phase, and the grid goes on; an interrupt (Ctrl-C) stops
everything. Under torchrun (``ctx.distributed``) every rank trains; rank 0 alone measures memory,
samples, evaluates and writes files, and a failure stops the whole group (the other ranks would wait
forever in the next all-reduce) after rank 0 has recorded it.
"""

from __future__ import annotations

import io
import logging
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from dpbench.errors import EXIT_CHECK_FAILED, UserError
from dpbench.results import (ClippingInfo, GpuPhase, RunResult, format_epsilon, run_dir, write_bytes_atomic,
                             write_model)
from dpbench.runner.context import RunContext
from dpbench.runner.plan import PlannedRun, reported_max_grad_norm

if TYPE_CHECKING:
    from dpbench.engine.setup import ModelRecipe
    from dpbench.privacy.accounting import DPStep

log = logging.getLogger("dpbench")
CHECKPOINT = "checkpoint.pt"


@contextmanager
def run_log(folder: Path):
    """Everything logged while the run is in progress also goes to its own run.log."""
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / "run.log", mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


def run_one(ctx: RunContext, planned: PlannedRun) -> Optional[RunResult]:
    """The run's result (ok or failed); None on the ranks other than 0 of a torchrun group.

    Its stages: :func:`train_run` (:func:`measure_run`, :func:`start_training`, :func:`train_to_end`), then
    on rank 0 sampling and evaluation (dpbench/runner/evaluate.py), :func:`assemble_result` and
    :func:`store_result`. A failure is recorded with the phase it happened in: ``train`` up to the trained
    model, ``sample and evaluate`` after."""
    from dpbench.runner.evaluate import sample_and_evaluate

    folder = run_dir(ctx.results_dir, planned.spec.run_id)
    with run_log(folder) if ctx.is_root else nullcontext():
        phase = "train"
        try:
            trained = train_run(ctx, planned, folder)
            if trained is None:
                return None
            phase = "sample and evaluate"
            evaluation = sample_and_evaluate(ctx, trained.model, planned.spec.seed, folder,
                                             telemetry=trained.telemetry)
            return store_result(ctx, folder, assemble_result(ctx, planned, trained, evaluation))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # the grid goes on; the failure is a result
            log.debug("traceback", exc_info=True)
            result = record_failure(ctx, planned, f"{type(err).__name__}: {err}", phase) if ctx.is_root else None
            if ctx.distributed is not None:  # the other ranks would wait for this one forever
                log.error("torchrun: rank %d stops the group after a failed run", ctx.distributed.rank)
                raise SystemExit(EXIT_CHECK_FAILED) from err
            return result


def record_failure(ctx: RunContext, planned: PlannedRun, error: str, phase: str, **fields) -> RunResult:
    """Write and return a failed result: the error on one line, the phase it happened in, and ``fields``."""
    message = " ".join(error.split())[:2000]
    log.error("%s failed in %s: %s", planned.spec.run_id, phase, message)
    result = _base_result(ctx, planned, status="failed", error=message, phase=phase, **fields)
    write_model(run_dir(ctx.results_dir, planned.spec.run_id) / "result.json", result, inside=ctx.results_dir)
    return result


def _base_result(ctx: RunContext, planned: PlannedRun, **fields) -> RunResult:
    from dpbench.provenance import provenance

    spec, step, budget = planned.spec, planned.plan.step, planned.plan.budget
    rule = step.clipping
    clipping = ClippingInfo(
        mode=rule.mode, max_grad_norm=reported_max_grad_norm(rule),
        target_quantile=rule.target_quantile, gradient_noise_multiplier=step.noise_multiplier if step.private else None,
        count_noise_multiplier=(2 * rule.count_noise_std if rule.count_noise_std else None))
    base = dict(
        run_id=spec.run_id, suite=ctx.suite.name, method=spec.method, method_label=spec.method_label,
        method_index=spec.method_index, method_options=planned.method.options, seed=spec.seed,
        config_hash=planned.config_hash, dataset=spec.dataset,
        dataset_label=ctx.suite.data.label or spec.dataset, public_dataset=spec.public_dataset,
        epsilon=spec.epsilon, delta=budget.delta, accountant=budget.accountant if step.private else None,
        noise_multiplier=budget.noise_multiplier,
        noise_source=("seeded" if ctx.suite.privacy.reproducible else "os_entropy") if step.private else "none",
        sampling_source="seeded" if ctx.suite.privacy.reproducible else "os_entropy",
        sample_rate=step.sample_rate, steps=step.steps, expected_batch_size=step.expected_batch_size,
        physical_batch_size=step.physical_batch_size, physical_batch_size_setting=planned.physical_batch,
        noise_multiplicity=step.noise_multiplicity, clipping=clipping, lr=planned.training.lr,
        class_embedding_lr=planned.training.class_embedding_lr, trainable_params=0, total_params=0,
        world_size=ctx.distributed.world_size if ctx.distributed is not None else 1, smoke=ctx.settings.smoke,
        **provenance(ctx.device))
    base.update(fields)
    return RunResult(**base)


def _curves(stats, clipper, private: bool) -> dict[str, list[float]]:
    """The per-step curves a run may release: its step times; C of the quantile rule (post-processing of the
    privatised counts); the training loss of a non-private run only."""
    curves = {"step_time_s": [float(t) for t in stats.step_times]}
    if clipper.max_grad_norms:
        curves["max_grad_norm"] = [float(c) for c in clipper.max_grad_norms]
    if not private and stats.losses:
        curves["loss"] = [float(v) for v in stats.losses]
    return curves


def _memory(ctx: RunContext, planned: PlannedRun, recipe: "ModelRecipe", batch: int) -> tuple[dict, int]:
    """(memory, the physical batch it was measured at): the step at ``batch``, halved while it runs out of
    memory. One probe per (method, physical batch, private, K): the ε of a DP run does not change its
    memory, so every ε of a method shares one measurement instead of differing by the measurement's noise."""
    from dpbench.engine.measure import measure_step_memory
    from dpbench.runner.batch_size import halving_on_out_of_memory

    step = planned.plan.step

    def measure(b: int) -> dict:
        key = (planned.spec.method_label, b, step.private, step.noise_multiplicity)
        if key not in ctx.memory_probes:
            ctx.memory_probes[key] = measure_step_memory(
                recipe, planned.training, batch=b, private=step.private, image_shape=tuple(ctx.train[0].shape[1:]),
                noise_multiplicity=step.noise_multiplicity, clipping=step.clipping)
        return ctx.memory_probes[key]

    return halving_on_out_of_memory(measure, batch, planned.training.min_physical_batch_size)


@dataclass(frozen=True)
class Measured:
    """What the run trains with before it starts: its step at the physical batch it starts with, and the
    step's memory (measured on rank 0 alone; None on the other ranks)."""

    step: "DPStep"
    memory: Optional[dict]


@dataclass
class Started:
    """A prepared model and its trainer, resumed from the run's checkpoint where there is one."""

    model: torch.nn.Module
    trainer: object  # a dpbench.engine.trainer.DPTrainer
    trainable_params: int
    total_params: int
    diagnostics: object  # public clipping diagnostics, or None


@dataclass
class Trained:
    """Everything the result needs from training: the released (EMA) model and what was measured."""

    model: torch.nn.Module
    measured: Measured
    stats: object  # dpbench.engine.trainer.TrainStats
    telemetry: object  # dpbench.engine.telemetry.GpuTelemetry: the train phase, then sample and evaluate
    trainable_params: int
    total_params: int
    physical_batch_size: int  # the one training ended at (halved where a chunk ran out of memory)
    diagnostics: object
    curves: dict
    final_max_grad_norm: float


def train_run(ctx: RunContext, planned: PlannedRun, folder: Path) -> Optional[Trained]:
    """Measure, prepare and train; on rank 0 the trained run, on the other ranks None."""
    spec, plan = planned.spec, planned.plan
    log.info("── %s: %s at ε=%s (σ=%.4g, q=%.4g, T=%d, clipping %s)", spec.run_id, spec.method,
             format_epsilon(spec.epsilon), plan.budget.noise_multiplier, plan.step.sample_rate, plan.step.steps,
             plan.step.clipping.mode)
    from dpbench.runner.setup import run_recipe

    recipe = run_recipe(ctx, planned)
    measured = measure_run(ctx, planned, recipe)
    started = start_training(ctx, planned, recipe, measured.step, folder)
    return train_to_end(ctx, planned, started, measured, folder)


def measure_run(ctx: RunContext, planned: PlannedRun, recipe: "ModelRecipe") -> Measured:
    """The physical batch the run starts with (probed for ``auto``) and, on rank 0, the step's memory there."""
    from dpbench.runner.batch_size import resolve_physical_batch

    physical = resolve_physical_batch(ctx, planned, recipe)
    memory = None  # rank 0 alone measures it (and records it)
    if ctx.is_root:
        memory, physical = _memory(ctx, planned, recipe, physical)
    return Measured(replace(planned.plan.step, physical_batch_size=physical), memory)


def start_training(ctx: RunContext, planned: PlannedRun, recipe: "ModelRecipe", step: "DPStep",
                   folder: Path) -> Started:
    """The model prepared under the run's seed, its trainer, the public clipping diagnostics, and the
    checkpoint's state where one of these settings exists."""
    from dpbench.engine.diagnostics import public_clipping_diagnostics
    from dpbench.models.diffusion import count_parameters
    from dpbench.runner.setup import run_trainer_setup

    model = recipe.prepare(seed=planned.spec.seed)
    trainable, total = count_parameters(model)
    trainer = recipe.trainer(model, ctx.train[0], ctx.train[1], run_trainer_setup(ctx, planned, step),
                             distributed=ctx.distributed)
    diagnostics = None
    if ctx.is_root and step.private and step.clipping.mode != "quantile":
        public = ctx.public_batch(min(64, step.physical_batch_size))  # one chunk: what fits a physical batch fits these
        if public is not None:
            diagnostics = public_clipping_diagnostics(trainer, *public)
            if diagnostics.warning:
                log.warning("   %s: %s", planned.spec.run_id, diagnostics.warning)
    checkpoint = folder / CHECKPOINT
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if state.get("config_hash") == planned.config_hash:
            trainer.load_state_dict(state["trainer"])
            log.info("   resumed from step %d/%d (accountant history restored)", trainer.step, step.steps)
        else:
            log.info("   checkpoint is from other settings: starting over")
    if ctx.distributed is not None:  # every rank starts from rank 0's weights, whatever each loaded
        ctx.distributed.broadcast_(trainer.params)
    return Started(model, trainer, trainable, total, diagnostics)


def train_to_end(ctx: RunContext, planned: PlannedRun, started: Started, measured: Measured,
                 folder: Path) -> Optional[Trained]:
    """Train to the last step, checkpointing on rank 0; check ε spent; save the trainable weights."""
    from dpbench.engine.diagnostics import private_count_diagnostics
    from dpbench.engine.telemetry import GpuTelemetry

    trainer, step, spec = started.trainer, measured.step, planned.spec

    def save_checkpoint(tr) -> None:
        buffer = io.BytesIO()
        torch.save({"config_hash": planned.config_hash, "trainer": tr.state_dict()}, buffer)
        write_bytes_atomic(folder / CHECKPOINT, buffer.getvalue(), inside=ctx.results_dir)

    telemetry = GpuTelemetry(ctx.device)
    with telemetry.phase("train"):
        stats = trainer.train(progress=ctx.progress, on_checkpoint=save_checkpoint if ctx.is_root else None,
                              checkpoint_seconds=planned.training.checkpoint_seconds)
    if not ctx.is_root:
        trainer.finish()
        return None
    eps_spent = stats.epsilon_spent
    if eps_spent is not None and eps_spent > spec.epsilon * (1 + 1e-9):
        raise RuntimeError(f"{spec.run_id}: ε spent {eps_spent} exceeds the target {spec.epsilon}")
    diagnostics = private_count_diagnostics(trainer) if step.clipping.mode == "quantile" else started.diagnostics
    final_c = trainer.clipper.max_grad_norm
    trainer.finish()
    _save_trainable(started.model, folder / "trainable.safetensors", ctx.results_dir)
    return Trained(started.model, measured, stats, telemetry, started.trainable_params, started.total_params,
                   trainer.physical_batch_size, diagnostics, _curves(stats, trainer.clipper, step.private), final_c)


def assemble_result(ctx: RunContext, planned: PlannedRun, trained: Trained, evaluation: dict) -> RunResult:
    """The finished run's result: its plan, what training measured and the evaluation's metrics."""
    step, stats, memory, telemetry = trained.measured.step, trained.stats, trained.measured.memory, trained.telemetry
    warmup = planned.training.warmup_steps
    result = _base_result(
        ctx, planned, epsilon_spent=stats.epsilon_spent, trainable_params=trained.trainable_params,
        total_params=trained.total_params, physical_batch_size=trained.physical_batch_size,
        clipping_diagnostics=trained.diagnostics,
        peak_memory_bytes=memory["peak_memory_bytes"], total_peak_memory_bytes=memory["total_peak_memory_bytes"],
        memory_kind=memory["memory_kind"], memory_breakdown=memory["memory_breakdown"],
        nvml_peak_memory_bytes=memory["nvml_peak_memory_bytes"],
        throughput_examples_per_s=stats.examples_per_second(step.expected_batch_size, warmup),
        step_time_s=stats.step_time(warmup), train_seconds=stats.train_seconds,
        # a private run's training loss is a statistic of private data outside the mechanism: never kept
        final_loss=_tail_mean(stats.losses) if not step.private else None,
        curves=trained.curves,
        energy_joules=telemetry.energy_joules, nvml_process_memory_bytes=telemetry.peak_process_memory_bytes,
        gpu_phases={name: GpuPhase(**vars(reading)) for name, reading in telemetry.readings.items()},
        **evaluation)
    if step.clipping.mode == "quantile":
        result.clipping.final_max_grad_norm = trained.final_max_grad_norm
    return result


def store_result(ctx: RunContext, folder: Path, result: RunResult) -> RunResult:
    """Write ``result.json`` — last: its presence means "finished" — and drop the private checkpoint."""
    write_model(folder / "result.json", result, inside=ctx.results_dir)
    (folder / CHECKPOINT).unlink(missing_ok=True)
    acc, eps_spent = result.downstream_accuracy, result.epsilon_spent
    log.info("   accuracy %s, FID %.2f, ε spent %s, %.1fs train + %.1fs sample + %.1fs eval",
             "n/a" if acc is None else f"{acc:.3f}", result.fid or float("nan"),
             "—" if eps_spent is None else f"{eps_spent:.3f}", result.train_seconds, result.sample_seconds,
             result.eval_seconds)
    return result


def _tail_mean(values: list) -> float | None:
    tail = values[-10:]
    return sum(tail) / len(tail) if tail else None


def _save_trainable(model, path: Path, results_dir: Path) -> None:
    """The fine-tuned (EMA) trainable weights, safetensors, for reuse and inspection."""
    from safetensors.torch import save

    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    write_bytes_atomic(path, save(tensors), inside=results_dir)


def load_trainable(model, path: Path) -> None:
    """Put the weights :func:`_save_trainable` wrote back into a model prepared the same way (the run's recipe
    and seed); a one-line error when they do not match its trainable parameters."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise UserError(f"{path}: not found — the run finished without its weights; delete {path.parent} and run again")
    saved = load_file(str(path))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    wrong_shape = sorted(n for n in set(saved) & set(trainable) if saved[n].shape != trainable[n].shape)
    if set(saved) != set(trainable) or wrong_shape:
        missing, extra = sorted(set(trainable) - set(saved)), sorted(set(saved) - set(trainable))
        raise UserError(f"{path}: its tensors do not match the model's trainable parameters (missing {missing[:3]}, "
                        f"unexpected {extra[:3]}, other shape {wrong_shape[:3]}) — it was saved by another method or "
                        f"settings; delete {path.parent} and run again")
    with torch.no_grad():
        for name, tensor in saved.items():
            trainable[name].copy_(tensor)

