"""One cell of a suite: train → sample → evaluate → store, with resume and failure recording.

Resumability: a finished run is a ``result.json`` (written atomically, last). A run in progress
checkpoints its complete training state (weights, optimiser, EMA, RNG streams including the DP noise
generator's, the clipping state and the accountant's history) atomically every
``checkpoint_seconds``; a killed run restarts from that checkpoint and replays the remaining steps
with the same random streams, so its accountant history is exactly that of the steps behind the
released model and privacy is never under-counted. The checkpoint is keyed by the run's config hash
and deleted when the run finishes (it holds the noise generator's state: private, like the weights).

A cell that fails (out of memory at the smallest physical batch, a library error) is recorded as
``status: failed`` with its error and phase, and the grid goes on; an interrupt (Ctrl-C) stops
everything. Under torchrun (``ctx.distributed``) every rank trains; rank 0 alone measures memory,
samples, evaluates and writes files, and a failure stops the whole group (the other ranks would wait
forever in the next all-reduce) after rank 0 has recorded it.
"""

from __future__ import annotations

import io
import logging
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path

import torch

from dpbench.errors import EXIT_CHECK_FAILED
from dpbench.results import (ClippingInfo, GpuPhase, RunResult, format_epsilon, run_dir, write_bytes_atomic,
                             write_model)
from dpbench.runner.context import RunContext
from dpbench.runner.plan import PlannedRun

log = logging.getLogger("dpbench")


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


def run_cell(ctx: RunContext, planned: PlannedRun) -> RunResult | None:
    """The run's result (ok or failed); None on the ranks other than 0 of a torchrun group."""
    folder = run_dir(ctx.results_dir, planned.spec.run_id)
    with run_log(folder) if ctx.is_root else nullcontext():
        phase = {"name": "train"}
        try:
            return _run(ctx, planned, folder, phase)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # the grid goes on; the failure is a result
            log.debug("traceback", exc_info=True)
            result = record_failure(ctx, planned, f"{type(err).__name__}: {err}", phase["name"]) if ctx.is_root else None
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
        mode=rule.mode, max_grad_norm=None if rule.mode in ("auto", "none") else rule.max_grad_norm,
        target_quantile=rule.target_quantile, gradient_noise_multiplier=step.noise_multiplier if step.private else None,
        count_noise_multiplier=(2 * rule.count_noise_std if rule.count_noise_std else None))
    base = dict(
        run_id=spec.run_id, suite=ctx.suite.name, method=spec.method, method_label=spec.method_key,
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


def _memory(ctx: RunContext, planned: PlannedRun, method, scheduler, batch: int) -> tuple[dict, int]:
    """(memory, the physical batch it was measured at): the step at ``batch``, halved while it runs out of
    memory. One probe per (method, physical batch, private, K): the ε of a DP run does not change its
    memory, so every ε of a method shares one measurement instead of differing by the measurement's noise."""
    from dpbench.engine.measure import measure_step_memory
    from dpbench.runner.batch_size import halving_on_out_of_memory

    step = planned.plan.step

    def measure(b: int) -> dict:
        key = (planned.spec.method_key, b, step.private, step.noise_multiplicity)
        if key not in ctx.memory_probes:
            ctx.memory_probes[key] = measure_step_memory(
                ctx.pretrained.model, method, ctx.num_classes, scheduler, planned.training, ctx.device,
                batch=b, private=step.private, image_shape=tuple(ctx.train[0].shape[1:]),
                noise_multiplicity=step.noise_multiplicity, clipping=step.clipping)
        return ctx.memory_probes[key]

    return halving_on_out_of_memory(measure, batch, planned.training.min_physical_batch_size)


def _run(ctx: RunContext, planned: PlannedRun, folder: Path, phase: dict) -> RunResult:
    from dpbench.engine.diagnostics import private_count_diagnostics, public_clipping_diagnostics
    from dpbench.engine.telemetry import GpuTelemetry
    from dpbench.engine.trainer import DPTrainer, prepare_model
    from dpbench.models.diffusion import count_parameters, make_noise_scheduler
    from dpbench.registry import METHODS
    from dpbench.runner.batch_size import resolve_physical_batch
    from dpbench.runner.evaluate import sample_and_evaluate

    suite, spec, plan = ctx.suite, planned.spec, planned.plan
    step = plan.step
    log.info("── %s: %s at ε=%s (σ=%.4g, q=%.4g, T=%d, clipping %s)", spec.run_id, spec.method,
             format_epsilon(spec.epsilon), plan.budget.noise_multiplier, step.sample_rate, step.steps, step.clipping.mode)
    method = METHODS.get(spec.method)(planned.method.options)
    scheduler = make_noise_scheduler(suite.model.num_train_timesteps, suite.model.beta_schedule)
    physical = resolve_physical_batch(ctx, planned, method, scheduler)
    memory = None  # rank 0 alone measures it (and records it)
    if ctx.is_root:
        memory, physical = _memory(ctx, planned, method, scheduler, physical)
    step = replace(step, physical_batch_size=physical)
    torch.manual_seed(spec.seed)
    model = prepare_model(ctx.pretrained.model, method, ctx.num_classes, ctx.device)
    trainable, total = count_parameters(model)
    trainer = DPTrainer(model, scheduler, ctx.train[0], ctx.train[1], step, planned.training, spec.seed, ctx.device,
                        budget=plan.budget, reproducible=suite.privacy.reproducible,
                        distributed=ctx.distributed)
    diagnostics = None
    if ctx.is_root and step.private and step.clipping.mode != "quantile":
        public = ctx.public_batch(min(64, physical))  # one chunk: what fits a physical batch fits these
        if public is not None:
            diagnostics = public_clipping_diagnostics(trainer, *public)
            if diagnostics.warning:
                log.warning("   %s: %s", spec.run_id, diagnostics.warning)

    checkpoint = folder / "checkpoint.pt"
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if state.get("config_hash") == planned.config_hash:
            trainer.load_state_dict(state["trainer"])
            log.info("   resumed from step %d/%d (accountant history restored)", trainer.step, step.steps)
        else:
            log.info("   checkpoint is from other settings: starting over")
    if ctx.distributed is not None:  # every rank starts from rank 0's weights, whatever each loaded
        ctx.distributed.broadcast_(trainer.params)

    def save_checkpoint(tr: DPTrainer) -> None:
        buffer = io.BytesIO()
        torch.save({"config_hash": planned.config_hash, "trainer": tr.state_dict()}, buffer)
        write_bytes_atomic(checkpoint, buffer.getvalue(), inside=ctx.results_dir)

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
    if step.clipping.mode == "quantile":
        diagnostics = private_count_diagnostics(trainer)
    final_c = trainer.clipper.max_grad_norm
    trainer.finish()
    _save_trainable(model, folder / "trainable.safetensors", ctx.results_dir)

    phase["name"] = "sample and evaluate"
    evaluation = sample_and_evaluate(ctx, model, spec.seed, folder, telemetry=telemetry)
    warmup = planned.training.warmup_steps
    result = _base_result(
        ctx, planned, epsilon_spent=eps_spent, trainable_params=trainable, total_params=total,
        physical_batch_size=trainer.physical_batch_size, clipping_diagnostics=diagnostics,
        peak_memory_bytes=memory["peak_memory_bytes"], total_peak_memory_bytes=memory["total_peak_memory_bytes"],
        memory_kind=memory["memory_kind"], memory_breakdown=memory["memory_breakdown"],
        nvml_peak_memory_bytes=memory["nvml_peak_memory_bytes"],
        throughput_examples_per_s=stats.examples_per_second(step.expected_batch_size, warmup),
        step_time_s=stats.step_time(warmup), train_seconds=stats.train_seconds,
        # a private run's training loss is a statistic of private data outside the mechanism: never kept
        final_loss=_tail_mean(stats.losses) if not step.private else None,
        curves=_curves(stats, trainer.clipper, step.private),
        energy_joules=telemetry.energy_joules, nvml_process_memory_bytes=telemetry.peak_process_memory_bytes,
        gpu_phases={name: GpuPhase(**vars(reading)) for name, reading in telemetry.readings.items()},
        **evaluation)
    if step.clipping.mode == "quantile":
        result.clipping.final_max_grad_norm = final_c
    write_model(folder / "result.json", result, inside=ctx.results_dir)  # last: its presence means "finished"
    checkpoint.unlink(missing_ok=True)
    acc = result.downstream_accuracy
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

