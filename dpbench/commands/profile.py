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

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dpbench.commands.arguments import comma_separated, only_selection
from dpbench.errors import UserError

if TYPE_CHECKING:  # imported where used, so that `dpbench ls` (whose cli imports this module) loads no torch
    import torch

    from dpbench.config.suite import TrainingSettings
    from dpbench.results import Profile, ProfileEntry

log = logging.getLogger("dpbench")


@dataclass(frozen=True)
class ProfileTarget:
    """One model to profile: a pretrained model (or a fresh preset) with the data's shape."""

    pretrained: torch.nn.Module
    preset: str | None
    image_shape: tuple
    num_classes: int


@dataclass(frozen=True)
class ProfileSettings:
    """How every (method, batch) is measured: the training settings of the DP loop, ``steps`` timed steps
    (0: memory only), K noise draws per step, and ``energy_steps`` more per mode for the energy counter."""

    training: TrainingSettings
    steps: int = 6
    noise_multiplicity: int = 1
    energy_steps: int = 0


def measure_pair(target: ProfileTarget, label: str, method_name: str, options: dict, batch: int, device,
                 settings: ProfileSettings, modes=("nonprivate", "dp")) -> list[ProfileEntry]:
    """DP and non-private entries for one method and batch; their timed steps interleaved. With
    ``settings.energy_steps`` on CUDA, each mode then runs that many steps in a block of its own for NVML's
    energy counter (which cannot split interleaved steps)."""
    from dpbench.engine.measure import StepProbe, time_interleaved
    from dpbench.engine.setup import ModelRecipe
    from dpbench.models.diffusion import make_noise_scheduler
    from dpbench.registry import METHODS
    from dpbench.results import ProfileEntry

    method = METHODS.get(method_name, "--methods")(options)
    probes = []
    try:
        for mode in modes:
            probes.append(StepProbe(ModelRecipe(target.pretrained, method, target.num_classes, device,
                                                make_noise_scheduler()), settings.training, batch=batch,
                                    private=mode == "dp", image_shape=target.image_shape,
                                    noise_multiplicity=settings.noise_multiplicity, warmup=2))
        memory = [probe.memory() for probe in probes]
        timing = time_interleaved(probes, settings.steps) if settings.steps else [{}] * len(probes)
        energy = [_energy_per_step(probe, settings.energy_steps) for probe in probes]
        trainable = sum(p.numel() for p in probes[0].trainer.params)
        total = sum(p.numel() for p in probes[0].trainer.model.parameters())
    finally:
        for probe in probes:
            probe.close()
    return [ProfileEntry(method=method_name, method_label=label, mode=mode, physical_batch_size=batch,
                         preset=target.preset, image_size=target.image_shape[-1],
                         grad_sample_mode=settings.training.grad_sample_mode, trainable_params=trainable, total_params=total,
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


def run_profile(*, targets: list[ProfileTarget], methods: list[tuple[str, str, dict]], batch_sizes: list[int], device,
                source: str, settings: ProfileSettings, find_max: bool = False) -> Profile:
    import torch

    from dpbench.provenance import provenance
    from dpbench.results import Profile
    from dpbench.runner.batch_size import find_max_batch

    device = torch.device(device)
    if find_max and device.type != "cuda":
        raise UserError("--find-max-batch: the search needs a CUDA device (CPU memory is not a batch limit) — "
                        "run it with --device cuda on a GPU machine")
    entries, max_batch = [], {}
    memory_only = dataclasses.replace(settings, steps=0, energy_steps=0)
    for target in targets:
        for label, name, options in methods:
            for batch in batch_sizes:
                for e in measure_pair(target, label, name, options, batch, device, settings):
                    entries.append(e)
                    log.info("  %s %spx %-10s %-10s batch %5d: %8.1f ms/step, %8.1f ex/s, step peak %8.1f MiB, "
                             "total %8.1f MiB", target.preset or "model", e.image_size, label, e.mode, batch,
                             e.step_time_s * 1000, e.examples_per_s, e.peak_memory_bytes / 2**20,
                             e.total_peak_memory_bytes / 2**20)
            if find_max:
                max_batch[label] = {mode: find_max_batch(lambda b, mode=mode: measure_pair(
                    target, label, name, options, b, device, memory_only, modes=(mode,)))
                    for mode in ("dp", "nonprivate")}
    training = settings.training
    return Profile(source=source, image_size=targets[0].image_shape[-1] if len(targets) == 1 else None,
                   noise_multiplicity=settings.noise_multiplicity, grad_sample_mode=training.grad_sample_mode,
                   bookkeeping_rule=training.bookkeeping_rule if training.grad_sample_mode == "bookkeeping" else None,
                   entries=entries, max_batch_size=max_batch, **provenance(device))


@dataclass
class _Plan:
    """What `dpbench profile` measures: the targets and methods, their settings, where the file goes."""

    targets: list[ProfileTarget]
    methods: list[tuple[str, str, dict]]
    device: "torch.device"
    settings: ProfileSettings
    source: str
    default_out: Path


def _suite_plan(args) -> _Plan:
    """The suite's pretrained model, data shape, methods (those of ``--methods``) and training settings."""
    from dpbench.commands.suites import load_checked_suite, suite_device
    from dpbench.data.base import dataset_num_classes
    from dpbench.models.pretrain import load_pretrained

    _, suite, _, _ = load_checked_suite(args)
    device = suite_device(args, suite)
    ref = suite.data.private
    num_classes = dataset_num_classes(ref, suite.data_root(ref, args.data_root))
    pretrained = load_pretrained(suite, data_root=args.data_root, cache_dir=args.cache_dir, device=str(device),
                                 progress=args.progress).model
    targets = [ProfileTarget(pretrained, suite.model.preset, (ref.channels, ref.image_size, ref.image_size), num_classes)]
    methods = [(m.method_label, m.name, m.options) for m in suite.methods]
    if args.methods:
        wanted = set(args.methods.split(","))
        methods = [m for m in methods if m[0] in wanted or m[1] in wanted]
    settings = ProfileSettings(suite.training, args.steps, suite.privacy.noise_multiplicity)
    return _Plan(targets, methods, device, settings, f"suite:{suite.name}",
                 Path(args.results_dir) / suite.name / "profile.json")


def _preset_plan(args) -> _Plan:
    """Fresh models of each ``--preset`` at each ``--image-size``, every registered method (or ``--methods``)."""
    import torch

    from dpbench.config.suite import TrainingSettings
    from dpbench.models.diffusion import build_unet
    from dpbench.registry import METHODS, PRESETS
    from dpbench.runner.devices import resolve_device

    device = resolve_device(args.device)
    names = args.methods.split(",") if args.methods else METHODS.names()
    for name in names:
        METHODS.check(name, "--methods")
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
    return _Plan(targets, [(n, n, {}) for n in names], device, ProfileSettings(training, args.steps),
                 f"preset:{','.join(presets)}", Path(args.results_dir) / f"profile-{'-'.join(presets)}.json")


def profile_command(args) -> Path:
    """`dpbench profile` (see dpbench/cli.py for the arguments); returns the file written."""
    from dpbench.results import write_model

    batch_sizes = comma_separated(args.batch_sizes, int, "--batch-sizes", valid=lambda b: b > 0,
                                  expected="positive integers, e.g. 8,32,128")
    plan = _suite_plan(args) if args.suite else _preset_plan(args)
    training = plan.settings.training
    if getattr(args, "grad_sample_mode", None):
        training = training.model_copy(update={"grad_sample_mode": args.grad_sample_mode})
    if getattr(args, "bookkeeping_rule", None):
        training = training.model_copy(update={"bookkeeping_rule": args.bookkeeping_rule})
    profile = run_profile(targets=plan.targets, methods=plan.methods, batch_sizes=batch_sizes, device=plan.device,
                          source=plan.source, settings=dataclasses.replace(plan.settings, training=training),
                          find_max=args.find_max_batch)
    out = Path(args.out) if args.out else plan.default_out
    write_model(out, profile)
    return out


def cmd_profile(args) -> int:
    from dpbench.reporting.profiles import format_profile
    from dpbench.results import Profile, read_model

    selected = only_selection(args.only, ("method", "label"), "profile")
    names = selected.get("method", []) + selected.get("label", [])
    if names:
        args.methods = ",".join(([args.methods] if args.methods else []) + names)
    out = profile_command(args)
    print(format_profile(read_model(out, Profile)))
    print(f"profile written to {out}")
    return 0
