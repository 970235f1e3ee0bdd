"""The DP loop: per-example gradients, K-averaging, clipping, noise, empty batches, accounting, resume."""

from __future__ import annotations

import math

import pytest
import torch

from dpbench.engine.trainer import DPTrainer, OptimSettings, prepare_model
from dpbench.models.diffusion import build_unet, make_noise_scheduler
from dpbench.privacy.accounting import PrivacyPlan, make_plan
from dpbench.registry import METHODS, load_builtin_entries

load_builtin_entries()


@pytest.fixture(scope="module")
def digits8():
    from dpbench.config.suite import DatasetRef
    from dpbench.data.base import load_dataset

    x, y = load_dataset(DatasetRef(name="digits", image_size=8, channels=1), None, "train")
    return x[:64].clone(), y[:64].clone()


def _plan(n, **over):
    base = dict(epsilon=4.0, delta=1e-5, accountant="rdp", sample_rate=0.25, steps=4, expected_batch_size=int(0.25 * n),
                noise_multiplier=1.1, max_grad_norm=0.05, noise_multiplicity=1, physical_batch_size=8, num_examples=n)
    base.update(over)
    return PrivacyPlan(**base)


def _trainer(method, data, dtype=torch.float32, options=None, **plan):
    torch.manual_seed(0)
    x, y = data
    model = prepare_model(build_unet("tiny", 8, 1, 10), METHODS.get(method)(options), 10, "cpu", dtype)
    return DPTrainer(model, make_noise_scheduler(), x, y, _plan(len(x), **plan), OptimSettings(ema_decay=None), 0, "cpu")


def test_noise_multiplicity_is_averaged_inside_each_example(digits8):
    """K copies → one gradient per example = the mean of the K copies' gradients, clipped once to ≤ C."""
    k = 4
    tr = _trainer("lora", digits8, torch.float64, {"target": "all"}, noise_multiplicity=k)
    with torch.no_grad():
        for n, p in tr.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    x, y = tr.images[:5], tr.labels[:5]
    t, noise, labels = tr.draw_diffusion_inputs(x, y)
    grads, losses = tr.per_example_gradients(x, t, noise, labels)
    assert all(g.shape[0] == 5 for g in grads), "one row per example, not per noised copy"
    tr.hooks.disable_hooks()
    for i in range(5):
        copies = []
        for j in range(k):
            loss = tr.example_losses(x[i:i + 1], t[i:i + 1, j:j + 1], noise[i:i + 1, j:j + 1], labels[i:i + 1, j:j + 1]).sum()
            copies.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, tr.params)]))
        expected = torch.stack(copies).mean(0)
        got = torch.cat([g[i].flatten() for g in grads])
        assert torch.allclose(got, expected, rtol=1e-9, atol=1e-12)
    factors, norms = tr.clip(grads)
    assert (norms > tr.plan.max_grad_norm).any(), "the test must exercise clipping"
    clipped = torch.stack([(factors[:, None] * g.flatten(1)).norm(dim=1) for g in grads], 1).norm(dim=1)
    assert (clipped <= tr.plan.max_grad_norm * (1 + 1e-9)).all()


def test_sensitivity_of_the_summed_update_is_at_most_C(digits8):
    """Removing one example changes the clipped sum by ≤ C, whatever K is (K rows ≠ K examples)."""
    tr = _trainer("full", digits8, torch.float64, noise_multiplicity=3, max_grad_norm=1e-3)
    x, y = tr.images[:6], tr.labels[:6]
    t, noise, labels = tr.draw_diffusion_inputs(x, y)
    grads, _ = tr.per_example_gradients(x, t, noise, labels)
    factors, _ = tr.clip(grads)
    total = torch.cat([torch.einsum("i,i...->...", factors, g).flatten() for g in grads])
    for drop in range(6):
        keep = [i for i in range(6) if i != drop]
        g2, _ = tr.per_example_gradients(x[keep], t[keep], noise[keep], labels[keep])
        f2, _ = tr.clip(g2)
        other = torch.cat([torch.einsum("i,i...->...", f2, g).flatten() for g in g2])
        assert (total - other).norm() <= tr.plan.max_grad_norm * (1 + 1e-6)


def test_empty_poisson_batch_is_a_noise_only_step(digits8):
    tr = _trainer("bias", digits8, sample_rate=1e-9, expected_batch_size=4)
    before = [p.detach().clone() for p in tr.params]
    n = tr.train_step()
    assert n == 0
    assert tr.step == 1 and len(tr.accountant.history) == 1, "the step counts for the accountant"
    assert all(not torch.equal(a, p) for a, p in zip(before, tr.params)), "noise moved every parameter"


def test_non_private_reference_uses_plain_gradients(digits8):
    tr = _trainer("full", digits8, epsilon=math.inf, noise_multiplier=0.0, max_grad_norm=math.inf)
    assert tr.hooks is None
    tr.train_step()
    assert tr.epsilon_spent() is None and not tr.accountant.history


def test_epsilon_spent_never_exceeds_target(digits8):
    n = len(digits8[0])
    for accountant in ("rdp", "prv"):
        plan = make_plan(epsilon=3.0, delta=1e-3, accountant=accountant, num_examples=n, expected_batch_size=16,
                         epochs=None, steps=6, max_grad_norm=1.0, noise_multiplicity=2, physical_batch_size=8)
        torch.manual_seed(0)
        model = prepare_model(build_unet("tiny", 8, 1, 10), METHODS.get("loda")({"hidden": 4}), 10, "cpu")
        tr = DPTrainer(model, make_noise_scheduler(), *digits8, plan, OptimSettings(), 0, "cpu")
        stats = tr.train(progress=False)
        assert stats.steps == 6
        assert 0.9 * plan.epsilon < stats.epsilon_spent <= plan.epsilon, (accountant, stats.epsilon_spent)


def test_resume_from_checkpoint_is_exact(digits8, tmp_path):
    """A run checkpointed mid-way and resumed ends bit-identical, accountant history included."""
    def fresh():
        return _trainer("lora", digits8, options={"target": "attention"}, steps=4)

    straight = fresh()
    straight.train(progress=False)
    first = fresh()
    saved = []
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
    del saved


def test_peft_lora_weights_train_under_dp(digits8):
    """opacus#820: adapters injected before the device move can silently never update."""
    tr = _trainer("lora", digits8, options={"target": "all"}, steps=3)
    before = {n: p.detach().clone() for n, p in tr.named_params}
    tr.train(progress=False)  # raises if any trainable parameter did not change
    assert any("lora_A" in n for n in before) and any("lora_B" in n for n in before)
    assert all(not torch.equal(before[n], p) for n, p in tr.named_params)
    ids = {id(p) for group in tr.optimizer.param_groups for p in group["params"]}
    assert ids == {id(p) for p in tr.params}


def test_models_loaded_in_eval_mode_still_get_per_example_gradients(digits8):
    """from_pretrained() returns eval-mode models; Opacus stores activations only in training mode."""
    torch.manual_seed(0)
    model = prepare_model(build_unet("tiny", 8, 1, 10).eval(), METHODS.get("bias")(), 10, "cpu")
    tr = DPTrainer(model, make_noise_scheduler(), *digits8, _plan(len(digits8[0])), OptimSettings(ema_decay=None), 0, "cpu")
    assert tr.train_step() > 0 and tr.step == 1
