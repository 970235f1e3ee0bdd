"""A finished suite's runs re-sampled at other DDIM step counts: does the step count matter on this data?

    python benchmarks/resample_steps.py fashion10k-transfer --results-dir results --steps 20 [--out FILE]

Sampling is post-processing of the trained weights, so each finished run's model is rebuilt from its recipe
and ``trainable.safetensors`` and sampled again with the run's seed and classifier seeds, at the suite's own
step count and at each ``--steps``: per (method, ε), the paired difference over seeds between each count and
the suite's, with its t-interval and p. The suite's own count is re-sampled too, so every difference compares
the same rebuilt models (at the runs' own thread count on CPU it reproduces their accuracy exactly).

Descriptive only. On a private suite the numbers are post-processing of the DP releases evaluated on the
private test set, as the run's report is; choosing the suite's step count from them would be tuning on that
test set. Choose it on the public proxy: ``dpbench tune SUITE --sampling-steps 10,5``.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", help="the suite the runs came from (a name or a file)")
    parser.add_argument("--results-dir", default="results", help="the folder holding <suite>/runs/ (default: results)")
    parser.add_argument("--cache-dir", default=None, help="the cache holding the suite's pretrained model")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--steps", required=True, help="comma-separated step counts to compare, e.g. 20 or 20,5")
    parser.add_argument("--out", help="also write the per-run numbers and the differences as JSON here")
    args = parser.parse_args()
    from dpbench.errors import UserError

    try:
        return resample(args)
    except UserError as error:  # bad input: one line per problem, exit 2, as the dpbench command line does
        for problem in error.problems:
            print(f"resample_steps: {problem}", file=sys.stderr)
        return 2


def resample(args: argparse.Namespace) -> int:
    from dpbench.commands.arguments import numbers
    from dpbench.commands.suites import runner_settings
    from dpbench.errors import UserError
    from dpbench.reporting.stats import format_interval, format_p, paired_difference
    from dpbench.results import load_results, write_json_atomic
    from dpbench.runner.context import RunContext
    from dpbench.runner.plan import plan_runs
    from dpbench.runner.tune_sampling import check_step_counts, resample_run

    settings = runner_settings(argparse.Namespace(
        suite=args.suite, set=[], smoke=False, results_dir=args.results_dir, data_root=args.data_root,
        cache_dir=args.cache_dir, device=None, progress=False))
    steps = numbers(args.steps, "--steps", int)
    check_step_counts(steps, settings.suite, "--steps", "20")
    ctx = RunContext.build(settings)
    suite_steps = ctx.suite.sampling.steps
    counts = sorted(set(steps) | {suite_steps})
    own = counts.index(suite_steps)
    finished = {r.run_id: r for r in load_results(ctx.results_dir) if r.scored}
    if not finished:
        raise UserError(f"--results-dir {args.results_dir}: no finished run under {ctx.results_dir}; run the suite "
                        f"there first, or name the folder that holds <suite>/runs/")
    planned = [p for p in plan_runs(ctx.suite, settings.data_root, num_examples=len(ctx.train[0]))
               if p.spec.run_id in finished]
    runs, by_cell = {}, defaultdict(dict)  # by_cell[(method, ε)][seed] = accuracy at each count
    for p in planned:
        try:
            measured = resample_run(ctx, p, counts)
        except UserError as error:  # e.g. no trainable.safetensors: the other runs' numbers still count
            print(f"resample_steps: {p.spec.run_id} left out: {error.problems[0]}", file=sys.stderr)
            continue
        again = measured[own]["downstream_accuracy"]
        if again != finished[p.spec.run_id].downstream_accuracy:  # exact on CPU at the run's own thread count
            print(f"resample_steps: {p.spec.run_id} re-sampled at the suite's {suite_steps} steps scores {again:.4f}, "
                  f"the run itself {finished[p.spec.run_id].downstream_accuracy:.4f} (another thread count or "
                  "device?): the differences compare the re-sampled models", file=sys.stderr)
        runs[p.spec.run_id] = {"recorded_accuracy": finished[p.spec.run_id].downstream_accuracy,
                               **{str(n): {k: m[k] for k in ("downstream_accuracy", "fid", "sample_seconds")}
                                  for n, m in zip(counts, measured)}}
        by_cell[(p.spec.method_label, p.spec.epsilon)][p.spec.seed] = [m["downstream_accuracy"] for m in measured]
        print(p.spec.run_id, " ".join(f"{n} steps: {m['downstream_accuracy']:.4f} (FID {m['fid']:.2f})"
                                      for n, m in zip(counts, measured)), flush=True)
    differences = []
    for (method, epsilon), seeds in sorted(by_cell.items()):
        for i, n in enumerate(counts):
            if n == suite_steps or len(seeds) < 2:
                continue
            diff = paired_difference({s: v[i] for s, v in seeds.items()}, {s: v[own] for s, v in seeds.items()})
            differences.append({"method": method, "epsilon": epsilon, "steps": n, "suite_steps": suite_steps,
                                "mean": diff.mean, "low": diff.low, "high": diff.high, "n": diff.n,
                                "p_value": diff.p_value, "significant": diff.significant})
            print(f"{method} ε={epsilon:g}: {n} − {suite_steps} steps {format_interval(diff)}, "
                  f"{format_p(diff.p_value)}, {diff.n} paired seeds")
    if args.out:
        write_json_atomic(args.out, {"suite": ctx.suite.name, "runs": runs, "differences": differences})
    return 0


if __name__ == "__main__":
    sys.exit(main())
