"""`dpbench profile`: per method, DP and non-private side by side in one process, across batch sizes.

For each (method, physical batch size, mode) the DP loop itself (dpbench/engine/trainer.py) runs
logical steps of exactly one physical batch on random images of the data's shape (q = 1, so no
Poisson variation): a warm-up step, three single-step memory peaks (median), then ``steps`` timed
steps, DP and non-private alternating (dpbench/engine/measure.py). Because DP and non-private settings are measured back to back in the same
process, their *ratio* is comparable across machines (what `dpbench regress` compares). On CUDA,
``--find-max-batch`` also doubles the batch until it no longer fits.

Output: a JSON file in the format of dpbench/reporting/profile_files.py; with a suite it goes to
``results/<suite>/profile.json`` so that the suite's report shows it.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import torch

from dpbench.results import SCHEMA_VERSION, write_json_atomic


def measure_pair(pretrained, method_name: str, options: dict, image_shape: tuple, num_classes: int, batch: int,
                 device, steps: int = 6, grad_sample_mode: str = "hooks", noise_multiplicity: int = 1,
                 modes=("nonprivate", "dp")) -> dict:
    """{mode: step time, peak memory, parameter counts} for one method and batch; steps interleaved across modes."""
    from dpbench.engine.measure import StepProbe, time_interleaved
    from dpbench.engine.trainer import OptimSettings, prepare_model
    from dpbench.models.diffusion import count_parameters, make_noise_scheduler
    from dpbench.registry import METHODS

    torch.manual_seed(0)
    model = prepare_model(pretrained, METHODS.get(method_name)(options), num_classes, device)
    trainable, total = count_parameters(model)
    settings = OptimSettings(ema_decay=None, grad_sample_mode=grad_sample_mode)
    probes = [StepProbe(model, make_noise_scheduler(), settings, device, batch=batch, private=mode == "dp",
                        image_shape=image_shape, num_classes=num_classes, noise_multiplicity=noise_multiplicity)
              for mode in modes]
    try:
        memory = [probe.memory() for probe in probes]
        timing = time_interleaved(probes, steps) if steps else [{}] * len(probes)
    finally:
        for probe in probes:
            probe.close()
    return {mode: {**m, **t, "trainable_params": trainable, "total_params": total}
            for mode, m, t in zip(modes, memory, timing)}


def _fits(fn) -> bool:
    try:
        fn()
        return True
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return False


def find_max_batch(run, start: int = 32, limit: int = 65536) -> int | None:
    """Largest power-of-two batch (≥ start) for which ``run(batch)`` does not run out of CUDA memory."""
    best, batch = None, start
    while batch <= limit and _fits(lambda: run(batch)):
        best, batch = batch, batch * 2
    return best


def run_profile(*, pretrained, methods: list[tuple[str, str, dict]], image_shape: tuple, num_classes: int,
                batch_sizes: list[int], device, steps: int, source: str, find_max: bool = False,
                progress: bool = True, noise_multiplicity: int = 1) -> dict:
    from dpbench.provenance import device_description, git_sha, library_versions

    entries, max_batch = [], {}
    for label, name, options in methods:
        for batch in batch_sizes:
            pair = measure_pair(pretrained, name, options, image_shape, num_classes, batch, device, steps=steps,
                                noise_multiplicity=noise_multiplicity)
            for mode, row in pair.items():  # side by side, same process, steps interleaved
                entries.append({"method": name, "method_label": label, "mode": mode, "physical_batch_size": batch, **row})
                if progress:
                    print(f"  {label:<10} {mode:<10} batch {batch:>5}: {row['step_time_s'] * 1000:8.1f} ms/step, "
                          f"{row['examples_per_s']:8.1f} ex/s, peak {row['peak_memory_bytes'] / 2**20:8.1f} MiB", flush=True)
        if find_max and torch.device(device).type == "cuda":
            max_batch[label] = {
                mode: find_max_batch(lambda b: measure_pair(pretrained, name, options, image_shape, num_classes, b,
                                                            device, steps=0, noise_multiplicity=noise_multiplicity,
                                                            modes=(mode,)))
                for mode in ("dp", "nonprivate")
            }
    out = {"schema_version": SCHEMA_VERSION, "kind": "dpbench-profile",
           "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "device": device_description(device), "versions": library_versions(), "git_sha": git_sha(),
           "source": source, "image_size": int(image_shape[-1]), "noise_multiplicity": noise_multiplicity,
           "entries": entries}
    if max_batch:
        out["max_batch_size"] = max_batch
    return out


def format_profile(profile: dict) -> str:
    rows = {}
    for e in profile["entries"]:
        rows.setdefault((e["method_label"], e["physical_batch_size"]), {})[e["mode"]] = e
    head = f"{'method':<10} {'batch':>5} {'non-private ms':>14} {'DP ms':>9} {'time ratio':>10} {'memory ratio':>12} {'trainable':>10}"
    lines = [head, "-" * len(head)]
    for (label, batch), modes in rows.items():
        dp, npv = modes.get("dp"), modes.get("nonprivate")
        if not (dp and npv):
            continue
        mem = dp["peak_memory_bytes"] / npv["peak_memory_bytes"] if npv["peak_memory_bytes"] else math.nan
        lines.append(f"{label:<10} {batch:>5} {npv['step_time_s'] * 1000:>14.1f} {dp['step_time_s'] * 1000:>9.1f} "
                     f"{dp['step_time_s'] / npv['step_time_s']:>9.2f}x {mem:>11.2f}x {dp['trainable_params']:>10}")
    return "\n".join(lines)


def profile_command(args) -> str:
    """Entry point of `dpbench profile` (see dpbench/cli.py for the arguments)."""
    from dpbench.errors import UserError
    from dpbench.registry import METHODS, load_builtin_entries
    from dpbench.runner.suite_runner import resolve_device

    load_builtin_entries()
    device = resolve_device(args.device or "auto")
    batch_sizes = [int(b) for b in str(args.batch_sizes).split(",") if b.strip()]
    if not batch_sizes or min(batch_sizes) <= 0:
        raise UserError("--batch-sizes: give positive integers, e.g. 8,32,128")
    if args.suite:
        from dpbench.config.suite import load_suite
        from dpbench.data.base import dataset_num_classes
        from dpbench.models.pretrain import load_pretrained

        suite = load_suite(args.suite)
        root = suite.data_root(suite.data.private, args.data_root)
        num_classes = dataset_num_classes(suite.data.private, root)
        image_shape = (suite.data.private.channels, suite.data.private.image_size, suite.data.private.image_size)
        pretrained = load_pretrained(suite, data_root=args.data_root, cache_dir=args.cache_dir, device=str(device),
                                     progress=not args.no_progress).model
        methods = [(m.key, m.name, m.options) for m in suite.methods]
        if args.methods:
            wanted = set(args.methods.split(","))
            methods = [m for m in methods if m[0] in wanted or m[1] in wanted]
        source, default_out = f"suite:{suite.name}", Path("results") / suite.name / "profile.json"
        multiplicity = suite.privacy.noise_multiplicity
    else:
        from dpbench.models.diffusion import build_unet

        names = args.methods.split(",") if args.methods else METHODS.names()
        for name in names:
            METHODS.check(name)
        methods = [(n, n, {}) for n in names]
        num_classes = 10
        image_shape = (args.channels, args.image_size, args.image_size)
        torch.manual_seed(0)
        pretrained = build_unet(args.preset, args.image_size, args.channels, num_classes)
        source, default_out = f"preset:{args.preset}", Path("results") / f"profile-{args.preset}.json"
        multiplicity = 1
    profile = run_profile(pretrained=pretrained, methods=methods, image_shape=image_shape,
                          num_classes=num_classes, batch_sizes=batch_sizes, device=str(device), steps=args.steps,
                          source=source, find_max=args.find_max_batch, progress=not args.no_progress,
                          noise_multiplicity=multiplicity)
    out = Path(args.out) if args.out else default_out
    write_json_atomic(out, profile)
    print(format_profile(profile))
    return f"profile written to {out}"
