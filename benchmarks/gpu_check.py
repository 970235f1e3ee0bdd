"""What one CUDA GPU says about dpbench, in one run and one JSON file (``benchmarks/gpu_check.sh`` runs this).

    bash benchmarks/gpu_check.sh [--out gpu-check.json] [--budget-s 480]      # a machine with one CUDA GPU
    bash benchmarks/gpu_check.sh --device cpu --dry-run --out /tmp/check.json # the same parts, toy sizes, on CPU

Parts, in order, each recorded with its seconds and whether it passed:

1. ``selfcheck``: ``dpbench selfcheck --device cuda --json`` — per-example gradients against an explicit
   loop, clipping (also under bf16 autocast: ``mixed_precision_max_ratio`` ≤ 1), divisor, noise, per method;
2. ``pytest_gpu``: ``pytest -m gpu tests/test_gpu.py`` — passed / failed / skipped counts;
3. ``profile``: ddpm32 (32×32×3) for every method at ``physical_batch_size: auto`` — the largest DP batch
   that fits (powers of two from 8 up to ``--max-batch``, then bisection), DP and non-private measured
   at that batch in one process: step-time, total-memory and NVML energy-per-step ratios;
4. ``cifar10_run``: 20 DP steps of one cifar10 run (suites/cifar10.yaml: its training settings, K and
   physical batch, the method ``--cell-method``) on random images of CIFAR-10's shape — its cost only
   (step time, peak memory, NVML energy): no pretraining, no data, nothing to evaluate.

A part that would start after ``--budget-s`` seconds is recorded as skipped (and the check fails), so the
file always comes back. Exit status: 0 when every part passed, 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("selfcheck", "pytest_gpu", "profile", "cifar10_run")
METHODS = ("full", "loda", "lora", "bias", "attention")
TAIL = 4000  # characters of a command's output kept in the file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cuda:N; cpu only with --dry-run")
    parser.add_argument("--dry-run", action="store_true", help="toy sizes (tiny preset, 8x8, few steps): the "
                                                               "script's own plumbing, on any device")
    parser.add_argument("--out", default="gpu-check.json", help="the JSON file written (default gpu-check.json)")
    parser.add_argument("--budget-s", type=float, default=480, help="no part starts after this many seconds")
    parser.add_argument("--only", action="append", choices=PARTS, help="run only these parts (repeatable)")
    parser.add_argument("--max-batch", type=int, default=512, help="profile: largest batch tried (default 512)")
    parser.add_argument("--methods", default=",".join(METHODS), help="profile: comma-separated (default: all)")
    parser.add_argument("--cell-method", default="loda", choices=METHODS, help="cifar10_run: the method")
    args = parser.parse_args(argv)
    args.methods = args.methods.split(",")
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)} (known: {', '.join(METHODS)})")
    if args.budget_s < 0 or args.max_batch < 8:
        parser.error("--budget-s must be ≥ 0 and --max-batch ≥ 8")
    return args


def check_device(args: argparse.Namespace) -> str | None:
    """A one-line reason the device cannot run this check, or None."""
    import torch

    if args.device == "cpu":
        return None if args.dry_run else "--device cpu: only with --dry-run (the check measures a CUDA GPU)"
    if not args.device.startswith("cuda"):
        return f"--device {args.device}: give cuda, cuda:N, or cpu with --dry-run"
    if not torch.cuda.is_available():
        return f"--device {args.device}: CUDA is not available here — run on a GPU machine, or --device cpu --dry-run"
    return None


def run_command(command: list[str], timeout: float) -> dict:
    """Run one command from the repository root; its exit status, seconds and the tail of its output."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(1.0, timeout))
        returncode, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        returncode, output = None, f"timed out after {timeout:.0f} s\n" + str(err.stdout or "")[-TAIL:]
    return {"command": " ".join(command), "returncode": returncode, "seconds": time.perf_counter() - start,
            "output_tail": output[-TAIL:]}


# ------------------------------------------------------------------------------------------------- parts
def selfcheck_part(args: argparse.Namespace, seconds_left: float, workdir: Path) -> dict:
    report_path = workdir / "selfcheck.json"
    command = [sys.executable, "-m", "dpbench.cli", "selfcheck", "--device", args.device, "--out", str(report_path)]
    if args.dry_run:
        command += ["--method", "bias"]
    out = run_command(command, seconds_left)
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        out["report"] = report
        out["bf16_clip_max_ratio"] = max((m.get("mixed_precision_max_ratio") or 0.0) for m in report["methods"])
    out["passed"] = out["returncode"] == 0 and "report" in out and out["report"]["passed"]
    return out


def pytest_part(args: argparse.Namespace, seconds_left: float, workdir: Path) -> dict:
    junit = workdir / "pytest-gpu.xml"
    out = run_command([sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q", "-p", "no:cacheprovider",
                       f"--junitxml={junit}"], seconds_left)
    if junit.is_file():
        suite = ElementTree.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        out["counts"] = counts
    # pytest exits 0 when every test passed or skipped (5 would mean none was collected)
    out["passed"] = out["returncode"] == 0 and "counts" in out
    return out


def profile_part(args: argparse.Namespace, seconds_left: float, workdir: Path) -> dict:
    import torch

    from dpbench.config.suite import TrainingSettings
    from dpbench.models.diffusion import build_unet
    from dpbench.commands.profile import ProfileSettings, ProfileTarget, measure_pair
    from dpbench.runner.batch_size import find_max_batch

    preset, size, channels = ("tiny", 8, 1) if args.dry_run else ("ddpm32", 32, 3)
    steps, energy_steps = (2, 2) if args.dry_run else (6, 10)
    torch.manual_seed(0)
    target = ProfileTarget(build_unet(preset, size, channels, 10), preset, (channels, size, size), 10)
    training = TrainingSettings(ema_decay=None)
    deadline = time.perf_counter() + seconds_left
    methods = {}
    for method in args.methods:
        if time.perf_counter() > deadline:
            methods[method] = {"skipped": "over the time budget"}
            continue
        batch = 4 if args.dry_run else find_max_batch(lambda b, m=method: measure_pair(
            target, m, m, {}, b, args.device, ProfileSettings(training, steps=0), modes=("dp",)), start=8,
            limit=args.max_batch)
        if batch is None:
            methods[method] = {"error": "batch 8 does not fit"}
            continue
        settings = ProfileSettings(training, steps=steps, energy_steps=energy_steps)
        entries = {e.mode: e for e in measure_pair(target, method, method, {}, batch, args.device, settings)}
        dp, nonprivate = entries["dp"], entries["nonprivate"]
        methods[method] = {
            "physical_batch_size": batch,
            "step_time_ratio": dp.step_time_s / nonprivate.step_time_s,
            "total_memory_ratio": dp.total_peak_memory_bytes / nonprivate.total_peak_memory_bytes,
            "energy_ratio": (dp.energy_per_step_joules / nonprivate.energy_per_step_joules
                             if dp.energy_per_step_joules and nonprivate.energy_per_step_joules else None),
            "entries": {mode: e.model_dump(mode="json") for mode, e in entries.items()},
        }
    return {"preset": preset, "image_shape": [channels, size, size], "bookkeeping_rule": training.bookkeeping_rule,
            "methods": methods, "passed": all("step_time_ratio" in m for m in methods.values())}


def cifar10_run_part(args: argparse.Namespace, seconds_left: float, workdir: Path) -> dict:
    import torch

    from dpbench.config.suite import load_suite
    from dpbench.engine.measure import StepProbe
    from dpbench.engine.memory import PeakMemory
    from dpbench.engine.setup import ModelRecipe
    from dpbench.engine.telemetry import GpuTelemetry
    from dpbench.models.diffusion import build_unet, make_noise_scheduler

    suite = load_suite(ROOT / "suites" / "cifar10.yaml")
    spec = next(m for m in suite.methods if m.name == args.cell_method)
    ref = suite.data.private
    preset, size, batch, steps = (("tiny", 8, 4, 3) if args.dry_run else
                                  (suite.model.preset, ref.image_size, suite.privacy.physical_batch_size, 20))
    k = suite.privacy.noise_multiplicity
    torch.manual_seed(0)
    model = build_unet(preset, size, ref.channels, 10)
    training = suite.training.model_copy(update={"lr": spec.lr or suite.training.lr})
    recipe = ModelRecipe.of(model, spec.name, spec.options, 10, args.device, scheduler=make_noise_scheduler())
    probe = StepProbe(recipe, training, batch=batch, private=True, image_shape=(ref.channels, size, size),
                      noise_multiplicity=k, warmup=1)
    telemetry = GpuTelemetry(args.device)
    try:
        with PeakMemory(args.device) as memory, telemetry.phase("train"):
            times = [probe.time_step() for _ in range(steps)]
        held = probe.held_between_steps
    finally:
        probe.close()
    reading = telemetry.readings.get("train")
    return {"suite": suite.name, "method": spec.name, "options": spec.options, "preset": preset,
            "physical_batch_size": batch, "noise_multiplicity": k, "steps": len(times),
            "mixed_precision": training.mixed_precision, "bookkeeping_rule": training.bookkeeping_rule,
            "median_step_time_s": statistics.median(times), "examples_per_s": batch / statistics.median(times),
            "total_peak_memory_bytes": held + memory.peak_bytes, "memory_kind": memory.kind,
            "energy_joules": reading.energy_joules if reading else None,
            "mean_power_watts": reading.mean_power_watts if reading else None,
            "passed": len(times) == steps}


RUNNERS: dict[str, Callable[[argparse.Namespace, float, Path], dict]] = {
    "selfcheck": selfcheck_part, "pytest_gpu": pytest_part, "profile": profile_part, "cifar10_run": cifar10_run_part}


def run_parts(args: argparse.Namespace, workdir: Path, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Each wanted part in order, within the budget; a part that raises is recorded, not fatal."""
    start, parts = clock(), {}
    for name in args.only or PARTS:
        left = args.budget_s - (clock() - start)
        if left <= 0:
            parts[name] = {"skipped": f"over the time budget of {args.budget_s:.0f} s", "passed": False}
            continue
        began = clock()
        try:
            parts[name] = RUNNERS[name](args, left, workdir)
        except Exception as err:  # noqa: BLE001 - one broken part must not lose the others' numbers
            parts[name] = {"error": f"{type(err).__name__}: {err}", "passed": False}
        parts[name]["seconds"] = clock() - began
    return parts


def assemble(args: argparse.Namespace, parts: dict, seconds: float) -> dict:
    """The one JSON document: what ran where, each part, and whether all passed."""
    from dpbench.provenance import provenance

    return {"kind": "dpbench-gpu-check", "dry_run": args.dry_run, "budget_s": args.budget_s, "seconds": seconds,
            "passed": bool(parts) and all(p.get("passed") for p in parts.values()), "parts": parts,
            **provenance(args.device)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = check_device(args)
    if problem:
        print(f"gpu_check: {problem}", file=sys.stderr)
        return 2
    from dpbench.results import write_json_atomic

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        parts = run_parts(args, Path(workdir))
    document = assemble(args, parts, time.perf_counter() - start)
    write_json_atomic(args.out, document)
    failed = [name for name, part in parts.items() if not part.get("passed")]
    print(f"gpu_check: {'passed' if not failed else 'FAILED: ' + ', '.join(failed)} in {document['seconds']:.0f} s "
          f"— {args.out}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
