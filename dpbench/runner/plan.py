"""Resolve a suite into concrete runs with their privacy plans (what `dpbench validate` prints)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, Union

from dpbench.config.suite import (ClippingSpec, MethodSpec, QuantileClipping, RunSpec, Suite, TrainingSettings,
                                  expand_runs, run_config_hash)
from dpbench.errors import UserError
from dpbench.privacy.accounting import ClippingRule, PrivacyPlan, Schedule, make_plan
from dpbench.results import format_epsilon, parse_epsilon

if TYPE_CHECKING:
    from dpbench.runner.context import RunContext


def clipping_rule(spec: ClippingSpec):
    if spec == "auto":
        return ClippingRule(mode="auto", max_grad_norm=1.0)
    if isinstance(spec, QuantileClipping):
        return ClippingRule(mode="quantile", max_grad_norm=spec.initial, target_quantile=spec.quantile,
                            quantile_lr=spec.learning_rate, count_noise_std=spec.count_noise)
    return ClippingRule(mode="fixed", max_grad_norm=float(spec))


def reported_max_grad_norm(rule: ClippingRule):
    """C as results and tables report it: None for automatic clipping and for no clipping, where no fixed
    C bounds the gradients (automatic clipping normalises them; its sensitivity is 1, not C)."""
    return None if rule.mode in ("auto", "none") else rule.max_grad_norm


# What `physical_batch_size: auto` is where nothing is probed (on CPU, and in `dpbench validate`); on a
# GPU the run replaces it with the largest batch that fits (dpbench/runner/batch_size.py).
AUTO_PHYSICAL_BATCH_DEFAULT = 64


@dataclass(frozen=True)
class PlannedRun:
    spec: RunSpec
    plan: PrivacyPlan  # plan.step.physical_batch_size: the setting, or the default for auto
    method: MethodSpec
    training: TrainingSettings  # the suite's training settings with this method's learning rate
    config_hash: str
    physical_batch: Union[int, Literal["auto"]]  # the method's setting, else the suite's
    # False when the private data was not found and q, T and σ assume the dataset's nominal size
    num_examples_exact: bool = True

    def as_row(self) -> dict:
        step, budget = self.plan.step, self.plan.budget
        rule = step.clipping
        return {
            "run_id": self.spec.run_id, "dataset": self.spec.dataset, "method": self.spec.method,
            "label": self.spec.method_label, "epsilon": format_epsilon(budget.epsilon), "seed": self.spec.seed,
            "delta": budget.delta, "noise_multiplier": budget.noise_multiplier,
            "gradient_noise_multiplier": step.noise_multiplier, "sample_rate": step.sample_rate,
            "steps": step.steps, "clipping": rule.mode,
            "max_grad_norm": reported_max_grad_norm(rule),
            "noise_multiplicity": step.noise_multiplicity, "expected_batch_size": step.expected_batch_size,
            "physical_batch_size": self.physical_batch, "accountant": budget.accountant,
            "num_examples": step.num_examples,
            "num_examples_source": "data" if self.num_examples_exact else "nominal",
            "lr": self.training.lr, "options": self.method.options,
            "config_hash": self.config_hash,
        }


def apply_filters(runs: list, only: list[str], spec=lambda r: r) -> list:
    """``--only key=value`` (repeatable; keys: method, label, epsilon, seed). ``spec`` maps an item to its RunSpec."""
    for item in only:
        key, sep, value = item.partition("=")
        if not sep or key not in {"method", "label", "epsilon", "seed"}:
            raise UserError(f"--only {item!r}: use key=value with key one of method, label, epsilon, seed")
        if key == "method":
            runs = [r for r in runs if value in (spec(r).method, spec(r).method_label)]
        elif key == "label":
            runs = [r for r in runs if spec(r).method_label == value]
        elif key == "seed":
            runs = [r for r in runs if str(spec(r).seed) == value]
        else:
            try:
                target = parse_epsilon(value)
            except ValueError:
                raise UserError(f"--only {item!r}: epsilon must be a number or inf") from None
            runs = [r for r in runs if spec(r).epsilon == target]
        if not runs:
            raise UserError(f"--only {item!r} matches no run of the suite — see `dpbench validate SUITE`")
    return runs


def check_names(suite: Suite) -> None:
    """Every registry name used by the suite exists and every method's options validate; all problems at once."""
    from dpbench.registry import CLASSIFIERS, DATASETS, EXECUTORS, FID_BACKBONES, METHODS, PRESETS

    checks = [(DATASETS, suite.data.private.name, "data.private.name")]
    if suite.data.public is not None:
        checks.append((DATASETS, suite.data.public.name, "data.public.name"))
    if suite.model.preset:
        checks.append((PRESETS, suite.model.preset, "model.preset"))
    checks += [(EXECUTORS, suite.executor.name, "executor.name"), (CLASSIFIERS, suite.evaluation.classifier, "evaluation.classifier"),
               (FID_BACKBONES, suite.evaluation.fid_backbone, "evaluation.fid_backbone")]
    checks += [(METHODS, m.name, f"methods[{i}].name") for i, m in enumerate(suite.methods)]
    problems = []
    for registry, name, field in checks:
        try:
            registry.check(name, field)
        except UserError as err:
            problems += err.problems
    for m in suite.methods:
        if m.name in METHODS:
            try:
                METHODS.get(m.name)(m.options)  # validates options
            except UserError as err:
                problems += err.problems
    if problems:
        raise UserError(problems)


def method_training(suite: Suite, method: MethodSpec) -> TrainingSettings:
    return suite.training.model_copy(update={"lr": method.lr or suite.training.lr})


def plan_runs(suite: Suite, data_root: str | None = None, num_examples: int | None = None) -> list[PlannedRun]:
    """All runs of the suite with their privacy plans; σ is calibrated once per ε and shared by every method.

    Without ``num_examples`` the private data is counted where it lies; if it is not there, the dataset's
    nominal size is assumed and every planned run says so (``num_examples_exact``). The suite's registry
    names are expected checked already (:func:`check_names`, called once by the command that loaded it:
    dpbench/commands/suites.py)."""
    from dpbench.data.base import dataset_train_size

    exact = True
    if num_examples is None:
        try:
            num_examples, exact = dataset_train_size(suite.data.private, suite.data_root(suite.data.private, data_root))
        except UserError as err:
            raise UserError([f"data.private: {p}" for p in err.problems]) from None
    pv = suite.privacy
    plans, problems = {}, []

    def plan_for(eps: float, method: MethodSpec):
        rule = clipping_rule(method.max_grad_norm if method.max_grad_norm is not None else pv.max_grad_norm)
        key = (eps, rule)
        if key not in plans:
            plans[key] = make_plan(
                epsilon=eps, delta=pv.delta, accountant=pv.accountant, num_examples=num_examples,
                schedule=Schedule(expected_batch_size=pv.expected_batch_size, epochs=pv.epochs, steps=pv.steps),
                clipping=rule, noise_multiplicity=pv.noise_multiplicity, physical_batch_size=1)  # per method, below
        return plans[key]

    out = []
    for spec in expand_runs(suite):
        method = suite.methods[spec.method_index]
        try:
            plan = plan_for(spec.epsilon, method)
        except UserError as err:
            problems += [p for p in err.problems if p not in problems]
            continue
        setting = method.physical_batch_size if method.physical_batch_size is not None else pv.physical_batch_size
        physical = min(AUTO_PHYSICAL_BATCH_DEFAULT, plan.step.expected_batch_size) if setting == "auto" else setting
        plan = replace(plan, step=replace(plan.step, physical_batch_size=physical))
        out.append(PlannedRun(spec, plan, method, method_training(suite, method),
                              run_config_hash(suite, spec, num_examples), setting, exact))
    if problems:
        raise UserError(problems)
    return out


def planned_grid(ctx: "RunContext", only: list[str]) -> list[PlannedRun]:
    """The suite's runs selected by ``--only``, planned for the private data the context loaded."""
    planned = plan_runs(ctx.suite, ctx.settings.data_root, num_examples=len(ctx.train[0]))
    return apply_filters(planned, list(only), spec=lambda p: p.spec)


def split_finished(ctx: "RunContext", planned: list[PlannedRun]) -> tuple[list, list, list]:
    """(finished with the same config, changed since they finished, pending: never run or failed)."""
    from dpbench.results import load_results

    existing = {r.run_id: r for r in load_results(ctx.results_dir)} if (ctx.results_dir / "runs").is_dir() else {}
    done, changed, pending = [], [], []
    for p in planned:
        result = existing.get(p.spec.run_id)
        if result is None or result.status == "failed":
            pending.append(p)
        elif result.config_hash == p.config_hash:
            done.append(p)
        else:
            changed.append(p)
    return done, changed, pending


def is_private(run: PlannedRun) -> bool:
    return math.isfinite(run.spec.epsilon)
