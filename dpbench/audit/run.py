"""`dpbench audit SUITE`: the one-run audit of every selected run, on the suite's own mechanism.

For a run (method, ε, seed) of the suite: the suite's pretrained model prepared for the method, its
private data, its training settings, σ, T, B, K, clipping rule and mixed precision — the whole
mechanism as ``dpbench run`` trains it — plus m gradient canaries (dpbench/audit/canaries.py), each
in the dataset by a secret fair coin. With ``--inject FAULT`` the fault's trainer class
(dpbench/engine/faults.py) trains instead of the real loop.

The canaries raise the population: σ and T are kept, the Poisson population becomes N + m_in and
q = B / (N + m_in) (the expected batch, hence the divisor, stays B). A smaller q only lowers the
privacy loss, so the audited run's own ε (recorded as ``epsilon_audited_mechanism``) is ≤ the claimed
ε, and a bound above the claimed ε refutes both.

The run fails the audit when ε_low (any threat model) exceeds the claimed ε, when the same guesses
refute the trade-off curve the accountant claims for the audited (σ, q, T) (dpbench/audit/fdp.py; the
two tests share one family at 95%), or when the record/replay sensitivity check
(dpbench/audit/replay.py) fails. ``canary_kind="engine"`` puts canaries through the trainer's own
clipping backend (:class:`EngineCanaries`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from dpbench.audit.bound import DEFAULT_CONFIDENCE
from dpbench.audit.canaries import DEFAULT_MAX_ELEMENTS, EngineCanaries, GradientCanaries
from dpbench.audit.fdp import claimed_curve
from dpbench.audit.replay import ReplayCheck
from dpbench.audit.scoring import RULES, THREAT_MODELS, FamilyBound, ReleaseRecorder, canary_scores, family_bound
from dpbench.errors import UserError
from dpbench.privacy.accounting import DPStep
from dpbench.privacy.noise import derive_seed

if TYPE_CHECKING:
    from dpbench.engine.setup import ModelRecipe
    from dpbench.engine.trainer import TrainerSetup

log = logging.getLogger("dpbench")

# 5000, not 1000: the f-DP audit refutes a claimed ε = 10 only from ≈ 95% right guesses at m = 5000,
# where at m = 1000 it needs every guess right (a low-noise fault on loda scored 985/1000 and passed).
# Gradient canaries cost no forward pass, so the larger m is nearly free (docs/audit.md, "Cost").
DEFAULT_CANARIES = 5000
DEFAULT_NORM_MULTIPLE = 10.0
_CANARY_STREAM, _RECORD_STREAM = 101, 102


def audited_step(step: DPStep, num_included: int) -> DPStep:
    """The suite's step with the canaries in the population: same σ, T and B; q = B / (N + m_in)."""
    population = step.num_examples + num_included
    return dataclasses.replace(step, num_examples=population, sample_rate=step.expected_batch_size / population)


def canary_norm(step: DPStep, multiple: float = DEFAULT_NORM_MULTIPLE) -> float:
    """``multiple`` × the rule's sensitivity (C; 1 for automatic clipping; the initial C for quantile)."""
    return multiple * step.clipping.sensitivity


@dataclass
class AuditOutcome:
    family: FamilyBound
    replay: Optional[ReplayCheck]
    canaries: GradientCanaries
    step: DPStep  # the audited step (population N + m_in)
    epsilon_mechanism: Optional[float]
    train_seconds: float
    seconds: float

    @property
    def eps_low(self) -> float:
        return self.family.eps_low

    def passed(self, epsilon: float) -> bool:
        """Neither bound refutes the claim (ε_low ≤ ε, the claimed curve stands) and the replay check held."""
        return (self.eps_low <= epsilon and not self.family.refutes_claim
                and (self.replay is None or self.replay.passed))


@dataclass(frozen=True)
class AuditOptions:
    """How a run is audited: m canaries of a kind and norm (``secret_in``: fixed coins instead of secret
    ones, for tests), an injected ``fault`` (dpbench/engine/faults.py), the replay check, the confidence."""

    canaries: int = DEFAULT_CANARIES
    fault: Optional[str] = None
    canary_kind: str = "random"
    norm_multiple: float = DEFAULT_NORM_MULTIPLE
    secret_in: Optional[np.ndarray] = None
    replay: bool = True
    confidence: float = DEFAULT_CONFIDENCE
    max_elements: int = DEFAULT_MAX_ELEMENTS


def make_canaries(model, step: DPStep, seed: int, options: AuditOptions):
    """The m canaries on the trainable parameters of ``model``, each in by a secret coin (``options.secret_in``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    norm, kind = canary_norm(step, options.norm_multiple), options.canary_kind
    canary_seed = derive_seed(seed, _CANARY_STREAM)
    try:
        if kind == "engine":
            return EngineCanaries(params, options.canaries, norm=norm, seed=canary_seed,
                                  embedding=model.class_embedding, secret_in=options.secret_in)
        return GradientCanaries(params, options.canaries, norm=norm, seed=canary_seed, kind=kind,
                                secret_in=options.secret_in, max_elements=options.max_elements)
    except ValueError as err:  # e.g. more Dirac canaries than trainable coordinates
        raise UserError(f"--canaries {options.canaries} --canary-kind {kind}: {err}") from None


def audit_training(recipe: "ModelRecipe", data: tuple, setup: "TrainerSetup", *, delta: float,
                   options: AuditOptions = AuditOptions(), progress: bool = False) -> AuditOutcome:
    """Prepare the recipe's model (under ``setup.seed``), train it once on ``data`` (images, labels) with
    canaries, observing; score; bound.

    ``setup.step`` is the suite's DP step for the private data alone (``num_examples`` = N); the audited
    step adds the included canaries to the population (:func:`audited_step`).
    """
    from dpbench.engine.faults import trainer_class

    if not setup.step.private:
        raise UserError("ε = ∞ runs make no privacy claim: nothing to audit")
    model = recipe.prepare(seed=setup.seed)
    start = time.perf_counter()
    trainer_class(options.fault)  # an unknown fault fails before the canaries are drawn
    images, labels = data
    canary_set = make_canaries(model, setup.step, setup.seed, options)
    step = audited_step(setup.step, canary_set.num_included)
    trainer = recipe.trainer(model, images, labels, dataclasses.replace(setup, step=step), fault=options.fault,
                             canaries=canary_set)
    recorder = ReleaseRecorder(canary_set)
    trainer.release_observers.append(recorder)
    check = None
    if options.replay:
        pick = np.random.default_rng(derive_seed(setup.seed, _RECORD_STREAM))
        check = ReplayCheck(trainer, examples=[int(pick.integers(len(images)))]).attach()
    initial = [p.detach().clone() for p in trainer.params]
    stats = trainer.train(progress=progress)
    if check is not None:
        check.detach()
    trainer.finish()  # the released weights: EMA where the suite keeps one
    final = [p.detach().clone() for p in trainer.params]
    scores = canary_scores(canary_set, recorder, initial, final)
    claimed, budget = None, setup.budget
    if budget is not None:  # the curve the accountant claims for the audited run's (σ, q, T)
        claimed = claimed_curve(budget.accountant, budget.noise_multiplier, step.sample_rate, step.steps)
    family = family_bound(scores, canary_set.secret_in, delta, options.confidence, claimed=claimed)
    return AuditOutcome(family=family, replay=check, canaries=canary_set, step=step,
                        epsilon_mechanism=stats.epsilon_spent, train_seconds=stats.train_seconds,
                        seconds=time.perf_counter() - start)


def threat_model_results(family: FamilyBound) -> list:
    from dpbench.results import ThreatModelResult

    out = []
    for name, observes in THREAT_MODELS.items():
        best, fdp = family.best(name), family.best_fdp(name)
        out.append(ThreatModelResult(name=name, eps_low=best.eps_low, guesses=best.guesses, correct=best.correct,
                                     k_plus=best.k_plus, k_minus=best.k_minus, rule=best.rule,
                                     rules=[rule for model, rule in RULES if model == name], observes=observes,
                                     mu_low=fdp.mu_low if fdp else None, refutes_claim=fdp.refutes_claim if fdp else None,
                                     fdp_guesses=fdp.guesses if fdp else None, fdp_correct=fdp.correct if fdp else None,
                                     fdp_rule=fdp.rule if fdp else None))
    return out


def audit_file_name(fault: Optional[str]) -> str:
    return "audit.json" if fault is None else f"audit-{fault}.json"


def audit_run(ctx, planned, *, canaries: int = DEFAULT_CANARIES, fault: Optional[str] = None,
              canary_kind: str = "random"):
    """Audit one planned run of a suite; write and return its :class:`AuditResult`."""
    from dpbench.provenance import provenance
    from dpbench.results import AuditResult, format_epsilon, run_dir, write_model
    from dpbench.runner.setup import run_recipe, run_trainer_setup

    suite, spec, plan = ctx.suite, planned.spec, planned.plan
    log.info("── audit %s%s: %s at ε=%s (σ=%.4g, T=%d, %d canaries)", spec.run_id,
             f" with fault {fault}" if fault else "", spec.method, format_epsilon(spec.epsilon),
             plan.budget.noise_multiplier, plan.step.steps, canaries)
    outcome = audit_training(run_recipe(ctx, planned), ctx.train, run_trainer_setup(ctx, planned),
                             delta=plan.budget.delta,
                             options=AuditOptions(canaries=canaries, fault=fault, canary_kind=canary_kind),
                             progress=ctx.progress)
    c, claimed = outcome.canaries, outcome.family.claimed
    passed = outcome.passed(spec.epsilon)
    result = AuditResult(
        run_id=spec.run_id, suite=suite.name, method=spec.method, method_label=spec.method_label, epsilon=spec.epsilon,
        delta=plan.budget.delta, fault=fault, canaries=c.m, threat_models=threat_model_results(outcome.family),
        epsilon_lower_bound=outcome.eps_low, confidence=outcome.family.confidence,
        mu_lower_bound=outcome.family.mu_low, fdp_refutes_claim=outcome.family.refutes_claim if claimed else None,
        claimed_curve=claimed.name if claimed else None, claimed_mu_clt=claimed.clt_mu if claimed else None,
        replay=outcome.replay.summary() if outcome.replay is not None else None, passed=passed,
        seconds=outcome.seconds, candidates=outcome.family.candidates, canaries_included=c.num_included,
        canary_kind=c.kind, canary_norm=c.norm, canary_support=c.support, trainable_params=c.dim,
        population=outcome.step.num_examples, sample_rate=outcome.step.sample_rate,
        suite_sample_rate=plan.step.sample_rate, noise_multiplier=plan.budget.noise_multiplier,
        steps=plan.step.steps, epsilon_audited_mechanism=outcome.epsilon_mechanism,
        secret_in="".join("1" if b else "0" for b in c.secret_in), train_seconds=outcome.train_seconds,
        **provenance(ctx.device))
    folder = run_dir(ctx.results_dir, spec.run_id)
    write_model(folder / audit_file_name(fault), result, inside=ctx.results_dir)
    log.info("   ε_low %.3f (%s) vs ε %s; %s; replay %s; %.1fs → %s", result.epsilon_lower_bound,
             ", ".join(f"{t.name} {t.eps_low:.3f}: {t.correct}/{t.guesses}" for t in result.threat_models),
             format_epsilon(spec.epsilon), _fdp_text(result), _replay_text(result.replay), result.seconds,
             "passed" if passed else "FAILED")
    return result


def _fdp_text(result) -> str:
    if result.mu_lower_bound is None:
        return "f-DP not tested"
    verdict = "REFUTES" if result.fdp_refutes_claim else "does not refute"
    return f"f-DP μ_low {result.mu_lower_bound:.3f} (CLT μ {result.claimed_mu_clt:.3f}), {verdict} the claimed curve"


def _replay_text(replay: Optional[dict]) -> str:
    if replay is None:
        return "not run"
    ratio = replay.get("max_difference_over_sensitivity")
    worst = "no canary sampled" if ratio is None else f"max B·Δ/S {ratio:.4g}"
    return f"{'held' if replay['passed'] else 'FAILED'} ({replay['checks']} checks, {worst})"


def audit_suite(settings, only: list[str] = (), *, canaries: Optional[int] = None, fault: Optional[str] = None,
                canary_kind: str = "random") -> list:
    """Audit every selected private run of a suite (``--only`` filters as for ``dpbench run``);
    ``canaries=None`` takes :data:`DEFAULT_CANARIES`."""
    from dpbench.engine.faults import trainer_class
    from dpbench.runner.context import RunContext
    from dpbench.runner.plan import is_private, planned_grid

    trainer_class(fault)  # an unknown fault is a one-line error before any work
    canaries = DEFAULT_CANARIES if canaries is None else canaries
    if canaries < 2:
        raise UserError(f"--canaries {canaries}: need at least 2 (the default is {DEFAULT_CANARIES})")
    ctx = RunContext.build(settings)
    selected = planned_grid(ctx, list(only))
    private = [p for p in selected if is_private(p)]
    skipped = len(selected) - len(private)
    if not private:
        raise UserError("nothing to audit: the selected runs are all ε = ∞ (no privacy claim) — "
                        "select a finite ε with --only epsilon=E")
    if skipped:
        log.info("dpbench audit: skipping %d ε = ∞ run(s): they make no privacy claim", skipped)
    ctx.results_dir.mkdir(parents=True, exist_ok=True)
    log.info("dpbench audit: suite %r, %d run(s), %d canaries each%s; results in %s", ctx.suite.name, len(private),
             canaries, f", fault {fault}" if fault else "", ctx.results_dir)
    return [audit_run(ctx, p, canaries=canaries, fault=fault, canary_kind=canary_kind) for p in private]

