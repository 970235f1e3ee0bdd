"""Does clipping act, and does the signal survive the noise? Answered without touching private data.

Raw per-example norms of private data are a statistic the mechanism never released, so dpbench never
records them. Two leak-free sources instead:

- ``public_data``: per-example gradient norms of the prepared model (the private run's starting point)
  on a fixed batch of *public* images, before training — the fraction below C, the median norm, and
  a signal-to-noise estimate ‖mean clipped gradient‖ / ‖noise on the averaged step‖ with the noise's
  norm σ·S·√P / B (S the clipping rule's sensitivity, P trainable parameters, B the expected batch);
- ``private_count_query``: under quantile clipping, the mechanism's own noisy unclipped fractions
  (their privacy cost is part of the budget), averaged over the last steps.
"""

from __future__ import annotations

import math

import torch

from dpbench.results import ClippingDiagnostics

BARELY_CLIPS = 0.9  # at least this fraction of examples below C: clipping barely acts
LOW_SNR = 0.1


def public_clipping_diagnostics(trainer, images: torch.Tensor, labels: torch.Tensor) -> ClippingDiagnostics:
    """Measure on public images with the trainer's own backend and clipping rule (no step is taken)."""
    images, labels = images.to(trainer.device, trainer.dtype), labels.to(trainer.device)
    state = trainer.diffusion_gen.get_state()  # leave the run's own draws untouched
    t, noise, rows = trainer.draw_diffusion_inputs(labels)
    trainer.diffusion_gen.set_state(state)
    sums, norms, _ = trainer.backend.weighted_sum(lambda: trainer.example_losses(images, t, noise, rows),
                                                  trainer.clipper.weights)
    mean_clipped = math.sqrt(sum(float(s.double().pow(2).sum()) for s in sums)) / len(images)
    params = sum(p.numel() for p in trainer.params)
    step = trainer.config
    noise_norm = step.noise_multiplier * trainer.clipper.sensitivity * math.sqrt(params) / step.expected_batch_size
    rule = step.clipping.mode
    unclipped = None if rule == "auto" else float((norms <= trainer.clipper.max_grad_norm).double().mean())
    return _with_warning(ClippingDiagnostics(
        source="public_data", unclipped_fraction=unclipped, median_gradient_norm=float(norms.median()),
        signal_to_noise=mean_clipped / noise_norm if noise_norm > 0 else None))


def private_count_diagnostics(trainer) -> ClippingDiagnostics:
    """Quantile clipping: the mean privatised unclipped fraction over the last tenth of the steps."""
    fractions = trainer.clipper.noisy_unclipped_fractions
    tail = fractions[-max(1, len(fractions) // 10):]
    return _with_warning(ClippingDiagnostics(source="private_count_query",
                                             unclipped_fraction=sum(tail) / len(tail) if tail else None))


def _with_warning(diag: ClippingDiagnostics) -> ClippingDiagnostics:
    warnings = []
    if diag.unclipped_fraction is not None and diag.unclipped_fraction >= BARELY_CLIPS:
        warnings.append(f"clipping barely acts: {diag.unclipped_fraction:.0%} of examples are below C, so the "
                        "noise is sized for gradients far larger than the real ones — lower C or use auto/quantile")
    if diag.signal_to_noise is not None and diag.signal_to_noise < LOW_SNR:
        warnings.append(f"the noise drowns the signal: estimated signal-to-noise {diag.signal_to_noise:.3f} per step "
                        "— raise the expected batch size or ε, or clip tighter")
    diag.warning = "; ".join(warnings) or None
    return diag
