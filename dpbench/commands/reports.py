"""Commands that read result files: `dpbench report`, `export`, `regress` and `docs`; and ``--report-to``,
which `run` shares."""

from __future__ import annotations

import sys
from pathlib import Path

from dpbench.errors import EXIT_CHECK_FAILED, EXIT_OK, UserError


def check_report_to(targets) -> None:
    """A ``--report-to`` target whose extra is not installed is an error now, not after the runs."""
    if targets:
        from dpbench.reporting.loggers import require_targets

        require_targets(targets)


def report_to(results_dir, targets) -> None:
    if targets:
        from dpbench.reporting.loggers import report_to as log_to

        for line in log_to(results_dir, targets):
            print(line, flush=True)


def cmd_report(args) -> int:
    from dpbench.reporting.report import build_report
    from dpbench.reporting.summary import format_summary

    check_report_to(args.report_to)
    if args.out and args.reports_dir:
        raise UserError("--out and --reports-dir both name the report's folder: give one")
    if args.reports_dir:
        out = Path(args.reports_dir) / Path(args.results_dir).resolve().name
    else:
        out = Path(args.out) if args.out else Path(args.results_dir) / "report"
    index = build_report(args.results_dir, out)
    print(format_summary(args.results_dir))
    print(f"report: {index}")
    report_to(args.results_dir, args.report_to)
    return 0


def cmd_export(args) -> int:
    from dpbench.reporting.export import export_results

    out = export_results(args.results_dir, args.format, args.out)
    if out is not None:
        print(f"exported to {out}", file=sys.stderr)
    return 0


def cmd_regress(args) -> int:
    from dpbench.reporting.regress import format_regress_table, regress

    rows, ok = regress(args.current, args.baseline, tolerance=args.tolerance)
    print(format_regress_table(rows))
    print("no regression" if ok else "REGRESSION: at least one metric is worse than the tolerance allows")
    return EXIT_OK if ok else EXIT_CHECK_FAILED


def cmd_docs(args) -> int:
    from dpbench.reporting.doc_tables import COMMAND, summarize_results, update_documents

    if args.name and not args.from_results:
        raise UserError("--name: only with --from-results — add --from-results results/<suite>")
    if args.check and args.from_results:
        raise UserError("--check: writes nothing, but --from-results writes a summary — run them one after the other")
    if args.from_results:
        name = args.name or Path(args.from_results).resolve().name
        print(f"summary written to {summarize_results(args.from_results, name, args.root)}")
    differing = update_documents(args.root, check=args.check)
    for block in differing:
        print(f"{'differs from its data file' if args.check else 'regenerated'}: {block}")
    if args.check and differing:
        print(f"run `{COMMAND}` to regenerate them (after checking the data files are the ones meant)")
        return EXIT_CHECK_FAILED
    print("every generated block matches its data file" if not differing else f"{len(differing)} blocks regenerated")
    return EXIT_OK
