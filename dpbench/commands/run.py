"""`dpbench run SUITE`: the grid run through the runner (dpbench/runner/suite_runner.py), its summary,
report and ``--report-to``; with ``--dry-run``, the plan and its estimates (dpbench/runner/dry_run.py)
printed instead."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

from dpbench.errors import EXIT_CHECK_FAILED, UserError

log = logging.getLogger("dpbench")


def cmd_run(args) -> int:
    from dpbench.commands.reports import check_report_to, report_to
    from dpbench.commands.suites import in_file, runner_settings

    if args.json and not args.dry_run:
        raise UserError("--json prints the plan of --dry-run: add --dry-run (a run prints its summary table)")
    check_report_to(args.report_to)  # a missing extra fails now, not after hours of runs
    settings = runner_settings(args, need_machine=not args.dry_run)
    if args.dry_run:  # a GPU suite dry-runs on a laptop: what this machine lacks is said, not an error
        from dpbench.runner.dry_run import dry_run

        result = in_file(settings.suite_path, dry_run, settings, args.only)
        print(json.dumps(result.as_json(), indent=2) if args.json else format_dry_run(result))
        return 0
    from dpbench.engine.distributed import is_root_process
    from dpbench.reporting.summary import format_summary
    from dpbench.runner.suite_runner import run_suite

    if not is_root_process():  # torchrun: rank 0 logs and reports for the group
        log.setLevel(logging.WARNING)
    outcome = in_file(settings.suite_path, run_suite, settings, args.only, rerun_changed=args.rerun_changed)
    if not is_root_process():
        return 0
    print(format_summary(outcome.results_dir), flush=True)
    if not args.no_report:
        from dpbench.reporting.report import build_report

        out = Path(args.reports_dir) / settings.suite.name if args.reports_dir else outcome.results_dir / "report"
        print(f"report: {build_report(outcome.results_dir, out)}", flush=True)
    report_to(outcome.results_dir, args.report_to)
    if outcome.failed:
        for r in outcome.failed:
            print(f"dpbench: failed: {r.run_id} ({r.phase}): {r.error}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    return 0


def format_dry_run(result) -> str:
    """The dry run as a table (one row per run) and its totals and notes (a :class:`DryRun`)."""
    from dpbench.reporting.tables import text_table

    def minutes(seconds: Optional[float]) -> str:
        return "—" if seconds is None else f"{seconds / 60:.1f} min"

    rows = []
    for r in result.runs:
        row = r.row
        sigma = f"{row['noise_multiplier']:.4g}" if row["epsilon"] != "inf" else "—"
        assumed = "" if result.num_examples_exact else " (N assumed)"
        rows.append([row["run_id"], sigma, f"{row['sample_rate']:.4g}{assumed}", row["steps"], row["clipping"],
                     r.physical_batch, minutes(r.train_s), minutes(r.sample_s), minutes(r.eval_s),
                     f"{r.memory_bytes / 2**20:.0f} MiB" if r.memory_bytes else "—"])
    table = text_table(["run", "σ", "q", "T", "clipping", "physical batch", "train (est.)", "sampling (est.)",
                        "evaluation (est.)", "memory (analytic)"], rows)
    size = f"N={result.num_examples}" + ("" if result.num_examples_exact else " (nominal: the data is not present)")
    lines = [table, f"{len(result.runs)} runs on {result.device}, {size}"]
    if result.time_estimated:
        lines.append(f"estimated total {result.total_s / 60:.0f} min: runs {sum(r.total_s for r in result.runs) / 60:.1f} min, "
                     f"baselines {result.baselines_s / 60:.1f} min, public pretraining {result.pretrain_s / 60:.1f} min "
                     f"(an estimate from short probes on random data, made in {result.probe_seconds:.0f} s)")
    lines += [f"note: {n}" for n in result.notes]
    lines.append("memory: analytic — weights, optimiser state, EMA and per-example gradients at the physical batch "
                 "(an upper bound for book-keeping, which keeps some layers' norms without them); activations not included")
    return "\n".join(lines)
