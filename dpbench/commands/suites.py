"""The one place a command loads its suite: read and validated once (with ``--set`` and ``--smoke``), its
registry names checked once, and handed on to the runner inside :class:`RunnerSettings` — nothing below
the command layer reads the suite file again."""

from __future__ import annotations

import argparse
from pathlib import Path

from dpbench.config.suite import Suite
from dpbench.errors import UserError


def in_file(path, fn, *args, **kwargs):
    """Errors found while resolving a loaded suite name the suite file too (schema errors already do)."""
    try:
        return fn(*args, **kwargs)
    except UserError as err:
        raise UserError([p if p.startswith(str(path)) else f"{path}: {p}" for p in err.problems]) from None


def load_checked_suite(args: argparse.Namespace) -> tuple[Path, Suite, tuple[str, ...], dict]:
    """``(path, suite, overrides, mapping)`` for ``args.suite``: the file (or built-in name) read once, with the
    command's ``--set`` overrides and then, with ``--smoke``, the smoke settings (dpbench/config/smoke.py),
    validated, every registry name it uses checked (dpbench/runner/plan.py ``check_names``)."""
    from dpbench.config.overrides import apply_overrides
    from dpbench.config.suite import read_suite_yaml, resolve_suite_path, suite_from_mapping
    from dpbench.runner.plan import check_names

    path = resolve_suite_path(args.suite)
    raw = apply_overrides(read_suite_yaml(path), tuple(getattr(args, "set", ())))
    overrides = tuple(getattr(args, "set", ()))
    if getattr(args, "smoke", False):
        from dpbench.config.smoke import smoke_overrides

        suite_from_mapping(raw, path)  # the suite and the user's overrides are valid: only then derive the smoke ones
        smoke = tuple(smoke_overrides(raw, path.stem))
        raw, overrides = apply_overrides(raw, smoke), overrides + smoke
    suite = suite_from_mapping(raw, path)
    in_file(path, check_names, suite)
    return path, suite, overrides, raw


def runner_settings(args: argparse.Namespace, need_machine: bool = True):
    """The runner's settings around the loaded, checked suite; unless ``need_machine`` is False, this
    machine must be able to run it (a one-line error per missing requirement otherwise)."""
    from dpbench.runner.context import RunnerSettings
    from dpbench.runner.requirements import missing_requirements

    path, suite, overrides, mapping = load_checked_suite(args)
    problems = missing_requirements(suite, args.device) if need_machine else []
    if problems:
        raise UserError([f"{path}: {p}" for p in problems])
    return RunnerSettings(suite_path=str(path), suite=suite, suite_mapping=mapping, results_root=args.results_dir, data_root=args.data_root,
                          cache_dir=args.cache_dir, device=args.device, progress=args.progress,
                          overrides=overrides, smoke=getattr(args, "smoke", False))


def suite_device(args: argparse.Namespace, suite: Suite):
    """The device a command works on: ``--device``, else the suite's."""
    from dpbench.runner.devices import resolve_device

    return resolve_device(args.device or suite.device)
