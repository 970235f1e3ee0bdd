"""``dpbench selfcheck``: prove, on the user's own stack, that the DP engine computes what it claims.

On a tiny class-conditional UNet *with attention*, in float64, for every registered method:

(a) per-example gradients from the engine (Opacus hooks + dpbench's registered fixes, or functorch)
    equal an explicit per-example autograd loop — max relative error ≤ 1e-6;
(b) one DP step changes every trainable parameter and no frozen one;
(c) every example's clipped contribution has norm ≤ C (and examples above C are scaled to C);
(d) the noise of a noise-only (empty Poisson batch) step has mean 0 and standard deviation σ·C
    (a 5-standard-error test on ≥ 200k draws, seeded, so it does not flake).

These catch library regressions of the kind met while building dpbench: silently wrong conv
per-sample gradients on channels_last inputs (Opacus 1.6 + diffusers attention), adapters that never
train (peft + Opacus, opacus#820), and sensitivity mistakes with noise multiplicity.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from dpbench.engine.trainer import DPTrainer, OptimSettings, prepare_model
from dpbench.privacy.accounting import PrivacyPlan
from dpbench.provenance import library_versions

REL_ERR_LIMIT = 1e-6


@dataclass
class MethodCheck:
    method: str
    trainable_params: int = 0
    max_rel_error: float = math.nan
    trainable_changed: bool = False
    frozen_unchanged: bool = False
    clip_ok: bool = False
    noise_std_ratio: float = math.nan
    noise_ok: bool = False
    error: str | None = None
    passed: bool = False
    details: list = field(default_factory=list)

    def finalize(self) -> "MethodCheck":
        self.passed = (self.error is None and self.max_rel_error <= REL_ERR_LIMIT and self.trainable_changed
                       and self.frozen_unchanged and self.clip_ok and self.noise_ok)
        return self


def _tiny_model(num_classes: int, seed: int):
    from dpbench.models.diffusion import build_unet

    torch.manual_seed(seed)
    return build_unet("tiny", image_size=8, channels=1, num_classes=num_classes)


def check_method(name: str, options: dict | None = None, device: str = "cpu", grad_sample_mode: str = "hooks",
                 seed: int = 0, noise_multiplicity: int = 2) -> MethodCheck:
    from dpbench.models.diffusion import make_noise_scheduler
    from dpbench.registry import METHODS

    result = MethodCheck(method=name)
    try:
        num_classes, n, batch = 3, 6, 6
        method = METHODS.get(name)(options)
        model = prepare_model(_tiny_model(num_classes, seed), method, num_classes, device, torch.float64)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # zero-initialised adapters (B = 0) would make some gradients vanish
            for p in model.parameters():
                if p.requires_grad and not p.any():
                    p.normal_(0, 0.1, generator=gen)
        images = torch.rand(n, 1, 8, 8, generator=gen, dtype=torch.float64) * 2 - 1
        labels = torch.randint(0, num_classes, (n,), generator=gen)
        plan = PrivacyPlan(epsilon=1.0, delta=1e-5, accountant="rdp", sample_rate=1.0, steps=1,
                           expected_batch_size=batch, noise_multiplier=1.3, max_grad_norm=1.0,
                           noise_multiplicity=noise_multiplicity, physical_batch_size=4, num_examples=n)
        trainer = DPTrainer(model, make_noise_scheduler(), images, labels, plan,
                            OptimSettings(optimizer="sgd", lr=0.1, ema_decay=None, grad_sample_mode=grad_sample_mode,
                                          label_dropout=0.3), seed, device)
        result.trainable_params = sum(p.numel() for p in trainer.params)
        x, y = trainer.images, trainer.labels
        t, noise, lab = trainer.draw_diffusion_inputs(x, y)

        # (a) engine per-example gradients vs an explicit loop with plain autograd
        grads, _ = trainer.per_example_gradients(x, t, noise, lab)
        trainer.hooks.disable_hooks()
        worst = 0.0
        for i in range(n):
            loss = trainer.example_losses(x[i:i + 1], t[i:i + 1], noise[i:i + 1], lab[i:i + 1]).sum()
            ref = torch.autograd.grad(loss, trainer.params)
            flat_ref = torch.cat([r.flatten() for r in ref])
            flat_eng = torch.cat([g[i].flatten() for g in grads])
            err = float((flat_eng - flat_ref).norm() / flat_ref.norm().clamp_min(1e-300))
            worst = max(worst, err)
            # also per parameter tensor, relative to the example's whole gradient, to name the culprit
            for (pname, _), r, g in zip(trainer.named_params, ref, grads):
                e = float((g[i] - r).norm() / flat_ref.norm())
                if e > REL_ERR_LIMIT and pname not in result.details:
                    result.details.append(pname)
        trainer.hooks.enable_hooks()
        result.max_rel_error = worst

        # (c) clipping: choose C inside the spread of norms so that both branches are exercised
        _, norms = trainer.clip(grads)
        object.__setattr__(plan, "max_grad_norm", float(norms.median()))
        factors, norms = trainer.clip(grads)
        clipped = factors * norms
        big = norms > plan.max_grad_norm
        result.clip_ok = bool((clipped <= plan.max_grad_norm * (1 + 1e-9)).all()
                              and torch.allclose(clipped[big], torch.full_like(clipped[big], plan.max_grad_norm), rtol=1e-5))

        # (b) one full DP step: every trainable parameter moves, no frozen one does
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        trainer.train_step()
        changed = {k: not torch.equal(before[k], v) for k, v in model.named_parameters()}
        trainable = {k for k, v in model.named_parameters() if v.requires_grad}
        result.trainable_changed = all(changed[k] for k in trainable)
        result.frozen_unchanged = not any(changed[k] for k in changed if k not in trainable)

        # (d) noise of a noise-only step (empty Poisson batch): std σ·C, mean 0
        draws = []
        empty = torch.empty(0, dtype=torch.long)
        while sum(d.numel() for d in draws) < 200_000:
            step_grads = trainer.compute_step_gradient(empty)
            draws.append(torch.cat([g.flatten() for g in step_grads]) * plan.expected_batch_size)
        values = torch.cat(draws)
        target = plan.noise_multiplier * plan.max_grad_norm
        m = values.numel()
        result.noise_std_ratio = float(values.std() / target)
        result.noise_ok = bool(abs(result.noise_std_ratio - 1) < 5 / math.sqrt(2 * m)
                               and abs(float(values.mean())) < 5 * target / math.sqrt(m))
        trainer.finish()
    except Exception as err:  # a failing check is a result, not a crash
        result.error = f"{type(err).__name__}: {err}"
    return result.finalize()


def run_selfcheck(methods: list[str] | None = None, device: str = "cpu", grad_sample_mode: str = "hooks") -> dict:
    from dpbench.registry import METHODS

    names = methods or METHODS.names()
    for name in names:
        METHODS.check(name)
    checks = [check_method(name, device=device, grad_sample_mode=grad_sample_mode) for name in names]
    return {
        "passed": all(c.passed for c in checks),
        "device": device,
        "grad_sample_mode": grad_sample_mode,
        "rel_error_limit": REL_ERR_LIMIT,
        "versions": library_versions(),
        "methods": [asdict(c) for c in checks],
    }


def format_selfcheck(report: dict) -> str:
    head = f"{'method':<10} {'trainable':>10} {'max rel err':>12} {'moved':>6} {'frozen ok':>9} {'clip':>5} {'noise σ ratio':>13}  result"
    lines = [head, "-" * len(head)]
    for c in report["methods"]:
        ok = lambda b: "yes" if b else "NO"  # noqa: E731
        lines.append(
            f"{c['method']:<10} {c['trainable_params']:>10} {c['max_rel_error']:>12.2e} {ok(c['trainable_changed']):>6} "
            f"{ok(c['frozen_unchanged']):>9} {ok(c['clip_ok']):>5} {c['noise_std_ratio']:>13.4f}  "
            + ("pass" if c["passed"] else "FAIL" + (f" ({c['error']})" if c["error"] else "")
               + (f" wrong per-sample grads: {', '.join(c['details'][:4])}" if c["details"] else ""))
        )
    lines.append(f"selfcheck {'passed' if report['passed'] else 'FAILED'} ({report['device']}, {report['grad_sample_mode']})")
    return "\n".join(lines)
