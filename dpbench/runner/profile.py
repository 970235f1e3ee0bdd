"""`dpbench profile`: per method, DP and non-private side by side in one process, across presets, image
sizes and batch sizes.

For each (preset, image size, method, physical batch size, mode) the DP loop itself
(dpbench/engine/trainer.py) runs logical steps of exactly one physical batch on random images (q = 1,
so no Poisson variation): warm-up steps, three single-step memory peaks (median), then ``steps`` timed
steps, DP and non-private alternating (dpbench/engine/measure.py). Because DP and non-private settings
are measured back to back in the same process, their *ratio* is comparable across machines (what
`dpbench regress` compares). With a suite, the suite's own training settings (optimizer, mixed
precision, per-example gradient engine, K) are used. On CUDA, ``--find-max-batch`` searches the
largest batch that fits.

Output: a :class:`dpbench.results.Profile` file; with a suite it goes to ``results/<suite>/profile.json``
so that the suite's report shows it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from dpbench.config.arguments import comma_separated
from dpbench.errors import UserError
from dpbench.results import Profile, ProfileEntry, write_model

log = logging.getLogger("dpbench")


@dataclass(frozen=True)
class ProfileTarget:
    """One model to profile: a pretrained model (or a fresh preset) with the data's shape."""

    pretrained: torch.nn.Module
    preset: str | None
    image_shape: tuple
    num_classes: int


def measure_pair(target: ProfileTarget, label: str, method_name: str, options: dict, batch: int, device, training,
                 steps: int = 6, noise_multiplicity: int = 1, modes=("nonprivate", "dp"),
                 energy_steps: int = 0) -> list[ProfileEntry]:
    """DP and non-private entries for one method and batch; their timed steps interleaved. With
    ``energy_steps`` on CUDA, each mode then runs that many steps in a block of its own for NVML's energy
    counter (which cannot split interleaved steps)."""
    from dpbench.engine.measure import StepProbe, time_interleaved
    from dpbench.engine.setup import ModelRecipe
    from dpbench.models.diffusion import make_noise_scheduler
    from dpbench.registry import METHODS

    method = METHODS.get(method_name, "--methods")(options)
    probes = []
    try:
        for mode in modes:
            probes.append(StepProbe(ModelRecipe(target.pretrained, method, target.num_classes, device,
                                                make_noise_scheduler()), training, batch=batch, private=mode == "dp",
                                    image_shape=target.image_shape, noise_multiplicity=noise_multiplicity, warmup=2))
        memory = [probe.memory() for probe in probes]
        timing = time_interleaved(probes, steps) if steps else [{}] * len(probes)
        energy = [_energy_per_step(probe, energy_steps) for probe in probes]
        trainable = sum(p.numel() for p in probes[0].trainer.params)
        total = sum(p.numel() for p in probes[0].trainer.model.parameters())
    finally:
        for probe in probes:
            probe.close()
    return [ProfileEntry(method=method_name, method_label=label, mode=mode, physical_batch_size=batch,
                         preset=target.preset, image_size=target.image_shape[-1],
                         grad_sample_mode=training.grad_sample_mode, trainable_params=trainable, total_params=total,
                         energy_per_step_joules=e, **{k: v for k, v in m.items() if k != "reserved_memory_bytes"}, **t)
            for mode, m, t, e in zip(modes, memory, timing, energy)]


def _energy_per_step(probe, steps: int) -> float | None:
    from dpbench.engine.telemetry import GpuTelemetry

    if not steps or probe.device.type != "cuda":
        return None
    telemetry = GpuTelemetry(probe.device)
    with telemetry.phase("steps"):
        for _ in range(steps):
            probe.trainer.train_step()
    return telemetry.energy_joules / steps if telemetry.energy_joules is not None else None


def _fits(run, batch: int) -> bool:
    from dpbench.engine.memory import is_out_of_memory

    try:
        run(batch)
        return True
    except Exception as err:  # noqa: BLE001 - only allocation failures mean "does not fit"
        if not is_out_of_memory(err):
            raise
    torch.cuda.empty_cache()  # outside the handler: the failed attempt's frames are released first
    return False


def find_max_batch(run, start: int = 8, limit: int = 1 << 16) -> int | None:
    """The largest batch up to ``limit`` for which ``run(batch)`` fits: doubling to bracket it, then
    bisection (not only powers of two); None if ``start`` does not fit."""
    if not _fits(run, start):
        return None
    low, high = start, None
    while high is None:
        if low >= limit:
            return low
        candidate = min(low * 2, limit)
        if _fits(run, candidate):
            low = candidate
        else:
            high = candidate
    while high - low > max(1, low // 64):  # within ~1.5%
        mid = (low + high) // 2
        if _fits(run, mid):
            low = mid
        else:
            high = mid
    return low


def run_profile(*, targets: list[ProfileTarget], methods: list[tuple[str, str, dict]], batch_sizes: list[int], device,
                steps: int, source: str, training, find_max: bool = False, noise_multiplicity: int = 1) -> Profile:
    from dpbench.provenance import provenance

    device = torch.device(device)
    if find_max and device.type != "cuda":
        raise UserError("--find-max-batch: the search needs a CUDA device (CPU memory is not a batch limit) — "
                        "run it with --device cuda on a GPU machine")
    entries, max_batch = [], {}
    for target in targets:
        for label, name, options in methods:
            for batch in batch_sizes:
                pair = measure_pair(target, label, name, options, batch, device, training, steps=steps,
                                    noise_multiplicity=noise_multiplicity)
                for e in pair:
                    entries.append(e)
                    log.info("  %s %spx %-10s %-10s batch %5d: %8.1f ms/step, %8.1f ex/s, step peak %8.1f MiB, "
                             "total %8.1f MiB", target.preset or "model", e.image_size, label, e.mode, batch,
                             e.step_time_s * 1000, e.examples_per_s, e.peak_memory_bytes / 2**20,
                             e.total_peak_memory_bytes / 2**20)
            if find_max:
                max_batch[label] = {mode: find_max_batch(lambda b, mode=mode: measure_pair(
                    target, label, name, options, b, device, training, steps=0,
                    noise_multiplicity=noise_multiplicity, modes=(mode,))) for mode in ("dp", "nonprivate")}
    return Profile(source=source, image_size=targets[0].image_shape[-1] if len(targets) == 1 else None,
                   noise_multiplicity=noise_multiplicity, grad_sample_mode=training.grad_sample_mode,
                   bookkeeping_rule=training.bookkeeping_rule if training.grad_sample_mode == "bookkeeping" else None,
                   entries=entries, max_batch_size=max_batch, **provenance(device))


def profile_command(args) -> Path:
    """Entry point of `dpbench profile` (see dpbench/cli.py for the arguments); returns the file written."""
    from dpbench.registry import METHODS, PRESETS
    from dpbench.runner.devices import resolve_device

    batch_sizes = comma_separated(args.batch_sizes, int, "--batch-sizes", valid=lambda b: b > 0,
                                  expected="positive integers, e.g. 8,32,128")
    if args.suite:
        from dpbench.config.suite import load_suite
        from dpbench.data.base import dataset_num_classes
        from dpbench.models.pretrain import load_pretrained

        suite = load_suite(args.suite)
        device = resolve_device(args.device or suite.device)
        root = suite.data_root(suite.data.private, args.data_root)
        num_classes = dataset_num_classes(suite.data.private, root)
        ref = suite.data.private
        pretrained = load_pretrained(suite, data_root=args.data_root, cache_dir=args.cache_dir, device=str(device),
                                     progress=args.progress).model
        targets = [ProfileTarget(pretrained, suite.model.preset, (ref.channels, ref.image_size, ref.image_size), num_classes)]
        methods = [(m.key, m.name, m.options) for m in suite.methods]
        if args.methods:
            wanted = set(args.methods.split(","))
            methods = [m for m in methods if m[0] in wanted or m[1] in wanted]
        training = suite.training
        source, default_out = f"suite:{suite.name}", Path(args.results_dir) / suite.name / "profile.json"
        multiplicity = suite.privacy.noise_multiplicity
    else:
        from dpbench.config.suite import TrainingSettings
        from dpbench.models.diffusion import build_unet

        device = resolve_device(args.device)
        names = args.methods.split(",") if args.methods else METHODS.names()
        for name in names:
            METHODS.check(name, "--methods")
        methods = [(n, n, {}) for n in names]
        presets = comma_separated(args.preset, str, "--preset")
        for preset in presets:
            PRESETS.check(preset, "--preset")
        targets = []
        for preset in presets:
            for size in comma_separated(args.image_size, int, "--image-size", valid=lambda s: s > 0,
                                        expected="positive integers, e.g. 16,32"):
                torch.manual_seed(0)
                targets.append(ProfileTarget(build_unet(preset, size, args.channels, 10), preset,
                                             (args.channels, size, size), 10))
        training = TrainingSettings(ema_decay=None)  # the engine a run would use (--grad-sample-mode overrides it)
        source = f"preset:{','.join(presets)}"
        default_out = Path(args.results_dir) / f"profile-{'-'.join(presets)}.json"
        multiplicity = 1
    if getattr(args, "grad_sample_mode", None):
        training = training.model_copy(update={"grad_sample_mode": args.grad_sample_mode})
    if getattr(args, "bookkeeping_rule", None):
        training = training.model_copy(update={"bookkeeping_rule": args.bookkeeping_rule})
    profile = run_profile(targets=targets, methods=methods, batch_sizes=batch_sizes, device=device, steps=args.steps,
                          source=source, training=training, find_max=args.find_max_batch,
                          noise_multiplicity=multiplicity)
    out = Path(args.out) if args.out else default_out
    write_model(out, profile)
    return out
