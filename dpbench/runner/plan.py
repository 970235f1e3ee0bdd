"""Resolve a suite into concrete runs with their privacy plans (what `dpbench validate` prints)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dpbench.config.suite import RunSpec, Suite, expand_runs
from dpbench.errors import UserError
from dpbench.privacy.accounting import PrivacyPlan, make_plan


@dataclass
class PlannedRun:
    spec: RunSpec
    plan: PrivacyPlan
    method_options: dict
    lr: float

    def as_row(self) -> dict:
        p = self.plan
        return {
            "run_id": self.spec.run_id, "dataset": self.spec.dataset, "method": self.spec.method,
            "label": self.spec.method_key, "epsilon": "inf" if math.isinf(p.epsilon) else p.epsilon,
            "seed": self.spec.seed, "delta": p.delta, "noise_multiplier": p.noise_multiplier,
            "sample_rate": p.sample_rate, "steps": p.steps, "max_grad_norm": None if math.isinf(p.max_grad_norm) else p.max_grad_norm,
            "noise_multiplicity": p.noise_multiplicity, "expected_batch_size": p.expected_batch_size,
            "physical_batch_size": p.physical_batch_size, "accountant": p.accountant, "num_examples": p.num_examples,
            "lr": self.lr, "options": self.method_options,
        }


def apply_filters(runs: list[RunSpec], only: list[str]) -> list[RunSpec]:
    """``--only key=value`` (repeatable; keys: method, label, epsilon, seed)."""
    for item in only:
        key, sep, value = item.partition("=")
        if not sep or key not in {"method", "label", "epsilon", "seed"}:
            raise UserError(f"--only {item!r}: use key=value with key one of method, label, epsilon, seed")
        if key == "method":
            runs = [r for r in runs if value in (r.method, r.method_key)]
        elif key == "label":
            runs = [r for r in runs if r.method_key == value]
        elif key == "seed":
            runs = [r for r in runs if str(r.seed) == value]
        else:
            try:
                target = float(value)
            except ValueError:
                raise UserError(f"--only {item!r}: epsilon must be a number or inf") from None
            runs = [r for r in runs if r.epsilon == target]
        if not runs:
            raise UserError(f"--only {item!r} matches no run of the suite — see `dpbench validate SUITE`")
    return runs


def check_names(suite: Suite) -> None:
    """Every registry name used by the suite exists, and every method's options validate."""
    from dpbench.registry import CLASSIFIERS, DATASETS, EXECUTORS, FID_BACKBONES, METHODS, PRESETS, load_builtin_entries

    load_builtin_entries()
    for i, ref in enumerate([suite.data.private, suite.data.public]):
        if ref is not None:
            _named(DATASETS, ref.name, f"data.{'private' if i == 0 else 'public'}.name")
    if suite.model.preset:
        _named(PRESETS, suite.model.preset, "model.preset")
    _named(EXECUTORS, suite.executor, "executor")
    _named(CLASSIFIERS, suite.evaluation.classifier, "evaluation.classifier")
    _named(FID_BACKBONES, suite.evaluation.fid_backbone, "evaluation.fid_backbone")
    for i, m in enumerate(suite.methods):
        _named(METHODS, m.name, f"methods[{i}].name")
        METHODS.get(m.name)(m.options)  # validates options


def _named(registry, name, field):
    if name not in registry:
        raise UserError(f"{field}: unknown {registry.kind} {name!r}{registry.suggestion(name)}")


def plan_runs(suite: Suite, data_root: str | None = None, num_examples: int | None = None) -> list[PlannedRun]:
    """All runs of the suite with their privacy plans; σ is calibrated once per ε and shared by every method."""
    from dpbench.data.base import dataset_train_size

    check_names(suite)
    if num_examples is None:
        num_examples, _exact = dataset_train_size(suite.data.private, suite.data_root(suite.data.private, data_root))
    pv = suite.privacy
    plans = {}
    for eps in pv.epsilons:
        eps = float(eps)
        plans[eps] = make_plan(
            epsilon=eps, delta=pv.delta, accountant=pv.accountant, num_examples=num_examples,
            expected_batch_size=pv.expected_batch_size, epochs=pv.epochs, steps=pv.steps,
            max_grad_norm=pv.max_grad_norm, noise_multiplicity=pv.noise_multiplicity,
            physical_batch_size=pv.physical_batch_size,
        )
    methods = {m.key: m for m in suite.methods}
    return [
        PlannedRun(spec, plans[spec.epsilon], methods[spec.method_key].options,
                   methods[spec.method_key].lr or suite.training.lr)
        for spec in expand_runs(suite)
    ]
