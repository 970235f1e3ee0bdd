"""The DP loop: per-example gradients, K-averaging, clipping (fp32 under bf16), noise (unpredictable),
empty batches, accounting, resume, clipping rules."""

from __future__ import annotations

import math

import pytest
import torch

from dpbench.config.suite import TrainingSettings
from dpbench.engine.trainer import DPTrainer, TrainerSetup, prepare_model
from dpbench.models.diffusion import build_unet, make_noise_scheduler
from dpbench.privacy.accounting import Budget, ClippingRule, DPStep, Schedule, make_plan
from dpbench.registry import METHODS


@pytest.fixture(scope="module")
def digits8():
    from dpbench.config.suite import DatasetRef
    from dpbench.data.base import load_dataset

    x, y = load_dataset(DatasetRef(name="digits", image_size=8, channels=1), None, "train")
    return x[:64].clone(), y[:64].clone()


def _step(n, private=True, **over):
    base = dict(private=private, noise_multiplier=1.1 if private else 0.0,
                clipping=ClippingRule(mode="fixed", max_grad_norm=0.05) if private else ClippingRule(mode="none", max_grad_norm=math.inf),
                sample_rate=0.25, steps=4, expected_batch_size=int(0.25 * n), physical_batch_size=8, noise_multiplicity=1,
                num_examples=n)
    base.update(over)
    return DPStep(**base)


BUDGET = Budget(epsilon=4.0, delta=1e-5, accountant="rdp", noise_multiplier=1.1)


def _trainer(method, data, dtype=torch.float32, options=None, training=None, budget=BUDGET, **step):
    torch.manual_seed(0)
    x, y = data
    model = prepare_model(build_unet("tiny", 8, 1, 10), METHODS.get(method)(options), 10, "cpu", dtype)
    setup = TrainerSetup(_step(len(x), **step), training or TrainingSettings(ema_decay=None), 0, budget=budget)
    return DPTrainer(model, make_noise_scheduler(), x, y, setup, "cpu")


def _randomise_adapters(trainer):
    with torch.no_grad():
        for n, p in trainer.model.named_parameters():
            if p.requires_grad and not p.any():
                p.normal_(0, 0.05)


def test_noise_multiplicity_is_averaged_inside_each_example(digits8):
    """K copies → one gradient per example = the mean of the K copies' gradients, clipped once to ≤ C."""
    k = 4
    tr = _trainer("lora", digits8, torch.float64, {"target": "all"}, noise_multiplicity=k,
                  training=TrainingSettings(ema_decay=None, grad_sample_mode="hooks"))  # materialises per-example grads
    _randomise_adapters(tr)
    x, y = tr.images[:5], tr.labels[:5]
    t, noise, labels = tr.draw_diffusion_inputs(y)
    grads, losses = tr.backend.per_example_gradients(lambda: tr.example_losses(x, t, noise, labels))
    assert all(g.shape[0] == 5 for g in grads), "one row per example, not per noised copy"
    tr.backend.disable()
    for i in range(5):
        copies = []
        for j in range(k):
            loss = tr.example_losses(x[i:i + 1], t[i:i + 1, j:j + 1], noise[i:i + 1, j:j + 1], labels[i:i + 1, j:j + 1]).sum()
            copies.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, tr.params)]))
        expected = torch.stack(copies).mean(0)
        got = torch.cat([g[i].flatten() for g in grads])
        assert torch.allclose(got, expected, rtol=1e-9, atol=1e-12)
    tr.backend.enable()
    sums, norms, _ = tr.backend.weighted_sum(lambda: tr.example_losses(x, t, noise, labels), tr.clipper.weights)
    assert (norms > tr.clipper.max_grad_norm).any(), "the test must exercise clipping"
    weights = tr.clipper.weights(norms)
    assert ((weights * norms) <= tr.clipper.max_grad_norm * (1 + 1e-9)).all()


def test_sensitivity_of_the_summed_update_is_at_most_C(digits8):
    """Removing one example changes the clipped sum by ≤ C, whatever K is (K rows ≠ K examples)."""
    tr = _trainer("full", digits8, torch.float64, noise_multiplicity=3, clipping=ClippingRule("fixed", 1e-3))
    x, y = tr.images[:6], tr.labels[:6]
    t, noise, labels = tr.draw_diffusion_inputs(y)

    def clipped_sum(keep):
        sums, _, _ = tr.backend.weighted_sum(lambda: tr.example_losses(x[keep], t[keep], noise[keep], labels[keep]),
                                             tr.clipper.weights)
        return torch.cat([s.flatten() for s in sums])

    total = clipped_sum(list(range(6)))
    for drop in range(6):
        other = clipped_sum([i for i in range(6) if i != drop])
        assert (total - other).norm() <= 1e-3 * (1 + 1e-6)


def test_clipping_is_fp32_under_bf16_autocast(digits8):
    """Per-example gradients arrive in bf16 under autocast; norms, factors and sums must not (the old loop
    computed norms in bf16 and let clipped contributions reach 1.0034·C)."""
    tr = _trainer("full", digits8, torch.float32, training=TrainingSettings(ema_decay=None, mixed_precision="bf16", grad_sample_mode="hooks"),
                  clipping=ClippingRule("fixed", 1.0))
    assert tr.autocast_dtype == torch.bfloat16
    x, y = tr.images[:8], tr.labels[:8]
    t, noise, labels = tr.draw_diffusion_inputs(y)
    grads, _ = tr.backend.per_example_gradients(lambda: tr.example_losses(x, t, noise, labels))
    norms64 = torch.stack([g.reshape(8, -1).double().pow(2).sum(1) for g in grads], 1).sum(1).sqrt()
    tr.clipper.max_grad_norm = float(norms64.median())  # half the examples clipped: rounding would show there
    sums, norms, _ = tr.backend.weighted_sum(lambda: tr.example_losses(x, t, noise, labels), tr.clipper.weights)
    assert norms.dtype == torch.float32 and all(s.dtype == torch.float32 for s in sums)
    ratio = tr.clipper.weights(norms).double() * norms64 / tr.clipper.max_grad_norm
    assert float(ratio.max()) <= 1 + 1e-6


def test_dp_noise_is_not_reproducible_from_the_seed(digits8):
    """Same suite, same seed: different DP-trained weights (the noise comes from the OS); the opt-in
    reproducible noise gives identical weights and says so."""
    def trained(reproducible: bool):
        torch.manual_seed(0)
        x, y = digits8
        model = prepare_model(build_unet("tiny", 8, 1, 10), METHODS.get("bias")(), 10, "cpu")
        tr = DPTrainer(model, make_noise_scheduler(), x, y,
                       TrainerSetup(_step(len(x)), TrainingSettings(ema_decay=None), 7, budget=BUDGET,
                                    reproducible=reproducible), "cpu")
        tr.train(progress=False)
        return tr.noise_source, torch.cat([p.detach().flatten() for p in tr.params])

    (source_a, a), (_, b) = trained(False), trained(False)
    assert source_a == "os_entropy" and not torch.equal(a, b)
    (source_c, c), (_, d) = trained(True), trained(True)
    assert source_c == "seeded" and torch.equal(c, d)


def test_poisson_batches_are_not_reproducible_from_the_seed(digits8):
    """Issue 18: with the batches regenerable from the published seed, amplification by subsampling is
    void (an example's inclusions are known). Same seed: different batches by default; the same ones
    only under the explicit reproducible opt-in, which is flagged as not a DP release."""
    def batches(reproducible: bool) -> tuple[str, list[list[int]]]:
        torch.manual_seed(0)
        x, y = digits8
        model = prepare_model(build_unet("tiny", 8, 1, 10), METHODS.get("bias")(), 10, "cpu")
        tr = DPTrainer(model, make_noise_scheduler(), x, y,
                       TrainerSetup(_step(len(x)), TrainingSettings(ema_decay=None), 7, budget=BUDGET,
                                    reproducible=reproducible), "cpu")
        return tr.noise_source, [tr.sample_logical_batch().tolist() for _ in range(5)]

    (source, a), (_, b) = batches(False), batches(False)
    assert source == "os_entropy" and a != b
    (source, c), (_, d) = batches(True), batches(True)
    assert source == "seeded" and c == d


def test_regenerating_the_noise_from_the_seed_fails(digits8):
    """The attack of issue 8: subtract noise regenerated from the published seed from a noise-only step."""
    from dpbench.privacy.noise import noise_generator

    tr = _trainer("bias", digits8, sample_rate=1e-9, expected_batch_size=4)
    released = torch.cat([g.flatten() for g in tr.compute_step_gradient(torch.empty(0, dtype=torch.long))])
    gen, _ = noise_generator(torch.device("cpu"), reproducible_seed=0)  # what an attacker can regenerate
    guess = torch.cat([torch.normal(0.0, tr.config.noise_multiplier * 0.05, p.shape, generator=gen, dtype=torch.float32).flatten()
                       for p in tr.params]) / 4
    assert (released - guess).norm() > 0.5 * released.norm()


def test_empty_poisson_batch_is_a_noise_only_step(digits8):
    tr = _trainer("bias", digits8, sample_rate=1e-9, expected_batch_size=4)
    before = [p.detach().clone() for p in tr.params]
    n = tr.train_step()
    assert n == 0
    assert tr.step == 1 and len(tr.accountant.history) == 1, "the step counts for the accountant"
    assert all(not torch.equal(a, p) for a, p in zip(before, tr.params)), "noise moved every parameter"


def test_non_private_reference_uses_plain_gradients_and_keeps_its_loss(digits8):
    tr = _trainer("full", digits8, private=False)
    assert tr.backend is None and tr.accountant is None
    tr.train_step()
    assert tr.epsilon_spent() is None and len(tr.stats.losses) == 1


def test_private_runs_keep_no_training_loss(digits8):
    """A private run's loss is a statistic of private data outside the mechanism: never kept."""
    tr = _trainer("bias", digits8)
    tr.train(progress=False)
    assert tr.stats.losses == [] and tr.state_dict()["losses"] == []


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_spent_never_exceeds_target(digits8, accountant):
    n = len(digits8[0])
    plan = make_plan(epsilon=3.0, delta=1e-3, accountant=accountant, num_examples=n,
                     schedule=Schedule(expected_batch_size=16, epochs=None, steps=6),
                     clipping=ClippingRule("fixed", 1.0), noise_multiplicity=2, physical_batch_size=8)
    torch.manual_seed(0)
    model = prepare_model(build_unet("tiny", 8, 1, 10), METHODS.get("loda")({"hidden": 4}), 10, "cpu")
    tr = DPTrainer(model, make_noise_scheduler(), *digits8,
                   TrainerSetup(plan.step, TrainingSettings(), 0, budget=plan.budget), "cpu")
    stats = tr.train(progress=False)
    assert stats.steps == 6
    assert 0.9 * 3.0 < stats.epsilon_spent <= 3.0, (accountant, stats.epsilon_spent)


def test_quantile_clipping_keeps_the_total_budget_and_adapts_C(digits8):
    """Adaptive clipping: σ_g is raised so gradient + count mechanisms compose to the calibrated σ,
    the accountant steps with that σ, and C moves toward the target quantile."""
    n = len(digits8[0])
    rule = ClippingRule(mode="quantile", max_grad_norm=10.0, target_quantile=0.5, quantile_lr=0.5)
    plan = make_plan(epsilon=3.0, delta=1e-3, accountant="rdp", num_examples=n,
                     schedule=Schedule(expected_batch_size=16, epochs=None, steps=8),
                     clipping=rule, noise_multiplicity=1, physical_batch_size=16)
    z, sigma_g, count_std = plan.budget.noise_multiplier, plan.step.noise_multiplier, plan.step.clipping.count_noise_std
    assert count_std == 16 / 20 and sigma_g > z
    assert sigma_g ** -2 + (2 * count_std) ** -2 == pytest.approx(z ** -2)
    torch.manual_seed(0)
    model = prepare_model(build_unet("tiny", 8, 1, 10), METHODS.get("bias")(), 10, "cpu")
    tr = DPTrainer(model, make_noise_scheduler(), *digits8,
                   TrainerSetup(plan.step, TrainingSettings(ema_decay=None), 0, budget=plan.budget), "cpu")
    stats = tr.train(progress=False)
    assert all(h[0] == z for h in tr.accountant.history)
    assert stats.epsilon_spent <= 3.0
    assert tr.clipper.max_grad_norm < 10.0 / 2, "far above every norm, C must shrink toward the median"
    assert len(tr.clipper.noisy_unclipped_fractions) == 8
    # the C curve a result records: C after each step, by the update rule from the privatised fractions
    expected, c = [], 10.0
    for fraction in tr.clipper.noisy_unclipped_fractions:
        c *= math.exp(-0.5 * (fraction - 0.5))
        expected.append(c)
    assert tr.clipper.max_grad_norms == pytest.approx(expected) and expected[-1] == tr.clipper.max_grad_norm


def test_automatic_clipping_bounds_every_contribution_by_one(digits8):
    tr = _trainer("full", digits8, torch.float64, clipping=ClippingRule("auto"))
    assert tr.clipper.sensitivity == 1.0
    x, y = tr.images[:6], tr.labels[:6]
    t, noise, labels = tr.draw_diffusion_inputs(y)
    _, norms, _ = tr.backend.weighted_sum(lambda: tr.example_losses(x, t, noise, labels), tr.clipper.weights)
    contributions = tr.clipper.weights(norms) * norms
    assert (contributions < 1).all() and torch.allclose(contributions, norms / (norms + 0.01))


def test_resume_from_checkpoint_is_exact(digits8, tmp_path):
    """A run checkpointed mid-way and resumed ends bit-identical, noise and accountant history included."""
    def fresh():
        return _trainer("lora", digits8, options={"target": "attention"}, steps=4)

    straight = fresh()
    first = fresh()
    first.noise_gen.set_state(straight.noise_gen.get_state())  # both runs draw the same (OS-seeded) noise
    first.sampling_gen.set_state(straight.sampling_gen.get_state())  # ... and the same (OS-seeded) batches
    straight.train(progress=False)
    first.train_step(), first.train_step()
    path = tmp_path / "ck.pt"
    torch.save(first.state_dict(), path)
    resumed = fresh()
    resumed.load_state_dict(torch.load(path, weights_only=True))
    resumed.train(progress=False)
    for a, b in zip(straight.params, resumed.params):
        assert torch.equal(a, b)
    assert straight.accountant.history == resumed.accountant.history
    assert resumed.epsilon_spent() == straight.epsilon_spent()


def test_peft_lora_weights_train_under_dp(digits8):
    """opacus#820: adapters injected before the device move can silently never update."""
    tr = _trainer("lora", digits8, options={"target": "all"}, steps=3)
    before = {n: p.detach().clone() for n, p in tr.named_params}
    tr.train(progress=False)  # raises if any trainable parameter did not change
    assert any("lora_A" in n for n in before) and any("lora_B" in n for n in before)
    assert all(not torch.equal(before[n], p) for n, p in tr.named_params)
    ids = {id(p) for group in tr.optimizer.param_groups for p in group["params"]}
    assert ids == {id(p) for p in tr.params}


def test_a_parameter_that_never_moves_stops_training(digits8):
    """The opacus#820 guard itself: a trainable parameter left out of the optimiser is caught."""
    tr = _trainer("bias", digits8, steps=2)
    tr.optimizer.param_groups[0]["params"] = tr.optimizer.param_groups[0]["params"][1:]
    with pytest.raises(RuntimeError, match="never changed"):
        tr.train(progress=False)


def test_models_loaded_in_eval_mode_still_get_per_example_gradients(digits8):
    """from_pretrained() returns eval-mode models; Opacus stores activations only in training mode."""
    torch.manual_seed(0)
    model = prepare_model(build_unet("tiny", 8, 1, 10).eval(), METHODS.get("bias")(), 10, "cpu")
    tr = DPTrainer(model, make_noise_scheduler(), *digits8,
                   TrainerSetup(_step(len(digits8[0])), TrainingSettings(ema_decay=None), 0, budget=BUDGET), "cpu")
    assert tr.train_step() > 0 and tr.step == 1


def test_physical_batch_size_does_not_change_the_update(digits8):
    """Diffusion draws are made per logical batch, so virtual batching changes nothing but memory."""
    indices = torch.arange(0, len(digits8[0]), 4)  # one logical batch for both (sampling is secret: OS-seeded)

    def update(physical):
        tr = _trainer("bias", digits8, torch.float64, physical_batch_size=physical, noise_multiplier=0.0)
        return torch.cat([g.flatten() for g in tr.compute_step_gradient(indices)])

    assert torch.allclose(update(3), update(16), rtol=1e-10, atol=1e-14)
