"""``dpbench selfcheck``: prove, on the user's own stack, that the DP engine computes what it claims.

On a tiny class-conditional UNet *with attention*, for every registered method and the chosen backend:

(a) per-example gradients (recovered from the backend with one-hot weights, so every backend is
    checked the same way) equal an explicit per-example autograd loop — max relative error ≤ 1e-6
    (float64) — and so do the per-example norms the backend hands the clipping rule;
(b) one DP step changes every trainable parameter and no frozen one;
(c) every example's clipped contribution has norm ≤ C·(1+1e-6) (and examples above C are scaled to C),
    in float64 and again under bf16 autocast (CUDA's, or CPU's where CUDA is absent), where the
    per-example gradients arrive in bf16 and the clipping arithmetic must still be fp32;
(d) a whole step with the noise off, on a Poisson batch whose realised size differs from the expected
    one, equals Σ clip(g_i) / B_expected computed from an independently written loss (catches a
    loop that divides by the realised batch size, or mis-scales anything else);
(e) the noise of a noise-only (empty Poisson batch) step has mean 0 and standard deviation σ·C
    (a 5-standard-error test on ≥ 200k draws), consecutive steps draw independent noise, and two
    trainers with the same seed draw different noise (it comes from the OS, not the seed) unless
    reproducibility is asked for;
(f) two trainers with the same seed draw different Poisson batches (who is sampled is secret, as
    amplification by subsampling assumes), and the same ones under the reproducible opt-in.

These catch library regressions of the kind met while building dpbench: silently wrong conv
per-sample gradients on channels_last inputs (Opacus 1.6 + diffusers attention), adapters that never
train (peft + Opacus, opacus#820), sensitivity mistakes with noise multiplicity, and the deliberately
broken loops of dpbench/engine/faults.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from dpbench.results import SelfcheckMethod, SelfcheckReport

REL_ERR_LIMIT = 1e-6
CLIP_SLACK = 1e-6


def _tiny_model(num_classes: int, seed: int):
    from dpbench.models.diffusion import build_unet

    torch.manual_seed(seed)
    return build_unet("tiny", image_size=8, channels=1, num_classes=num_classes)


def _settings(grad_sample_mode: str, mixed_precision: str = "no"):
    from dpbench.config.suite import TrainingSettings

    return TrainingSettings(optimizer="sgd", lr=0.1, momentum=0.0, ema_decay=None, grad_sample_mode=grad_sample_mode,
                            label_dropout=0.3, mixed_precision=mixed_precision)


def _step_config(n: int, expected: int, physical: int, k: int, sigma: float, c: float):
    from dpbench.privacy.accounting import ClippingRule, DPStep

    return DPStep(private=True, noise_multiplier=sigma, clipping=ClippingRule(mode="fixed", max_grad_norm=c),
                  sample_rate=expected / n, steps=1, expected_batch_size=expected, physical_batch_size=physical,
                  noise_multiplicity=k, num_examples=n)


@dataclass(frozen=True)
class _Case:
    """One method checked on one backend: what every check of it builds its trainers from."""

    name: str
    options: Optional[dict]
    device: str
    grad_sample_mode: str
    seed: int
    noise_multiplicity: int = 2
    fault: Optional[str] = None


def _build(case: _Case, dtype, step, *, mixed_precision: str = "no", fault: Optional[str] = None,
           reproducible: bool = False):
    """A trainer of the tiny model prepared for the case's method, on random data of ``step``'s size."""
    from dpbench.engine.setup import ModelRecipe
    from dpbench.engine.trainer import TrainerSetup
    from dpbench.models.diffusion import make_noise_scheduler

    num_classes = 3
    recipe = ModelRecipe.of(_tiny_model(num_classes, case.seed), case.name, case.options, num_classes, case.device,
                            dtype, scheduler=make_noise_scheduler())
    model = recipe.prepare()
    gen = torch.Generator().manual_seed(case.seed)
    with torch.no_grad():  # zero-initialised adapters (B = 0) would make some gradients vanish
        for p in model.parameters():
            if p.requires_grad and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.1)
    images = (torch.rand(step.num_examples, 1, 8, 8, generator=gen, dtype=dtype) * 2 - 1)
    labels = torch.randint(0, num_classes, (step.num_examples,), generator=gen)
    setup = TrainerSetup(step, _settings(case.grad_sample_mode, mixed_precision), case.seed, reproducible=reproducible)
    return recipe.trainer(model, images, labels, setup, fault=fault)


def engine_per_example_gradients(trainer, x, t, noise, labels) -> list[list[torch.Tensor]]:
    """Each example's gradient from the trainer's backend, via one-hot weights (works for every backend)."""
    out = []
    for i in range(len(x)):
        onehot = lambda norms, i=i: torch.nn.functional.one_hot(torch.tensor(i), len(norms)).to(norms)  # noqa: E731
        sums, _, _ = trainer.backend.weighted_sum(lambda: trainer.example_losses(x, t, noise, labels), onehot)
        out.append(sums)
    return out


def engine_norms(trainer, x, t, noise, labels) -> torch.Tensor:
    """The per-example norms the backend hands the clipping rule (what its weights are computed from)."""
    _, norms, _ = trainer.backend.weighted_sum(lambda: trainer.example_losses(x, t, noise, labels),
                                               trainer.clipper.weights)
    return norms.to(torch.float64)


def reference_example_loss(model, scheduler, x, t, noise, labels) -> torch.Tensor:
    """One example's loss written from the definition (not the engine's code): the mean over its K copies
    of ‖ε_θ(√ᾱ_t x + √(1−ᾱ_t) ε, t, y) − ε‖² / dim."""
    alpha_bar = scheduler.alphas_cumprod.to(x.device, x.dtype)[t]  # [K]
    shape = (-1,) + (1,) * (noise.dim() - 1)
    noisy = alpha_bar.sqrt().view(shape) * x + (1 - alpha_bar).sqrt().view(shape) * noise
    pred = model(noisy, t, class_labels=labels).sample
    return ((pred - noise) ** 2).flatten(1).mean(1).mean()


def _reference_gradient(trainer, x, t, noise, labels) -> list[torch.Tensor]:
    loss = reference_example_loss(trainer.model, trainer.scheduler, x, t, noise, labels)
    return list(torch.autograd.grad(loss, trainer.params))


def _without_backend_hooks(trainer):
    class _Off:
        def __enter__(self):
            disable = getattr(trainer.backend, "disable", None)
            if disable:
                disable()

        def __exit__(self, *exc):
            enable = getattr(trainer.backend, "enable", None)
            if enable:
                enable()

    return _Off()


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])


def check_method(name: str, options: dict | None = None, device: str = "cpu", grad_sample_mode: str = "bookkeeping",
                 seed: int = 0, noise_multiplicity: int = 2, fault: str | None = None) -> SelfcheckMethod:
    result = SelfcheckMethod(method=name)
    try:
        _check(result, _Case(name, options, device, grad_sample_mode, seed, noise_multiplicity, fault))
    except Exception as err:  # a failing check is a result, not a crash
        result.error = f"{type(err).__name__}: {err}"
    return result.finalize(REL_ERR_LIMIT)


def _check(result, case: _Case) -> None:
    n = 6
    trainer = _build(case, torch.float64, _step_config(n, n, 4, case.noise_multiplicity, sigma=1.3, c=1.0),
                     fault=case.fault)
    result.trainable_params = sum(p.numel() for p in trainer.params)
    norms = _check_gradients(result, trainer)
    _check_clipping(result, trainer, norms)
    _check_step_moves(result, trainer)
    _check_noise(result, trainer)
    trainer.finish()

    result.divisor_rel_error = _divisor_check(case)
    result.mixed_precision_max_ratio = _mixed_precision_clip(case)
    result.noise_unpredictable = _noise_is_unpredictable(case)
    result.sampling_unpredictable = _sampling_is_unpredictable(case)


def _check_gradients(result, trainer) -> list[float]:
    """(a) every example's gradient from the backend vs an explicit loop on the reference loss, and the
    norms the clipping weights come from (right gradients with wrong norms clip wrongly); returns the
    reference norms."""
    x, y = trainer.images, trainer.labels
    t, noise, lab = trainer.draw_diffusion_inputs(y)
    engine = engine_per_example_gradients(trainer, x, t, noise, lab)
    worst = 0.0
    norms = []
    with _without_backend_hooks(trainer):
        for i in range(len(x)):
            ref = _reference_gradient(trainer, x[i:i + 1], t[i], noise[i], lab[i])
            flat_ref = _flat(ref)
            norms.append(float(flat_ref.norm()))
            err = float((_flat(engine[i]) - flat_ref).norm() / flat_ref.norm().clamp_min(1e-300))
            worst = max(worst, err)
            for (pname, _), r, g in zip(trainer.named_params, ref, engine[i]):  # name the culprit
                if float((g.to(torch.float64) - r).norm() / flat_ref.norm()) > REL_ERR_LIMIT and pname not in result.details:
                    result.details.append(pname)
    reference_norms = torch.tensor(norms, dtype=torch.float64)
    norm_error = float(((engine_norms(trainer, x, t, noise, lab).cpu() - reference_norms).abs() / reference_norms).max())
    if norm_error > REL_ERR_LIMIT:
        result.details.append("per-example norms")
    result.max_rel_error = max(worst, norm_error)
    return norms


def _check_clipping(result, trainer, norms: list[float]) -> None:
    """(c) clipping in float64, with C inside the spread of norms so both branches are exercised."""
    c = float(torch.tensor(norms).median())
    trainer.clipper.max_grad_norm = c
    weights = trainer.clipper.weights(torch.tensor(norms, dtype=torch.float64))
    contributions = weights * torch.tensor(norms, dtype=torch.float64)
    big = torch.tensor(norms) > c
    result.clip_ok = bool((contributions <= c * (1 + CLIP_SLACK)).all()
                          and torch.allclose(contributions[big], torch.full_like(contributions[big], c), rtol=1e-9))
    result.max_clipped_norm_ratio = float(contributions.max() / c)
    trainer.clipper.max_grad_norm = 1.0


def _check_step_moves(result, trainer) -> None:
    """(b) one full DP step: every trainable parameter moves, no frozen one does."""
    before = {key: v.detach().clone() for key, v in trainer.model.named_parameters()}
    trainer.train_step()
    changed = {key: not torch.equal(before[key], v) for key, v in trainer.model.named_parameters()}
    trainable = {key for key, v in trainer.model.named_parameters() if v.requires_grad}
    result.trainable_changed = all(changed[key] for key in trainable)
    result.frozen_unchanged = not any(changed[key] for key in changed if key not in trainable)


def _check_noise(result, trainer) -> None:
    """(e) noise of a noise-only step (empty Poisson batch): std σ·C, mean 0."""
    draws, empty = [], torch.empty(0, dtype=torch.long)
    while sum(d.numel() for d in draws) < 200_000:
        draws.append(_flat(trainer.compute_step_gradient(empty)) * trainer.config.expected_batch_size)
    values = torch.cat(draws)
    target = trainer.config.noise_multiplier * trainer.clipper.sensitivity
    m = values.numel()
    result.noise_std_ratio = float(values.std() / target)
    # consecutive steps must draw independent noise: their correlation is ~N(0, 1/n) when they do
    first, second = draws[0], draws[1]
    correlation = float(torch.corrcoef(torch.stack([first, second]))[0, 1])
    result.noise_ok = bool(abs(result.noise_std_ratio - 1) < 5 / math.sqrt(2 * m)
                           and abs(float(values.mean())) < 5 * target / math.sqrt(m)
                           and abs(correlation) < 5 / math.sqrt(len(first)))


def _divisor_check(case: _Case) -> float:
    """(d): a noise-free step on a Poisson batch of realised size ≠ expected, against the definition."""
    n, expected = 8, 4
    trainer = _build(case, torch.float64, _step_config(n, expected, 3, case.noise_multiplicity, sigma=0.0, c=1.0),
                     fault=case.fault)
    for _ in range(100):  # a deterministic search for a batch whose size is not the expected one
        sampling, diffusion = trainer.sampling_gen.get_state(), trainer.diffusion_gen.get_state()
        indices = trainer.sample_logical_batch()
        if len(indices) not in (0, expected):
            break
    else:
        raise RuntimeError("no Poisson batch of realised size ≠ expected in 100 draws")
    trainer.sampling_gen.set_state(sampling)
    trainer.diffusion_gen.set_state(diffusion)
    indices = trainer.sample_logical_batch()
    engine = _flat(trainer.compute_step_gradient(indices))
    trainer.diffusion_gen.set_state(diffusion)  # the same draws again, for the reference
    t, noise, lab = trainer.draw_diffusion_inputs(trainer.labels[indices])
    total = torch.zeros_like(engine)
    with _without_backend_hooks(trainer):
        for j, i in enumerate(indices.tolist()):
            g = _flat(_reference_gradient(trainer, trainer.images[i:i + 1], t[j], noise[j], lab[j]))
            total += g * min(1.0, 1.0 / float(g.norm()))
    reference = total / expected
    trainer.finish()
    return float((engine - reference).norm() / reference.norm())


def _mixed_precision_clip(case: _Case) -> float:
    """(c) under bf16 autocast: the largest ‖w_i·g_i‖ / C over examples, with g_i as the backend saw it."""
    n = 6
    trainer = _build(case, torch.float32, _step_config(n, n, n, case.noise_multiplicity, sigma=1.0, c=1.0),
                     mixed_precision="bf16")
    if trainer.autocast_dtype is None:
        raise RuntimeError("bf16 autocast is not available on this device")
    x, y = trainer.images, trainer.labels
    t, noise, lab = trainer.draw_diffusion_inputs(y)
    grads = engine_per_example_gradients(trainer, x, t, noise, lab)
    norms64 = torch.stack([_flat(g).norm() for g in grads])
    # C in the middle of the norms: about half the examples are clipped, where rounding would show
    c = float(norms64.median())
    trainer.clipper.max_grad_norm = c
    _, norms, _ = trainer.backend.weighted_sum(lambda: trainer.example_losses(x, t, noise, lab), trainer.clipper.weights)
    weights = trainer.clipper.weights(norms).to(torch.float64)
    trainer.finish()
    if norms.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"per-example norms came back in {norms.dtype}, not fp32")
    return float((weights * norms64).max() / c)


def _noise_is_unpredictable(case: _Case) -> bool:
    """Same seed, default settings: different noise. Same seed, reproducible noise: the same noise."""
    def noise_of(reproducible: bool) -> torch.Tensor:
        trainer = _build(case, torch.float64, _step_config(4, 2, 2, 1, sigma=1.0, c=1.0), reproducible=reproducible)
        out = _flat(trainer.compute_step_gradient(torch.empty(0, dtype=torch.long)))
        trainer.finish()
        return out

    return bool(not torch.equal(noise_of(False), noise_of(False)) and torch.equal(noise_of(True), noise_of(True)))


def _sampling_is_unpredictable(case: _Case) -> bool:
    """Same seed, default settings: different Poisson batches (who is sampled is secret: amplification by
    subsampling assumes it). Same seed, reproducible: the same batches."""
    def batches_of(reproducible: bool) -> list[list[int]]:
        trainer = _build(case, torch.float64, _step_config(32, 16, 16, 1, sigma=1.0, c=1.0),
                         reproducible=reproducible)
        out = [trainer.sample_logical_batch().tolist() for _ in range(8)]  # 256 coins: equal by chance ~2^-256
        trainer.finish()
        return out

    return bool(batches_of(False) != batches_of(False) and batches_of(True) == batches_of(True))


def run_selfcheck(methods: list[str] | None = None, device: str = "cpu", grad_sample_mode: str = "bookkeeping",
                  fault: str | None = None) -> SelfcheckReport:
    from dpbench.provenance import provenance
    from dpbench.registry import METHODS

    names = methods or METHODS.names()
    for name in names:
        METHODS.check(name, "--method")
    checks = [check_method(name, device=device, grad_sample_mode=grad_sample_mode, fault=fault) for name in names]
    return SelfcheckReport(passed=all(c.passed for c in checks), grad_sample_mode=grad_sample_mode, fault=fault,
                           rel_error_limit=REL_ERR_LIMIT, methods=checks, **provenance(device))


def format_selfcheck(report: SelfcheckReport) -> str:
    def ok(flag) -> str:
        return "yes" if flag else "NO"

    head = (f"{'method':<10} {'trainable':>10} {'max rel err':>12} {'moved':>6} {'frozen ok':>9} {'clip':>5} "
            f"{'bf16 clip':>10} {'divisor err':>11} {'noise σ ratio':>13} {'OS noise':>8} {'OS sampling':>11}  result")
    lines = [head, "-" * len(head)]
    for c in report.methods:
        lines.append(
            f"{c.method:<10} {c.trainable_params:>10} {c.max_rel_error:>12.2e} {ok(c.trainable_changed):>6} "
            f"{ok(c.frozen_unchanged):>9} {ok(c.clip_ok):>5} {c.mixed_precision_max_ratio:>10.7f} "
            f"{c.divisor_rel_error:>11.2e} {c.noise_std_ratio:>13.4f} {ok(c.noise_unpredictable):>8} "
            f"{ok(c.sampling_unpredictable):>11}  "
            + ("pass" if c.passed else "FAIL" + (f" ({c.error})" if c.error else "")
               + (f" wrong per-sample grads: {', '.join(c.details[:4])}" if c.details else ""))
        )
    what = f"{report.device}, {report.grad_sample_mode}" + (f", fault {report.fault}" if report.fault else "")
    lines.append(f"selfcheck {'passed' if report.passed else 'FAILED'} ({what})")
    return "\n".join(lines)

