"""`dpbench audit`: gradient canaries go through the real mechanism, the replay check and the one-run bound
catch the broken loops of dpbench/engine/faults.py, and the real loop passes. Real (tiny) training, no mocks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from dpbench.audit.canaries import EngineCanaries, GradientCanaries
from dpbench.audit.replay import ReplayCheck
from dpbench.audit.run import AuditOptions, audit_training, audited_step
from dpbench.audit.scoring import RULES, family_bound, guess_grid, spike_energy
from dpbench.config.suite import TrainingSettings
from dpbench.engine.faults import trainer_class
from dpbench.engine.setup import ModelRecipe
from dpbench.engine.trainer import TrainerSetup, prepare_model
from dpbench.models.diffusion import build_unet, make_noise_scheduler
from dpbench.privacy.accounting import Budget, ClippingRule, DPStep, epsilon_spent
from dpbench.registry import METHODS

C = 1.0


def _model(method: str = "bias", seed: int = 0):
    torch.manual_seed(seed)
    return prepare_model(build_unet("tiny", image_size=8, channels=1, num_classes=4), METHODS.get(method)({}), 4, "cpu")


def _data(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=gen) * 2 - 1, torch.randint(0, 4, (n,), generator=gen)


def _settings(**kw):
    return TrainingSettings(**{"optimizer": "adamw", "lr": 0.005, "ema_decay": None, "mixed_precision": "no", **kw})


def _step(n: int, batch: int, steps: int, sigma: float, clipping: ClippingRule | None = None) -> DPStep:
    """The DP step for the private data alone (the audit adds its canaries to the population)."""
    return DPStep(private=True, noise_multiplier=sigma, clipping=clipping or ClippingRule(mode="fixed", max_grad_norm=C),
                  sample_rate=min(1.0, batch / n), steps=steps, expected_batch_size=batch, physical_batch_size=batch,
                  noise_multiplicity=1, num_examples=n)


def _trainer(fault, step, n, seed=0, reproducible=False):
    """A trainer (of the fault's class) on n random images with 40 canaries, 20 of them in (fixed coins)."""
    model = _model()
    images, labels = _data(n, seed)
    canaries = GradientCanaries([p for p in model.parameters() if p.requires_grad], 40, norm=10 * C, seed=seed,
                                secret_in=np.arange(40) % 2 == 0)
    return trainer_class(fault)(model, make_noise_scheduler(), images, labels,
                                TrainerSetup(audited_step(step, canaries.num_included), _settings(), seed,
                                             reproducible=reproducible), "cpu", canaries=canaries)


# ---------------------------------------------------------------------------------------------- canaries
def test_canaries_are_poisson_sampled_and_clipped_like_examples():
    n, m, batch, steps = 8, 200, 54, 25
    model = _model()
    params = [p for p in model.parameters() if p.requires_grad]
    coins = np.arange(m) % 3 == 0  # a fixed, unbalanced coin vector: which canaries exist must matter
    canaries = GradientCanaries(params, m, norm=10 * C, seed=3, secret_in=coins)
    step = audited_step(_step(n, batch, steps, sigma=0.0), canaries.num_included)
    assert step.num_examples == n + coins.sum() and step.sample_rate == pytest.approx(batch / (n + coins.sum()))
    images, labels = _data(n)
    trainer = trainer_class(None)(model, make_noise_scheduler(), images, labels, TrainerSetup(step, _settings(), 0),
                                  "cpu", canaries=canaries)
    assert trainer.population == n + coins.sum()
    trainer.train(progress=False)
    counts = np.bincount(torch.cat(canaries.calls).numpy(), minlength=m)
    assert len(canaries.calls) == steps, "the hook is asked once per step"
    assert counts[~coins].sum() == 0, "a canary whose coin says 'out' is never sampled"
    expected, sd = coins.sum() * steps * step.sample_rate, math.sqrt(coins.sum() * steps * step.sample_rate)
    assert abs(counts[coins].sum() - expected) < 5 * sd, "each included canary joins a step with probability q"
    assert counts[coins].min() >= 1 and counts[coins].var() > 0  # independent draws, not a fixed schedule

    # One step whose batch is a single canary, without noise: the released gradient × B is that canary's
    # gradient clipped by the trainer's rule — C·d_j, not its raw 10·C·d_j — and NoClip lets the 10·C through.
    j = int(canaries.included[5])
    # A gradient canary's norm is set, not computed: an engine whose norms are wrong does not touch it.
    for fault, norm in ((None, C), ("no-clip", 10 * C), ("halved-norms", C)):
        tr = trainer_class(fault)(_model(), make_noise_scheduler(), images, labels, TrainerSetup(step, _settings(), 0),
                                  "cpu", canaries=canaries)
        released = tr.compute_step_gradient(torch.tensor([n + 5]))
        flat = canaries.flatten(released) * batch
        assert torch.allclose(flat, norm * canaries.direction(j), atol=1e-6 * norm), fault


@pytest.mark.parametrize("method", ["bias", "lora"])
@pytest.mark.parametrize("grad_sample_mode", ["bookkeeping", "hooks"])
def test_engine_canaries_get_their_norm_and_weight_from_the_engine(method, grad_sample_mode):
    """An engine canary's gradient is v_j = 10·C·d_j on its class-embedding row, computed by the trainer's
    backend: the real loop releases C·d_j (clipped), no-clip 10·C·d_j, and a backend whose norms are
    halved 2·C·d_j (a tenth: 10·C·d_j) — the wrong norm reaches the canary, where the scores see it."""
    n, m, batch = 8, 30, 16
    images, labels = _data(n)
    coins = np.arange(m) % 2 == 0
    step = audited_step(_step(n, batch, 3, sigma=0.0), int(coins.sum()))
    for fault, norm in ((None, C), ("no-clip", 10 * C), ("halved-norms", 2 * C), ("tenth-norms", 10 * C)):
        model = _model(method)
        params = [p for p in model.parameters() if p.requires_grad]
        canaries = EngineCanaries(params, m, norm=10 * C, seed=3, embedding=model.class_embedding, secret_in=coins)
        tr = trainer_class(fault)(model, make_noise_scheduler(), images, labels,
                                  TrainerSetup(step, _settings(grad_sample_mode=grad_sample_mode), 0), "cpu",
                                  canaries=canaries)
        for pos in (0, 7):  # canaries on different embedding rows
            j = int(canaries.included[pos])
            flat = canaries.flatten(tr.compute_step_gradient(torch.tensor([n + pos]))) * batch
            assert torch.allclose(flat, norm * canaries.direction(j), atol=1e-5 * norm), (fault, j)
        tr.finish()
    d = torch.stack([canaries.direction(j) for j in range(m)])
    assert torch.allclose(d.norm(dim=1), torch.ones(m), atol=1e-6)
    assert (d[:, canaries.index[0].min():canaries.index.max() + 1] != 0).sum(1).eq(model.class_embedding.weight.shape[1]).all()


def test_canary_directions_are_unit_and_orthonormal_when_cheap():
    params = [torch.zeros(300), torch.zeros(5, 20)]
    dense = GradientCanaries(params, 50, norm=1.0, seed=0)
    v = torch.stack([dense.direction(j) for j in range(50)])
    assert torch.allclose(v @ v.T, torch.eye(50), atol=1e-5)
    sparse = GradientCanaries(params, 50, norm=1.0, seed=0, max_elements=50 * 40)
    assert sparse.support == 40
    v = torch.stack([sparse.direction(j) for j in range(50)])
    assert torch.allclose(v.norm(dim=1), torch.ones(50), atol=1e-5) and ((v != 0).sum(1) == 40).all()
    x = [torch.randn(300), torch.randn(5, 20)]
    assert np.allclose(sparse.project(x), (v @ sparse.flatten(x)).numpy(), atol=1e-5)
    dirac = GradientCanaries(params, 50, norm=1.0, seed=0, kind="dirac")
    v = torch.stack([dirac.direction(j) for j in range(50)])
    assert torch.equal(v @ v.T, torch.eye(50))


def test_the_spike_score_ignores_what_repeats_every_step():
    rng = np.random.default_rng(0)
    t, m = 20, 300
    spikes = np.zeros((t, m))
    spikes[rng.integers(0, t, 100), np.arange(100)] = 1.0  # canaries 0..99 sampled once
    noise = 0.05 * rng.normal(size=(t, m))
    data = np.outer(1 + 0.3 * rng.normal(size=t), 3 * rng.normal(size=m))  # the data gradient's projection
    repeated = 10 * rng.normal(size=m)  # the same noise vector every step
    score = spike_energy(spikes + noise + data + repeated)
    assert score[:100].min() > score[100:].max()
    summed = (spikes + noise + data + repeated).sum(0)
    assert summed[:100].min() < summed[100:].max(), "the plain sum drowns in what the spike score removes"


def test_the_spike_score_removes_a_data_gradient_that_drifts_along_several_directions():
    """With few trainable parameters (bias-only) the data gradient's projections dwarf a canary's jump
    and drift along several directions over training; removing one shared component (the old rule) left
    them in and repeated noise on bias-only went undetected."""
    rng = np.random.default_rng(0)
    t, m = 80, 300
    spikes = (rng.random((t, m)) < 0.25) * (np.arange(m) < 150)  # canaries 0..149 included, q = 1/4
    drift = np.cumsum(rng.normal(size=(t, 5)), 0)  # five slowly wandering directions of the data gradient
    data = 2.0 * drift @ rng.normal(size=(5, m))
    repeated = 10 * rng.normal(size=m)
    observed = spikes + 0.05 * rng.normal(size=(t, m)) + data + repeated
    score = spike_energy(observed)
    assert score[:150].min() > score[150:].max()
    centered = observed - observed.mean(0)
    u = np.linalg.svd(centered, full_matrices=False)[0][:, :1]
    one = ((centered - u @ (u.T @ centered)) ** 2).sum(0)
    assert one[:150].min() < one[150:].max(), "removing one component leaves the drifting data gradient in"


def test_the_guess_family_is_fixed_by_m_and_corrected_over_every_rule():
    assert guess_grid(1000) == ((250, 250), (375, 375), (500, 500))
    rng = np.random.default_rng(1)
    coins = rng.random(200) < 0.5
    scores = {rule: rng.normal(size=200) for rule in RULES}
    family = family_bound(scores, coins, delta=1e-4)
    assert family.candidates == len(RULES) * 3 == len(family.bounds)
    assert family.per_candidate_confidence == pytest.approx(1 - 0.05 / 9)
    perfect = {rule: coins.astype(float) for rule in RULES}
    assert family_bound(perfect, coins, delta=1e-4).eps_low > 2


# ------------------------------------------------------------------------------------------------ replay
@pytest.mark.parametrize("fault", [None, "no-clip", "realised-divisor", "halved-norms"])
def test_replay_check_passes_the_real_loop_and_fails_broken_ones(fault):
    n, batch, steps = 24, 24, 3
    # halved norms matter only where the rule clips: automatic clipping always does (fixed C = 1 does not
    # clip these small gradients, and below 2·C a halved norm changes nothing)
    clipping = ClippingRule(mode="auto") if fault == "halved-norms" else None
    trainer = _trainer(fault, _step(n, batch, steps, sigma=1.0, clipping=clipping), n)
    check = ReplayCheck(trainer, examples=[0, 1, 2, 3]).attach()
    trainer.train(progress=False)
    check.detach()
    kinds = {r.record.split()[0] for r in check.records}
    assert kinds == {"example", "canary"}, check.records
    written = json.dumps(check.summary())
    examples = [r for r in check.records if r.record.startswith("example")]
    if fault is None:
        assert check.passed and check.max_ratio <= 1 + 1e-3
        assert max(r.rounding for r in check.records) < 1e-3
        # a real example's clipped-gradient norm (a private statistic) is never written while the check holds
        assert all(repr(r.difference) not in written for r in examples)
        assert check.summary()["worst"]["record"].startswith("canary")
    else:
        assert not check.passed
        failing = {r.record.split()[0] for r in check.records if not r.ok}
        if fault == "halved-norms":  # the engine's norms: real examples enter at up to 2·C, gradient canaries bypass it
            assert failing == {"example"} and 1.05 < check.max_ratio <= 2 + 1e-3, check.records
            return
        # an unclipped canary moves the step by its 10·C; a realised divisor moves it by the rescaled noise
        assert "canary" in failing
        assert check.max_ratio > (9.9 if fault == "no-clip" else 1.05)


def test_a_holding_replay_check_writes_no_number_of_a_real_example():
    """Without the record, the step moves by exactly that example's clipped gradient (the noise cancels);
    under automatic clipping that gives its gradient norm away. Only checks on real examples here: what
    audit.json would keep says they held, and nothing else."""
    n, batch, steps = 24, 24, 3
    trainer = _trainer(None, _step(n, batch, steps, sigma=1.0), n)
    check = ReplayCheck(trainer, examples=[0, 1, 2, 3], canary_checks=0).attach()
    trainer.train(progress=False)
    check.detach()
    assert check.passed and check.records and all(r.record.startswith("example") for r in check.records)
    summary = check.summary()
    assert summary["passed"] and summary["example_checks"] == len(check.records)
    assert summary["worst"] is None and summary["max_difference_over_sensitivity"] is None
    assert all(repr(r.difference) not in json.dumps(summary) for r in check.records)


def test_replay_check_does_not_change_the_run():
    n, batch, steps = 24, 24, 3
    finals = []
    for replay in (False, True):
        trainer = _trainer(None, _step(n, batch, steps, sigma=1.0), n, reproducible=True)
        if replay:
            check = ReplayCheck(trainer, examples=list(range(8))).attach()
        trainer.train(progress=False)
        finals.append([p.detach().clone() for p in trainer.params])
    assert check.records, "the check ran"
    assert all(torch.equal(a, b) for a, b in zip(*finals))


# ------------------------------------------------------------------------------------------------- bound
@pytest.fixture(scope="module")
def small_audit_setting():
    """64 random images, 1000 canaries, q ≈ 1/2, T = 10, σ = 3: ε ≈ 2 at the audited q (the PRV accountant)."""
    n, m, batch, steps, sigma, delta = 64, 1000, 280, 10, 3.0, 1e-4
    eps = epsilon_spent("prv", [(sigma, batch / (n + m / 2), steps)], delta)
    assert 1.9 < eps < 2.1
    return n, m, _step(n, batch, steps, sigma), Budget(eps, delta, "prv", sigma)


@pytest.mark.parametrize("fault", [None, "low-noise", "no-clip", "repeated-noise"])
def test_injected_faults_push_eps_low_above_a_small_epsilon(small_audit_setting, fault):
    n, m, step, budget = small_audit_setting
    images, labels = _data(n)
    torch.manual_seed(0)
    recipe = ModelRecipe.of(build_unet("tiny", image_size=8, channels=1, num_classes=4), "bias", {}, 4, "cpu",
                            scheduler=make_noise_scheduler())
    out = audit_training(recipe, (images, labels), TrainerSetup(step, _settings(), 0, budget=budget),
                         delta=budget.delta, options=AuditOptions(canaries=m, fault=fault))
    # The audited run's own ε is the accountant's at its own q, which moves with the random count of
    # included canaries (Binomial(m, 1/2): a fixed 5% tolerance on ε failed at 471 included, -1.8 sd).
    included = out.step.num_examples - n
    assert abs(included - m / 2) < 4 * (m / 4) ** 0.5
    assert out.epsilon_mechanism == pytest.approx(
        epsilon_spent("prv", [(step.noise_multiplier, out.step.sample_rate, step.steps)], budget.delta), rel=1e-3)
    if fault is None:
        assert out.eps_low <= budget.epsilon and out.replay.passed and out.passed(budget.epsilon)
        assert not out.family.refutes_claim and out.family.claimed is not None
    else:
        assert out.eps_low > budget.epsilon and not out.passed(budget.epsilon), out.family.bounds
    if fault == "repeated-noise":  # only a rule that ignores repeated noise sees it
        assert out.family.best("all-steps").rule == "spikes"
        assert out.family.best("final-weights").eps_low <= budget.epsilon


# --------------------------------------------------------------------------------------------------- CLI
MICRO = {
    "name": "micro-audit",
    "seeds": [0],
    "data": {"private": {"name": "shapes", "image_size": 8, "channels": 1, "options": {"size": 40, "seed": 5}},
             "public": {"name": "shapes", "image_size": 8, "channels": 1, "options": {"size": 300}}},
    "model": {"preset": "tiny"},
    "pretrain": {"steps": 10, "batch_size": 32, "lr": 0.003},
    "privacy": {"epsilons": [2, "inf"], "delta": 1e-4, "accountant": "prv", "expected_batch_size": 32, "steps": 4,
                "max_grad_norm": 1.0, "noise_multiplicity": 1, "physical_batch_size": 32},
    "methods": [{"name": "bias", "lr": 0.01}],
    "training": {"ema_decay": None, "mixed_precision": "no"},
}


def test_cli_writes_audit_json_and_exits_1_on_an_injected_fault(tmp_path):
    from dpbench.cli import main
    from dpbench.results import AuditResult, load_audits, read_model

    suite = tmp_path / "micro.yaml"
    suite.write_text(yaml.safe_dump(MICRO))
    common = [str(suite), "--results-dir", str(tmp_path / "results"), "--canaries", "60", "--no-progress"]
    assert main(["audit", *common]) == 0  # the ε = ∞ run is skipped: it makes no claim
    folder = tmp_path / "results" / "micro-audit" / "runs" / "bias-eps2-seed0"
    audit = read_model(folder / "audit.json", AuditResult)
    assert audit.passed and audit.fault is None and audit.epsilon == 2 and audit.canaries == 60
    assert audit.epsilon_lower_bound <= 2 and audit.replay["passed"] and audit.replay["canary_checks"] >= 1
    assert {t.name for t in audit.threat_models} == {"final-weights", "all-steps"} and audit.candidates == 18
    assert audit.population == 40 + audit.canaries_included == 40 + audit.secret_in.count("1")
    assert audit.sample_rate == pytest.approx(32 / audit.population) and audit.steps == 4
    assert audit.epsilon_audited_mechanism <= 2
    assert audit.claimed_curve.startswith("prv privacy profile") and audit.fdp_refutes_claim is False
    assert 0 <= audit.mu_lower_bound and audit.claimed_mu_clt > 0
    assert not (tmp_path / "results" / "micro-audit" / "runs" / "bias-epsinf-seed0").exists()

    assert main(["audit", *common, "--inject", "no-clip"]) == 1
    control = json.loads((folder / "audit-no-clip.json").read_text())
    assert control["fault"] == "no-clip" and control["passed"] is False and control["replay"]["passed"] is False
    assert len(load_audits(tmp_path / "results" / "micro-audit")) == 2  # what the report's audit section reads

    assert main(["audit", *common, "--only", "epsilon=inf"]) == 2
    assert main(["audit", *common, "--inject", "bogus"]) == 2
