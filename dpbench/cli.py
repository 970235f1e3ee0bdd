"""The `dpbench` command line.

Exit codes: 0 ok; 1 a check failed (regress found a regression, selfcheck or audit a failure, a grid
finished with failed cells); 2 bad input (one line per problem, naming the field and the fix, no
traceback); 3 internal error (a bug: the traceback is printed); 130 interrupted (finished runs are kept).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap

from dpbench.errors import EXIT_CHECK_FAILED, EXIT_INTERNAL_ERROR, EXIT_INTERRUPTED, EXIT_OK, UserError

LISTABLE = ("methods", "datasets", "presets", "suites", "executors", "backbones", "classifiers")
log = logging.getLogger("dpbench")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="data folder (overrides the suite's data.root and $DPBENCH_DATA)")
    p.add_argument("--cache-dir", help="pretrained-model cache (default $DPBENCH_CACHE or ~/.cache/dpbench)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (overrides the suite's device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they are only drawn on a terminal)")


SUITE_HELP = "a suite YAML file, or the name of a built-in suite (`dpbench ls suites`)"


def _add_smoke(p: argparse.ArgumentParser) -> None:
    p.add_argument("--smoke", action="store_true",
                   help="every cell end to end with 2 steps and minimal sampling and evaluation, to check the suite; "
                   "results go to <results dir>/<suite>-smoke/, are marked smoke and measure nothing")


def _suite_overrides(args, path) -> tuple[str, ...]:
    """--set overrides, then the smoke settings with --smoke (dpbench/config/smoke.py)."""
    from dpbench.config.suite import load_suite

    overrides = tuple(args.set)
    if getattr(args, "smoke", False):
        from dpbench.config.smoke import smoke_overrides

        load_suite(path, overrides)  # the suite and the user's overrides are valid: only then derive the smoke ones
        overrides += tuple(smoke_overrides(path, overrides))
    return overrides


def _add_report_to(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report-to", action="append", default=[], choices=("tensorboard", "mlflow"),
                   help="also log every run (settings, metrics, curves) to TensorBoard (<results>/tensorboard/) or "
                   "MLflow ($MLFLOW_TRACKING_URI, else <results>/mlruns); repeatable; needs pip install "
                   "'dpbench[tensorboard]' / 'dpbench[mlflow]'")


def _check_report_to(targets) -> None:
    if targets:
        from dpbench.reporting.loggers import require_targets

        require_targets(targets)


def _report_to(results_dir, targets) -> None:
    if targets:
        from dpbench.reporting.loggers import report_to

        for line in report_to(results_dir, targets):
            print(line, flush=True)


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a suite setting, as YAML (repeatable, applied in order; part of the runs' config "
                   "hash and recorded in the results' suite.yaml), e.g. --set privacy.epsilons=[1,10] "
                   "--set methods[loda].lr=0.01")


def build_parser() -> argparse.ArgumentParser:
    import dpbench

    parser = argparse.ArgumentParser(prog="dpbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"dpbench {dpbench.__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a suite: pretrain, DP fine-tune every method, sample, evaluate, report "
                                   "(under torchrun --nproc-per-node N, each run is trained by N processes)")
    p.add_argument("suite", help=SUITE_HELP)
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                   help="restrict the grid (method=, label=, epsilon=, seed=); repeatable")
    p.add_argument("--results-dir", default="results", help="results root (default results/); runs go to DIR/<suite>/")
    p.add_argument("--reports-dir", help="write the report to DIR/<suite>/ (default: <results dir>/<suite>/report/)")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML/markdown report at the end")
    _add_report_to(p)
    p.add_argument("--rerun-changed", action="store_true",
                   help="re-run finished runs whose settings changed since (default: refuse, exit 2)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the runs (σ, q, T per cell) and estimated time and memory per run; run nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: print the plan and estimates as JSON")
    _add_smoke(p)
    _add_set(p)
    _add_common(p)

    p = sub.add_parser("ls", help="list registered methods, datasets, presets, suites, ...")
    p.add_argument("what", nargs="?", default="methods", choices=LISTABLE, help="what to list (default: methods)")
    p.add_argument("--json", action="store_true", help="print a JSON list of {name, description}")

    p = sub.add_parser("validate", help="check a suite (every problem at once) and print its runs")
    p.add_argument("suite", help=SUITE_HELP)
    p.add_argument("--json", action="store_true", help="print the runs as a JSON list (with σ, q, T, C, K)")
    p.add_argument("--data-root", help="data folder, to count the private examples exactly")
    _add_smoke(p)
    _add_set(p)

    p = sub.add_parser("pretrain", help="pretrain the suite's preset on its public data (cached)")
    p.add_argument("suite", help=SUITE_HELP)
    p.add_argument("--force", action="store_true", help="retrain even if the cache has it")
    _add_common(p)

    p = sub.add_parser("selfcheck", help="verify per-sample gradients, clipping, divisor and noise for every method")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--out", help="also write the report (a SelfcheckReport JSON file) here")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--only", action="append", default=[], metavar="method=NAME",
                   help="check only this method (repeatable), as everywhere runs are selected")
    p.add_argument("--method", action="append", help="the same as --only method=NAME (repeatable)")
    p.add_argument("--grad-sample-mode", default="bookkeeping", choices=["bookkeeping", "hooks", "functorch"],
                   help="the per-example clipping engine to check (default: bookkeeping, the default engine)")
    p.add_argument("--inject", metavar="FAULT", help="check a deliberately broken loop (must FAIL): "
                   "low-noise, no-clip, realised-divisor, repeated-noise, halved-norms, tenth-norms")

    p = sub.add_parser("audit", help="one-run privacy audit of a suite's runs with gradient canaries; exit 1 if a lower "
                       "bound on ε exceeds the claimed ε (or the replay sensitivity check fails)")
    p.add_argument("suite", help=SUITE_HELP)
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                   help="restrict the runs (method=, label=, epsilon=, seed=); repeatable; ε = ∞ runs are skipped")
    p.add_argument("--canaries", type=int, default=None, metavar="M",
                   help="canaries per run (default 5000: enough for the f-DP audit to refute ε = 10 — docs/audit.md)")
    p.add_argument("--canary-kind", default="random", choices=("random", "dirac", "engine"),
                   help="canary gradient direction: a random unit vector (default), one coordinate, or engine: "
                        "entered through the class embedding so the engine under audit computes norm and weight")
    p.add_argument("--inject", metavar="FAULT", help="audit a deliberately broken loop (must FAIL): "
                   "low-noise, no-clip, realised-divisor, repeated-noise, halved-norms, tenth-norms — see docs/audit.md")
    p.add_argument("--results-dir", default="results",
                   help="results root (default results/); writes DIR/<suite>/runs/<run_id>/audit[-FAULT].json")
    _add_set(p)
    _add_common(p)

    p = sub.add_parser("report", help="build the HTML + markdown report of a suite's results")
    p.add_argument("results_dir", help="a suite's results directory (results/<suite>/)")
    p.add_argument("--out", help="output folder (default <results_dir>/report/)")
    p.add_argument("--reports-dir", help="write the report to DIR/<suite>/, as `dpbench run --reports-dir DIR` does")
    _add_report_to(p)

    p = sub.add_parser("export", help="every run of a suite's results as one table (CSV, JSON Lines or Parquet)",
                       description="Every run of a suite's results as one table: one row per run (finished and "
                       "failed) with every field of result.json (docs/results.md), nested fields flattened with "
                       "dots, built with pandas.")
    p.add_argument("results_dir", help="a suite's results directory (results/<suite>/), or a folder of them")
    p.add_argument("--format", default="csv", choices=("csv", "jsonl", "parquet"),
                   help="csv (default), jsonl, or parquet (needs pyarrow: pip install 'dpbench[parquet]')")
    p.add_argument("--out", help="file to write (default: standard output; required for parquet)")

    p = sub.add_parser("profile", help="DP vs non-private step time and memory per method, batch size and preset")
    p.add_argument("suite", nargs="?", help=SUITE_HELP + "; default: --preset on random data")
    p.add_argument("--preset", default="small", help="comma-separated presets (scaling study: tiny,small,ldm-base,ddpm32)")
    p.add_argument("--image-size", default="28", help="comma-separated image sizes")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--methods", default=None, help="comma-separated (default: all registered)")
    p.add_argument("--only", action="append", default=[], metavar="method=NAME",
                   help="profile only this method or suite label (repeatable; the same as --methods)")
    p.add_argument("--batch-sizes", default="8,32", help="comma-separated physical batch sizes")
    p.add_argument("--steps", type=int, default=6, help="timed steps per setting (after 2 warm-up steps)")
    p.add_argument("--grad-sample-mode", help="override the per-example gradient engine")
    p.add_argument("--bookkeeping-rule", choices=["memory", "time"], help="override training.bookkeeping_rule")
    p.add_argument("--results-dir", default="results", help="where the default output file goes")
    p.add_argument("--out", default=None, help="profile JSON path (default results/profile-<presets>.json)")
    p.add_argument("--find-max-batch", action="store_true", help="CUDA only: also search the largest batch that fits")
    _add_common(p)

    p = sub.add_parser("tune", help="choose each method's lr (and C when fixed) on a proxy task of public data only")
    p.add_argument("suite", help=SUITE_HELP)
    p.add_argument("--methods", help="comma-separated method labels (default: all)")
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                   help="tune only these (method=, label=, epsilon=; repeatable): the same as --methods, --epsilon")
    p.add_argument("--epsilon", help="the ε to tune at (default: the suite's largest finite ε)")
    p.add_argument("--lrs", help="comma-separated learning rates for every method")
    p.add_argument("--lr-factors", help="comma-separated multiples of each method's lr in the suite "
                   "(default 0.25,0.5,1,2,4; with a fixed C: 0.25,1,4 × C·(0.01,0.1,1))")
    p.add_argument("--seeds", default="0", help="comma-separated fine-tuning seeds per candidate (default 0)")
    p.add_argument("--results-dir", default="results", help="results root; the sweep goes to DIR/<suite>/tune/")
    _add_set(p)
    _add_common(p)

    p = sub.add_parser("docs", help="regenerate the measured tables of README.md and docs/*.md from their data files "
                       "(docs/data/...); --check: exit 1 if one differs")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each block that differs")
    p.add_argument("--root", default=".", help="the repository root holding README.md and docs/ (default: .)")
    p.add_argument("--from-results", metavar="DIR", help="first write docs/data/NAME-summary.json from a suite's "
                   "results folder (results/<suite>/), then regenerate")
    p.add_argument("--name", help="with --from-results: the summary's name (default: the folder's name)")

    p = sub.add_parser("regress", help="compare memory/throughput with a baseline; exit 1 on regression")
    p.add_argument("current", help="profile JSON, suite results dir, or a folder of those")
    p.add_argument("--baseline", required=True, help="the same kind of input to compare against")
    p.add_argument("--tolerance", type=float, default=0.15, help="relative change allowed (default 0.15)")
    _describe(sub)
    return parser


# One or two examples per subcommand, shown under its --help.
EXAMPLES = {
    "run": ["dpbench run quickstart", "dpbench run mnist10k-cpu --only method=loda --only epsilon=10",
            "dpbench run quickstart --smoke --set privacy.epsilons=[1,10] --report-to tensorboard",
            "dpbench run mnist10k-cpu --dry-run --json"],
    "ls": ["dpbench ls suites", "dpbench ls methods --json"],
    "validate": ["dpbench validate suites/quickstart.yaml --json", "dpbench validate quickstart --set seeds=[0,1]"],
    "pretrain": ["dpbench pretrain quickstart"],
    "selfcheck": ["dpbench selfcheck --only method=loda", "dpbench selfcheck --device cuda --json"],
    "audit": ["dpbench audit quickstart --only method=loda --only epsilon=2",
              "dpbench audit quickstart --only epsilon=2 --inject no-clip"],
    "report": ["dpbench report results/quickstart", "dpbench report results/quickstart --report-to mlflow"],
    "export": ["dpbench export results/quickstart --format csv --out runs.csv",
               "dpbench export results/ --format parquet --out runs.parquet"],
    "profile": ["dpbench profile --preset tiny,small --only method=loda --only method=full",
                "dpbench profile quickstart --batch-sizes 64,256"],
    "tune": ["dpbench tune quickstart --only method=loda --lr-factors 0.5,1,2"],
    "regress": ["dpbench regress results/profile-small.json --baseline benchmarks/baseline/profile-small.json"],
    "docs": ["dpbench docs --check", "dpbench docs --from-results results/mnist10k-cpu"],
}


def _describe(sub) -> None:
    """Every subcommand's --help opens with what it does and ends with examples."""
    helps = {action.dest: action.help for action in sub._choices_actions}
    for name, parser in sub.choices.items():
        text = parser.description or (helps.get(name) or "").capitalize()
        parser.description = textwrap.fill(text, width=100, break_long_words=False, break_on_hyphens=False)
        parser.epilog = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name])
        parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _configure_logging(quiet: bool) -> None:
    if not any(getattr(h, "_dpbench", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._dpbench = True
        log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.quiet)
    args.progress = not getattr(args, "no_progress", False) and sys.stderr.isatty()
    try:
        return COMMANDS[args.command](args) or EXIT_OK
    except UserError as err:
        for problem in err.problems:
            print(f"dpbench: error: {problem}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("dpbench: interrupted — finished runs are kept; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:  # a bug: keep the traceback, and say so
        import traceback

        traceback.print_exc()
        print("dpbench: internal error (a bug in dpbench, not in your input) — please report it with the traceback "
              "above", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


def _numbers(text: str | None, option: str, cast) -> list | None:
    """A comma-separated list of numbers from the command line (None when not given): learning rates and
    factors must be positive, seeds non-negative."""
    from dpbench.config.arguments import comma_separated

    if not text:
        return None
    return comma_separated(text, cast, option, valid=lambda v: v > 0 if cast is float else v >= 0,
                           expected="comma-separated positive numbers, e.g. 0.5,1,2")


def _only(args, allowed: tuple[str, ...], command: str) -> dict[str, list[str]]:
    from dpbench.config.arguments import only_selection

    return only_selection(args.only, allowed, command)


def _in_file(path: str, fn, *args, **kwargs):
    """Errors found while resolving a loaded suite name the suite file too (schema errors already do)."""
    try:
        return fn(*args, **kwargs)
    except UserError as err:
        raise UserError([p if p.startswith(str(path)) else f"{path}: {p}" for p in err.problems]) from None


def cmd_ls(args) -> int:
    from dpbench import registry

    if args.what == "suites":
        import yaml

        from dpbench.config.suite import builtin_suites

        entries = []
        for name, path in sorted(builtin_suites().items()):
            try:
                desc = (yaml.safe_load(path.read_text()) or {}).get("description", "")
            except yaml.YAMLError:
                desc = "(invalid YAML)"
            entries.append((name, " ".join(str(desc).split())))
    else:
        reg = {"methods": registry.METHODS, "datasets": registry.DATASETS, "presets": registry.PRESETS,
               "executors": registry.EXECUTORS, "backbones": registry.FID_BACKBONES,
               "classifiers": registry.CLASSIFIERS}[args.what]
        entries = [(entry.name, entry.description) for entry in reg.entries()]
    if args.json:
        print(json.dumps([{"name": name, "description": desc} for name, desc in entries], indent=2))
        return 0
    import shutil

    indent = max(len(name) for name, _ in entries) + 2
    width = max(60, shutil.get_terminal_size((100, 24)).columns)
    for name, desc in entries:  # wrapped at word boundaries, never cut
        print(textwrap.fill(desc, width=width, initial_indent=name.ljust(indent), subsequent_indent=" " * indent,
                            break_long_words=False, break_on_hyphens=False) if desc else name)
    return 0


def cmd_validate(args) -> int:
    from dpbench.config.suite import load_suite, resolve_suite_path
    from dpbench.runner.plan import plan_runs
    from dpbench.runner.requirements import missing_requirements

    path = resolve_suite_path(args.suite)
    suite = load_suite(path, _suite_overrides(args, path))
    runs = _in_file(path, plan_runs, suite, args.data_root)
    for problem in missing_requirements(suite):
        print(f"dpbench: warning: {path}: this machine cannot run it yet: {problem}", file=sys.stderr)
    data_root = suite.data_root(suite.data.private, args.data_root)
    if args.json:
        print(json.dumps([{**r.as_row(), "data_root": data_root} for r in runs], indent=2))
        return 0
    for r in runs:
        row = r.as_row()
        sigma = f"σ={row['noise_multiplier']:.4g}" if row["epsilon"] != "inf" else "non-private"
        assumed = "" if r.num_examples_exact else f", ASSUMED N={row['num_examples']}"
        print(f"{row['run_id']:<28} {row['dataset']:<14} {row['method']:<10} ε={row['epsilon']:<5} seed={row['seed']}  "
              f"({sigma}, q={row['sample_rate']:.4g}, T={row['steps']}, clip={row['clipping']}, "
              f"K={row['noise_multiplicity']}{assumed})")
    print(f"{path}: valid, {len(runs)} runs; {data_size_line(runs, data_root)}", file=sys.stderr)
    return 0


def data_size_line(runs, data_root: str | None) -> str:
    """Where the private data was looked for and whether σ, q and T come from its real size."""
    n = runs[0].plan.step.num_examples if runs else 0
    where = data_root or "no data root set"
    if not runs or runs[0].num_examples_exact:
        return f"private data: {where} (N={n})"
    return (f"private data NOT FOUND under {where}: σ, q and T assume the dataset's nominal N={n} — "
            "pass --data-root (or set data.root) to compute them for the real data")


def _runner_settings(args, need_machine: bool = True):
    """The suite (validated, its names resolved, this machine able to run it unless ``need_machine`` is
    False) and the runner's settings."""
    from dpbench.config.suite import load_suite, resolve_suite_path
    from dpbench.runner.context import RunnerSettings
    from dpbench.runner.plan import check_names
    from dpbench.runner.requirements import missing_requirements

    path = resolve_suite_path(args.suite)
    overrides = _suite_overrides(args, path)
    suite = load_suite(path, overrides)
    _in_file(path, check_names, suite)
    problems = missing_requirements(suite, args.device) if need_machine else []
    if problems:
        raise UserError([f"{path}: {p}" for p in problems])
    settings = RunnerSettings(suite_path=str(path), results_root=args.results_dir, data_root=args.data_root,
                              cache_dir=args.cache_dir, device=args.device, progress=args.progress,
                              overrides=overrides, smoke=getattr(args, "smoke", False))
    return path, suite, settings


def cmd_run(args) -> int:
    from pathlib import Path

    if args.json and not args.dry_run:
        raise UserError("--json prints the plan of --dry-run: add --dry-run (a run prints its summary table)")
    _check_report_to(args.report_to)  # a missing extra fails now, not after hours of runs
    path, suite, settings = _runner_settings(args, need_machine=not args.dry_run)
    if args.dry_run:  # a GPU suite dry-runs on a laptop: what this machine lacks is said, not an error
        from dpbench.runner.dry_run import dry_run, format_dry_run

        result = _in_file(path, dry_run, settings, args.only)
        print(json.dumps(result.as_json(), indent=2) if args.json else format_dry_run(result))
        return 0
    from dpbench.engine.distributed import is_root_process
    from dpbench.reporting.summary import format_summary
    from dpbench.runner.suite_runner import run_suite

    if not is_root_process():  # torchrun: rank 0 logs and reports for the group
        log.setLevel(logging.WARNING)
    outcome = _in_file(path, run_suite, settings, args.only, rerun_changed=args.rerun_changed)
    if not is_root_process():
        return 0
    print(format_summary(outcome.results_dir), flush=True)
    if not args.no_report:
        from dpbench.reporting.report import build_report

        out = Path(args.reports_dir) / suite.name if args.reports_dir else outcome.results_dir / "report"
        print(f"report: {build_report(outcome.results_dir, out)}", flush=True)
    _report_to(outcome.results_dir, args.report_to)
    if outcome.failed:
        for r in outcome.failed:
            print(f"dpbench: failed: {r.run_id} ({r.phase}): {r.error}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    return 0


def cmd_pretrain(args) -> int:
    from dpbench.config.suite import load_suite, resolve_suite_path
    from dpbench.models.pretrain import load_pretrained
    from dpbench.runner.devices import resolve_device
    from dpbench.runner.plan import check_names

    path = resolve_suite_path(args.suite)
    suite = load_suite(path)
    _in_file(path, check_names, suite)
    device = resolve_device(args.device or suite.device)
    out = load_pretrained(suite, data_root=args.data_root, cache_dir=args.cache_dir, device=str(device),
                          progress=args.progress, force=args.force)
    what = "cache hit" if out.cache_hit else f"trained in {out.seconds:.1f}s"
    print(f"{out.source} ({what}): {out.path}")
    return 0


def cmd_selfcheck(args) -> int:
    from dpbench.engine.selfcheck import format_selfcheck, run_selfcheck
    from dpbench.results import to_json_bytes, write_model
    from dpbench.runner.devices import resolve_device

    device = str(resolve_device(args.device))
    if args.inject:
        from dpbench.engine.faults import trainer_class

        trainer_class(args.inject)  # an unknown fault is a one-line error before any work
    methods = (args.method or []) + _only(args, ("method",), "selfcheck").get("method", [])
    report = run_selfcheck(methods or None, device=device, grad_sample_mode=args.grad_sample_mode, fault=args.inject)
    if args.out:
        write_model(args.out, report)
    print(to_json_bytes(report).decode() if args.json else format_selfcheck(report))
    return EXIT_OK if report.passed else EXIT_CHECK_FAILED


def cmd_audit(args) -> int:
    from dpbench.audit.run import audit_suite, format_audits

    path, _, settings = _runner_settings(args)
    results = _in_file(path, audit_suite, settings, args.only, canaries=args.canaries, fault=args.inject,
                       canary_kind=args.canary_kind)
    print(format_audits(results), flush=True)
    failed = [r for r in results if not r.passed]
    for r in failed:
        why = []
        if r.epsilon_lower_bound > r.epsilon:
            why.append(f"ε_low {r.epsilon_lower_bound:.3f} > ε {r.epsilon:g}")
        if r.fdp_refutes_claim:
            why.append(f"the guesses refute the claimed trade-off curve (f-DP μ_low {r.mu_lower_bound:.3f})")
        if r.replay is not None and not r.replay.get("passed", True):
            why.append("the replay sensitivity check failed")
        print(f"dpbench: audit failed: {r.run_id}{f' ({r.fault})' if r.fault else ''}: {'; '.join(why)}",
              file=sys.stderr)
    return EXIT_CHECK_FAILED if failed else EXIT_OK


def cmd_report(args) -> int:
    from pathlib import Path

    from dpbench.reporting.report import build_report
    from dpbench.reporting.summary import format_summary

    _check_report_to(args.report_to)
    if args.out and args.reports_dir:
        raise UserError("--out and --reports-dir both name the report's folder: give one")
    if args.reports_dir:
        out = Path(args.reports_dir) / Path(args.results_dir).resolve().name
    else:
        out = Path(args.out) if args.out else Path(args.results_dir) / "report"
    index = build_report(args.results_dir, out)
    print(format_summary(args.results_dir))
    print(f"report: {index}")
    _report_to(args.results_dir, args.report_to)
    return 0


def cmd_export(args) -> int:
    from dpbench.reporting.export import export_results

    out = export_results(args.results_dir, args.format, args.out)
    if out is not None:
        print(f"exported to {out}", file=sys.stderr)
    return 0


def cmd_profile(args) -> int:
    from dpbench.reporting.profiles import format_profile
    from dpbench.results import Profile, read_model
    from dpbench.runner.profile import profile_command

    selected = _only(args, ("method", "label"), "profile")
    names = selected.get("method", []) + selected.get("label", [])
    if names:
        args.methods = ",".join(([args.methods] if args.methods else []) + names)
    out = profile_command(args)
    print(format_profile(read_model(out, Profile)))
    print(f"profile written to {out}")
    return 0


def cmd_regress(args) -> int:
    from dpbench.reporting.regress import format_regress_table, regress

    rows, ok = regress(args.current, args.baseline, tolerance=args.tolerance)
    print(format_regress_table(rows))
    print("no regression" if ok else "REGRESSION: at least one metric is worse than the tolerance allows")
    return EXIT_OK if ok else EXIT_CHECK_FAILED


def cmd_docs(args) -> int:
    from pathlib import Path

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


def cmd_tune(args) -> int:
    from dpbench.reporting.tables import text_table
    from dpbench.runner.tune import tune

    selected = _only(args, ("method", "label", "epsilon"), "tune")
    methods = (args.methods.split(",") if args.methods else []) + selected.get("method", []) + selected.get("label", [])
    if len(selected.get("epsilon", [])) > 1:
        raise UserError("--only epsilon=: tune chooses learning rates at one ε; give it once")
    epsilon = selected["epsilon"][0] if selected.get("epsilon") else args.epsilon
    path, _, settings = _runner_settings(args)
    folder, record = _in_file(path, tune, settings, methods=methods or None, epsilon=epsilon,
                              lrs=_numbers(args.lrs, "--lrs", float),
                              lr_factors=_numbers(args.lr_factors, "--lr-factors", float),
                              seeds=_numbers(args.seeds, "--seeds", int))
    rows = [[c.method_label, c.lr, c.clipping, "—" if c.proxy_accuracy is None else f"{c.proxy_accuracy:.3f}",
             "—" if c.proxy_fid is None else f"{c.proxy_fid:.1f}", "selected" if c.selected else ""]
            for c in record.candidates]
    print(text_table(["method", "lr", "clipping", "proxy accuracy", "proxy FID", ""], rows))
    print(f"sweep: {folder / 'tune.json'}\ntuned suite: {folder / record.tuned_suite}")
    return 0


COMMANDS = {"run": cmd_run, "tune": cmd_tune, "ls": cmd_ls, "validate": cmd_validate, "pretrain": cmd_pretrain,
            "selfcheck": cmd_selfcheck, "audit": cmd_audit, "report": cmd_report, "export": cmd_export,
            "profile": cmd_profile, "regress": cmd_regress, "docs": cmd_docs}

if __name__ == "__main__":
    raise SystemExit(main())
