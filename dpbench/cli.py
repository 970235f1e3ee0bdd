"""The `dpbench` command line.

Exit codes: 0 ok; 1 a check failed (regress found a regression, selfcheck or audit a failure, a grid
finished with failed runs); 2 bad input (one line per problem, naming the field and the fix, no
traceback); 3 internal error (a bug: the traceback is printed); 130 interrupted (finished runs are kept).
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap

# Each command's module imports what it needs when it runs: `dpbench ls` loads no torch.
from dpbench.commands import checks, listing, pretrain, profile, reports, run, tune
from dpbench.errors import EXIT_INTERNAL_ERROR, EXIT_INTERRUPTED, EXIT_OK, UserError

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
                   help="every run end to end with 2 steps and minimal sampling and evaluation, to check the suite; "
                   "results go to <results dir>/<suite>-smoke/, are marked smoke and measure nothing")


def _add_report_to(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report-to", action="append", default=[], choices=("tensorboard", "mlflow"),
                   help="also log every run (settings, metrics, curves) to TensorBoard (<results>/tensorboard/) or "
                   "MLflow ($MLFLOW_TRACKING_URI, else <results>/mlruns); repeatable; needs pip install "
                   "'dpbench[tensorboard]' / 'dpbench[mlflow]'")


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
    _add_run_parser(sub)
    _add_ls_parser(sub)
    _add_validate_parser(sub)
    _add_pretrain_parser(sub)
    _add_selfcheck_parser(sub)
    _add_audit_parser(sub)
    _add_report_parser(sub)
    _add_export_parser(sub)
    _add_profile_parser(sub)
    _add_tune_parser(sub)
    _add_docs_parser(sub)
    _add_regress_parser(sub)
    _describe(sub)
    return parser


def _add_run_parser(sub) -> None:
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
                   help="print the runs (σ, q, T per run) and estimated time and memory per run; run nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: print the plan and estimates as JSON")
    _add_smoke(p)
    _add_set(p)
    _add_common(p)


def _add_ls_parser(sub) -> None:
    p = sub.add_parser("ls", help="list registered methods, datasets, presets, suites, ...")
    p.add_argument("what", nargs="?", default="methods", choices=LISTABLE, help="what to list (default: methods)")
    p.add_argument("--json", action="store_true", help="print a JSON list of {name, description}")


def _add_validate_parser(sub) -> None:
    p = sub.add_parser("validate", help="check a suite (every problem at once) and print its runs")
    p.add_argument("suite", help=SUITE_HELP)
    p.add_argument("--json", action="store_true", help="print the runs as a JSON list (with σ, q, T, C, K)")
    p.add_argument("--data-root", help="data folder, to count the private examples exactly")
    _add_smoke(p)
    _add_set(p)


def _add_pretrain_parser(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain the suite's preset on its public data (cached)")
    p.add_argument("suite", help=SUITE_HELP)
    p.add_argument("--force", action="store_true", help="retrain even if the cache has it")
    _add_common(p)


def _add_selfcheck_parser(sub) -> None:
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


def _add_audit_parser(sub) -> None:
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


def _add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="build the HTML + markdown report of a suite's results")
    p.add_argument("results_dir", help="a suite's results directory (results/<suite>/)")
    p.add_argument("--out", help="output folder (default <results_dir>/report/)")
    p.add_argument("--reports-dir", help="write the report to DIR/<suite>/, as `dpbench run --reports-dir DIR` does")
    _add_report_to(p)


def _add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="every run of a suite's results as one table (CSV, JSON Lines or Parquet)",
                       description="Every run of a suite's results as one table: one row per run (finished and "
                       "failed) with every field of result.json (docs/results.md), nested fields flattened with "
                       "dots, built with pandas.")
    p.add_argument("results_dir", help="a suite's results directory (results/<suite>/), or a folder of them")
    p.add_argument("--format", default="csv", choices=("csv", "jsonl", "parquet"),
                   help="csv (default), jsonl, or parquet (needs pyarrow: pip install 'dpbench[parquet]')")
    p.add_argument("--out", help="file to write (default: standard output; required for parquet)")


def _add_profile_parser(sub) -> None:
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


def _add_tune_parser(sub) -> None:
    p = sub.add_parser("tune", help="choose each method's lr (and C when fixed) on a proxy task of public data only")
    p.add_argument("suite", help=SUITE_HELP)
    p.add_argument("--methods", help="comma-separated method labels (default: all)")
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                   help="tune only these (method=, label=, epsilon=; repeatable): the same as --methods, --epsilon")
    p.add_argument("--epsilon", help="the ε to tune at (default: the suite's largest finite ε)")
    p.add_argument("--lrs", help="comma-separated learning rates for every method")
    p.add_argument("--lr-factors", help="comma-separated multiples of each method's lr in the suite "
                   "(default 0.25,0.5,1,2,4; with a fixed C: 0.25,1,4 × C·(0.01,0.1,1))")
    p.add_argument("--seeds", default=None,
                   help="comma-separated fine-tuning seeds per candidate (default 0,1: the selection rule needs two)")
    from dpbench.runner.tune_selection import DEFAULT_PROXY_SHIFT, PROXY_SHIFTS  # torch-free: parsing stays fast

    p.add_argument("--proxy-shift", choices=tuple(PROXY_SHIFTS), default=DEFAULT_PROXY_SHIFT,
                   help="how the proxy's private and test images differ from its pretraining images: transposed "
                   "(default: shapes the proxy model never drew, as on the private task) or none")
    p.add_argument("--sampling-steps", help="comma-separated sampling step counts: after the sweep, re-sample the "
                   "selected candidates' proxy runs from their saved weights at each (and at the suite's) and pick the "
                   "fewest whose mean proxy accuracy, all methods pooled, is no lower and whose runs stay under the FID "
                   "bar (runner/tune_sampling.py)")
    p.add_argument("--results-dir", default="results", help="results root; the sweep goes to DIR/<suite>/tune-<shift>/")
    _add_set(p)
    _add_common(p)


def _add_docs_parser(sub) -> None:
    p = sub.add_parser("docs", help="regenerate the measured tables of README.md and docs/*.md from their data files "
                       "(docs/data/...); --check: exit 1 if one differs")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each block that differs")
    p.add_argument("--root", default=".", help="the repository root holding README.md and docs/ (default: .)")
    p.add_argument("--from-results", metavar="DIR", help="first write docs/data/NAME-summary.json from a suite's "
                   "results folder (results/<suite>/), then regenerate")
    p.add_argument("--name", help="with --from-results: the summary's name (default: the folder's name)")


def _add_regress_parser(sub) -> None:
    p = sub.add_parser("regress", help="compare memory/throughput with a baseline; exit 1 on regression")
    p.add_argument("current", help="profile JSON, suite results dir, or a folder of those")
    p.add_argument("--baseline", required=True, help="the same kind of input to compare against")
    p.add_argument("--tolerance", type=float, default=0.15, help="relative change allowed (default 0.15)")


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
    "tune": ["dpbench tune quickstart --only method=loda --lr-factors 0.5,1,2",
             "dpbench tune mnist10k-cpu --lr-factors 1 --sampling-steps 10,5"],
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


COMMANDS = {"run": run.cmd_run, "tune": tune.cmd_tune, "ls": listing.cmd_ls, "validate": listing.cmd_validate,
            "pretrain": pretrain.cmd_pretrain, "selfcheck": checks.cmd_selfcheck, "audit": checks.cmd_audit,
            "report": reports.cmd_report, "export": reports.cmd_export, "profile": profile.cmd_profile,
            "regress": reports.cmd_regress, "docs": reports.cmd_docs}

if __name__ == "__main__":
    raise SystemExit(main())
