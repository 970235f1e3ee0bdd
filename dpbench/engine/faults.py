"""Deliberately broken DP loops: the negative controls of the selfcheck and the audit.

Each fault is a :class:`DPTrainer` subclass that changes one thing the guarantee depends on. A check
that cannot tell these from the real loop proves nothing; ``dpbench selfcheck`` and ``dpbench audit
--inject FAULT`` must flag every one of them. Never used for a real run.
"""

from __future__ import annotations

import torch

from dpbench.engine.trainer import DPTrainer


class LowNoise(DPTrainer):
    """Noise scaled by 0.1: the run spends far more than its ε."""

    def gradient_noise(self, like: torch.Tensor) -> torch.Tensor:
        return 0.1 * super().gradient_noise(like)


class NoClip(DPTrainer):
    """Per-example gradients summed unclipped: unbounded sensitivity."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.clipper.weights = lambda norms: torch.ones_like(norms, dtype=torch.promote_types(norms.dtype, torch.float32))


class RealisedDivisor(DPTrainer):
    """Divides by the realised batch size |B| instead of the expected B: removing one example then
    rescales every other contribution and the noise, so the sensitivity is no longer C/B."""

    def step_divisor(self, indices: torch.Tensor) -> float:
        return float(max(1, len(indices)))


class RepeatedNoise(DPTrainer):
    """The same noise vector every step: it cancels in differences of consecutive updates."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._first_noise: list[torch.Tensor] = []
        self._noise_calls = 0

    def gradient_noise(self, like: torch.Tensor) -> torch.Tensor:
        i = self._noise_calls % len(self.params)  # one call per parameter per step, in order
        self._noise_calls += 1
        if i == len(self._first_noise):
            self._first_noise.append(super().gradient_noise(like))
        return self._first_noise[i].clone()


class _ScaledNormsBackend:
    """Wraps a clipping backend: the clipping rule is handed every per-example norm times ``factor``."""

    def __init__(self, inner, factor: float):
        self.inner, self.factor = inner, factor

    def weighted_sum(self, loss_fn, weights_fn):
        sums, norms, losses = self.inner.weighted_sum(loss_fn, lambda n: weights_fn(self.factor * n))
        return sums, self.factor * norms, losses

    def __getattr__(self, name):  # discard, held_bytes, remove, disable, enable: the real backend's
        return getattr(self.inner, name)


class HalvedNorms(DPTrainer):
    """The engine's per-example norms come out halved (a wrong norm: a ghost-norm or reduction bug): the
    clipping weights double, so an example contributes ≈ 2·S under automatic clipping (up to 2·C under
    fixed C) while the noise is sized for S. Only what goes through the engine is affected: the audit
    sees it with ``--canary-kind engine`` canaries and in the replay check."""

    norm_factor = 0.5

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.backend is not None:
            self.backend = _ScaledNormsBackend(self.backend, self.norm_factor)


class TenthNorms(HalvedNorms):
    """As :class:`HalvedNorms` with norms × 0.1: a contribution of ≈ 10·S, a leak gross enough for the
    bounds to see at the quickstart's ε = 2 — through engine canaries only."""

    norm_factor = 0.1


FAULTS: dict[str, type[DPTrainer]] = {
    "low-noise": LowNoise,
    "no-clip": NoClip,
    "realised-divisor": RealisedDivisor,
    "repeated-noise": RepeatedNoise,
    "halved-norms": HalvedNorms,
    "tenth-norms": TenthNorms,
}


def trainer_class(fault: str | None) -> type[DPTrainer]:
    if fault is None:
        return DPTrainer
    from dpbench.errors import UserError

    if fault not in FAULTS:
        raise UserError(f"--inject {fault!r}: unknown fault — choose one of {', '.join(FAULTS)}")
    return FAULTS[fault]
