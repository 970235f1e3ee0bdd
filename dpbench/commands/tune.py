"""`dpbench tune SUITE`: each method's learning rate (and C when fixed) chosen on a proxy task of public
data (dpbench/runner/tune.py); prints the sweep and where the tuned suite was written."""

from __future__ import annotations

from dpbench.errors import UserError


def cmd_tune(args) -> int:
    from dpbench.commands.arguments import numbers, only_selection
    from dpbench.commands.suites import in_file, runner_settings
    from dpbench.reporting.tables import text_table
    from dpbench.runner.tune import tune

    selected = only_selection(args.only, ("method", "label", "epsilon"), "tune")
    methods = (args.methods.split(",") if args.methods else []) + selected.get("method", []) + selected.get("label", [])
    if len(selected.get("epsilon", [])) > 1:
        raise UserError("--only epsilon=: tune chooses learning rates at one ε; give it once")
    epsilon = selected["epsilon"][0] if selected.get("epsilon") else args.epsilon
    settings = runner_settings(args)
    folder, record = in_file(settings.suite_path, tune, settings, methods=methods or None, epsilon=epsilon,
                             lrs=numbers(args.lrs, "--lrs", float),
                             lr_factors=numbers(args.lr_factors, "--lr-factors", float),
                             seeds=numbers(args.seeds, "--seeds", int), proxy_shift=args.proxy_shift,
                             sampling_steps=numbers(args.sampling_steps, "--sampling-steps", int))
    rows = [[c.method_label, c.lr, c.clipping, "—" if c.proxy_accuracy is None else f"{c.proxy_accuracy:.3f}",
             " ".join(f"{a:.3f}" for a in c.proxy_accuracies) or "—",
             "—" if not c.proxy_fids else f"{max(c.proxy_fids):.1f}",
             "selected" if c.selected else (c.rejected or "")]
            for c in record.candidates]
    print(text_table(["method", "lr", "clipping", "proxy accuracy", "per seed", "worst proxy FID", ""], rows))
    fid = "n/a" if record.pretrained_proxy_fid is None else f"{record.pretrained_proxy_fid:.1f}"
    print(f"pretrained proxy model: FID {fid}; rule: {record.selection_rule}")
    if record.sampling_steps:
        print(text_table(["sampling steps", "proxy accuracy", "per run", "worst proxy FID", "sampling s/run", ""],
                         [[r.steps, "—" if r.proxy_accuracy is None else f"{r.proxy_accuracy:.3f}",
                           " ".join(f"{a:.3f}" for a in r.proxy_accuracies) or "—",
                           "—" if not r.proxy_fids else f"{max(r.proxy_fids):.1f}",
                           "—" if r.sample_seconds is None else f"{r.sample_seconds:.1f}",
                           "selected" if r.selected else (r.rejected or "")] for r in record.sampling_steps]))
        print(f"sampling steps rule: {record.sampling_steps_rule}")
    print(f"sweep: {folder / 'tune.json'}\ntuned suite: {folder / record.tuned_suite}")
    return 0
