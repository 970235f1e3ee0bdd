"""How close `dpbench run SUITE --dry-run` comes to the run it estimates.

    python benchmarks/dry_run_accuracy.py quickstart [--out FILE] [dpbench run options...]

Runs the dry run and then the suite itself, each as a fresh `dpbench` process with an empty cache and
results folder (so pretraining is part of both), and prints the estimated and measured wall time —
in total and per phase where the results record it (train, sample, evaluate). The ratio measured /
estimated is what issue 18 asks to keep within [0.5, 2]. It takes as long as the suite: run it on a
quiet machine, one thing at a time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite")
    parser.add_argument("--out", help="also write the comparison as JSON here")
    args, extra = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as folder:
        env_args = ["--cache-dir", f"{folder}/cache", "--no-progress", *extra]
        start = time.perf_counter()
        plan = json.loads(subprocess.run([sys.executable, "-m", "dpbench", "run", args.suite, "--dry-run", "--json",
                                          *env_args], check=True, capture_output=True, text=True).stdout)
        dry_run_seconds = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dpbench", "run", args.suite, "--results-dir", f"{folder}/results",
                        "--no-report", *env_args], check=True)
        measured = time.perf_counter() - start
        from dpbench.results import load_results

        suite_dir = next(Path(folder, "results").iterdir())
        results = {r.run_id: r for r in load_results(suite_dir)}
    phases = {}
    for name, field in (("train", "train_seconds"), ("sample", "sample_seconds"), ("evaluate", "eval_seconds")):
        estimated = sum(r["estimated_phase_seconds"][name] for r in plan["runs"])
        actual = sum(getattr(results[r["run_id"]], field) or 0.0 for r in plan["runs"] if r["run_id"] in results)
        phases[name] = {"estimated_s": estimated, "measured_s": actual, "ratio": actual / estimated if estimated else None}
    out = {"suite": args.suite, "dry_run_seconds": dry_run_seconds, "estimated_total_s": plan["total_estimated_seconds"],
           "measured_total_s": measured, "ratio": measured / plan["total_estimated_seconds"], "phases": phases}
    print(json.dumps(out, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
