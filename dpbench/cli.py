"""The `dpbench` command line: run | ls | validate | pretrain | selfcheck | report | profile | regress."""

from __future__ import annotations

import argparse
import json
import sys

from dpbench.errors import UserError

LISTABLE = ("methods", "datasets", "presets", "suites", "executors", "backbones", "classifiers")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="data folder (overrides the suite's data.root and $DPBENCH_DATA)")
    p.add_argument("--cache-dir", help="pretrained-model cache (default $DPBENCH_CACHE or ~/.cache/dpbench)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides the suite's device")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a suite: pretrain, DP fine-tune every method, sample, evaluate, report")
    p.add_argument("suite")
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                   help="restrict the grid (method=, label=, epsilon=, seed=); repeatable")
    p.add_argument("--results-dir", default="results", help="results root (default results/); runs go to DIR/<suite>/")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML/markdown report at the end")
    _add_common(p)

    p = sub.add_parser("ls", help="list registered methods, datasets, presets, suites, ...")
    p.add_argument("what", nargs="?", default="methods", choices=LISTABLE)

    p = sub.add_parser("validate", help="check a suite and print its runs (one line each)")
    p.add_argument("suite")
    p.add_argument("--json", action="store_true", help="print the runs as a JSON list (with σ, q, T, C, K)")
    p.add_argument("--data-root")

    p = sub.add_parser("pretrain", help="pretrain the suite's preset on its public data (cached)")
    p.add_argument("suite")
    p.add_argument("--force", action="store_true", help="retrain even if the cache has it")
    _add_common(p)

    p = sub.add_parser("selfcheck", help="verify per-sample gradients, clipping and noise for every method")
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--method", action="append", help="check only these methods (repeatable)")
    p.add_argument("--grad-sample-mode", default="hooks", choices=["hooks", "functorch"])

    p = sub.add_parser("report", help="build reports/<suite>/index.html and report.md from result files")
    p.add_argument("results_dir")
    p.add_argument("--out", help="output folder (default reports/<suite>/)")

    p = sub.add_parser("profile", help="DP vs non-private step time and peak memory per method and batch size")
    p.add_argument("suite", nargs="?", help="a suite (its model and private data); default: --preset on random data")
    p.add_argument("--preset", default="small")
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--methods", default=None, help="comma-separated (default: all registered)")
    p.add_argument("--batch-sizes", default="8,32", help="comma-separated physical batch sizes")
    p.add_argument("--steps", type=int, default=6, help="timed steps per setting (after 2 warm-up steps)")
    p.add_argument("--out", default=None, help="profile JSON path (default results/profile-<source>.json)")
    p.add_argument("--find-max-batch", action="store_true", help="on GPU: also search the largest batch that fits")
    _add_common(p)

    p = sub.add_parser("regress", help="compare memory/throughput with a baseline; exit 1 on regression")
    p.add_argument("current", help="profile JSON, suite results dir, or a folder of those")
    p.add_argument("--baseline", required=True)
    p.add_argument("--tolerance", type=float, default=0.15)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args) or 0
    except UserError as err:
        print(f"dpbench: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("dpbench: interrupted — finished runs are kept; run the same command again to resume", file=sys.stderr)
        return 130


def cmd_ls(args) -> int:
    from pathlib import Path

    from dpbench import registry

    registry.load_builtin_entries()
    if args.what == "suites":
        for path in sorted(Path("suites").glob("*.yaml")):
            import yaml

            try:
                desc = (yaml.safe_load(path.read_text()) or {}).get("description", "")
            except yaml.YAMLError:
                desc = "(invalid YAML)"
            print(f"{str(path):<28} {' '.join(str(desc).split())[:100]}")
        return 0
    reg = {"methods": registry.METHODS, "datasets": registry.DATASETS, "presets": registry.PRESETS,
           "executors": registry.EXECUTORS, "backbones": registry.FID_BACKBONES,
           "classifiers": registry.CLASSIFIERS}[args.what]
    for entry in reg.entries():
        print(f"{entry.name:<14} {entry.description}")
    return 0


def _suite_errors(path: str, fn, *args, **kwargs):
    """Errors found while resolving a loaded suite name the suite file too (schema errors already do)."""
    try:
        return fn(*args, **kwargs)
    except UserError as err:
        if str(err).startswith(str(path)):
            raise
        raise UserError(f"{path}: {err}") from None


def cmd_validate(args) -> int:
    from dpbench.config.suite import load_suite
    from dpbench.runner.plan import plan_runs

    suite = load_suite(args.suite)
    runs = _suite_errors(args.suite, plan_runs, suite, args.data_root)
    if args.json:
        print(json.dumps([r.as_row() for r in runs], indent=2))
        return 0
    for r in runs:
        row = r.as_row()
        sigma = f"σ={row['noise_multiplier']:.4g}" if row["epsilon"] != "inf" else "non-private"
        print(f"{row['run_id']:<28} {row['dataset']:<14} {row['method']:<10} ε={row['epsilon']!s:<5} seed={row['seed']}  "
              f"({sigma}, q={row['sample_rate']:.4g}, T={row['steps']}, K={row['noise_multiplicity']})")
    print(f"{args.suite}: valid, {len(runs)} runs", file=sys.stderr)
    return 0


def cmd_run(args) -> int:
    from dpbench.config.suite import load_suite
    from dpbench.runner.plan import check_names
    from dpbench.runner.suite_runner import run_suite

    suite = load_suite(args.suite)
    _suite_errors(args.suite, check_names, suite)
    run_suite(suite, args.suite, results_root=args.results_dir, only=args.only, data_root=args.data_root,
              cache_dir=args.cache_dir, device=args.device, progress=not args.no_progress, report=not args.no_report)
    return 0


def cmd_pretrain(args) -> int:
    from dpbench.config.suite import load_suite
    from dpbench.models.pretrain import load_pretrained
    from dpbench.runner.plan import check_names
    from dpbench.runner.suite_runner import resolve_device

    suite = load_suite(args.suite)
    _suite_errors(args.suite, check_names, suite)
    device = resolve_device(args.device or suite.device)
    out = load_pretrained(suite, data_root=args.data_root, cache_dir=args.cache_dir, device=str(device),
                          progress=not args.no_progress, force=args.force)
    what = "cache hit" if out.cache_hit else f"trained in {out.seconds:.1f}s"
    print(f"{out.source} ({what}): {out.path}")
    return 0


def cmd_selfcheck(args) -> int:
    from dpbench.engine.selfcheck import format_selfcheck, run_selfcheck
    from dpbench.registry import load_builtin_entries
    from dpbench.runner.suite_runner import resolve_device

    load_builtin_entries()
    device = str(resolve_device(args.device))
    report = run_selfcheck(args.method, device=device, grad_sample_mode=args.grad_sample_mode)
    print(json.dumps(report, indent=2) if args.json else format_selfcheck(report))
    return 0 if report["passed"] else 1


def cmd_report(args) -> int:
    from dpbench.reporting.report import build_report

    print(build_report(args.results_dir, args.out))
    return 0


def cmd_profile(args) -> int:
    from dpbench.reporting.profile import profile_command

    print(profile_command(args))
    return 0


def cmd_regress(args) -> int:
    from dpbench.reporting.regress import format_regress_table, regress

    rows, ok = regress(args.current, args.baseline, tolerance=args.tolerance)
    print(format_regress_table(rows))
    print("no regression" if ok else "REGRESSION: at least one metric is worse than the tolerance allows")
    return 0 if ok else 1


COMMANDS = {"run": cmd_run, "ls": cmd_ls, "validate": cmd_validate, "pretrain": cmd_pretrain,
            "selfcheck": cmd_selfcheck, "report": cmd_report, "profile": cmd_profile, "regress": cmd_regress}

if __name__ == "__main__":
    raise SystemExit(main())
