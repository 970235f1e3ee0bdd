"""`dpbench ls` (what is registered) and `dpbench validate SUITE` (the suite checked, its runs listed)."""

from __future__ import annotations

import json
import sys
import textwrap


def cmd_ls(args) -> int:
    entries = _suite_entries() if args.what == "suites" else _registry_entries(args.what)
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


def _suite_entries() -> list[tuple[str, str]]:
    """The built-in suites with their descriptions, read from each file's YAML without validating it."""
    import yaml

    from dpbench.config.suite import builtin_suites

    entries = []
    for name, path in sorted(builtin_suites().items()):
        try:
            desc = (yaml.safe_load(path.read_text()) or {}).get("description", "")
        except yaml.YAMLError:
            desc = "(invalid YAML)"
        entries.append((name, " ".join(str(desc).split())))
    return entries


def _registry_entries(what: str) -> list[tuple[str, str]]:
    from dpbench import registry

    reg = {"methods": registry.METHODS, "datasets": registry.DATASETS, "presets": registry.PRESETS,
           "executors": registry.EXECUTORS, "backbones": registry.FID_BACKBONES,
           "classifiers": registry.CLASSIFIERS}[what]
    return [(entry.name, entry.description) for entry in reg.entries()]


def cmd_validate(args) -> int:
    from dpbench.commands.suites import in_file, load_checked_suite
    from dpbench.runner.plan import plan_runs
    from dpbench.runner.requirements import missing_requirements

    path, suite, _, _ = load_checked_suite(args)
    runs = in_file(path, plan_runs, suite, args.data_root)
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
