"""Record/replay sensitivity check (cf. "Re:cord-play"): one record's effect on each released step.

At every step where a chosen record is in the Poisson batch, the trainer's own
:meth:`~dpbench.engine.trainer.DPTrainer.compute_step_gradient` runs twice at the same parameters:
once as the run itself (with the record) and once on the batch without it, replaying the run's
recorded randomness — the diffusion draws of every other example (the removed example's row is
dropped from the recorded draws, so nobody else's timestep or noise shifts), the DP noise (the noise
generator's state), and the clipping rule's state. The two released gradients may differ only by the
record's clipped contribution divided by the expected batch size B, so

    B · ‖r_with − r_without‖ ≤ S·(1 + 1e-6) + rounding,

with S the clipping rule's sensitivity at that step (C; 1 under automatic clipping). ``rounding``
bounds float arithmetic only: both sides add the same noise vector to slightly different sums, in the
accumulation dtype (fp32 for fp32 models), and the batch is chunked differently without the record, so
each coordinate can differ by a few units in the last place of its magnitude:
``rounding = 8·u·B·(‖r_with‖ + ‖r_without‖)`` with u the dtype's machine epsilon (≈ 16·u·σ·S·√D:
8e-4·S at σ = 1 on D = 180k parameters). A loop that does not clip exceeds the bound by the canary's
norm multiple (10×); one that divides by the realised batch size |B| rescales the whole noised sum,
which moves by ≈ ‖noise + sum‖/|B| ≈ σ·S·√D/|B| (1.5–5× S on the quickstart's models).

After the check the generators and the clipper are put back into their post-step state, so the run
continues exactly as it would have without the check. The chosen records: one real example (chosen
by seed) at every step that samples it, and a sampled canary at the first three steps that sample
any (its gradient norm is 10·S, so the clipping rule must act on it).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

import torch

SLACK = 1e-6
ROUNDING_ULPS = 8.0


@dataclass
class ReplayRecord:
    step: int
    record: str  # "example <i>" or "canary <j>"
    difference: float  # B · ‖r_with − r_without‖
    bound: float  # S·(1 + 1e-6) + rounding
    sensitivity: float
    rounding: float

    @property
    def ok(self) -> bool:
        return self.difference <= self.bound


def _max_ratio(records: list[ReplayRecord]) -> Optional[float]:
    """The largest B·Δ/S among ``records`` (None when there are none)."""
    return max((r.difference / r.sensitivity for r in records), default=None)


@dataclass
class ReplayCheck:
    """Wraps one trainer's ``compute_step_gradient`` (an instance attribute: fault subclasses keep their semantics).

    Records removed: every real example of ``examples`` at every step that samples it, and, at the
    first ``canary_checks`` steps that sample any canary, the sampled canary of lowest position.
    """

    trainer: object
    examples: list[int]  # real examples, indices into the private images
    canary_checks: int = 3
    records: list[ReplayRecord] = field(default_factory=list)
    _original: Optional[object] = None
    _canary_steps: int = 0

    def attach(self) -> "ReplayCheck":
        if self._original is not None:
            raise RuntimeError("replay check already attached")
        self._original = self.trainer.compute_step_gradient
        self.trainer.compute_step_gradient = self._step
        return self

    def detach(self) -> None:
        if self._original is not None:
            del self.trainer.compute_step_gradient
            self._original = None

    def _chosen(self, indices: torch.Tensor) -> list[tuple[int, str]]:
        n = len(self.trainer.images)
        out = [(int(i), f"example {int(i)}") for i in self.examples if bool((indices == int(i)).any())]
        sampled_canaries = indices[indices >= n]
        if len(sampled_canaries) and self._canary_steps < self.canary_checks:
            self._canary_steps += 1
            pos = int(sampled_canaries.min())
            included = getattr(self.trainer.canaries, "included", None)
            out.append((pos, f"canary {int(included[pos - n]) if included is not None else pos - n}"))
        return out

    @property
    def checked_steps(self) -> int:
        return len({r.step for r in self.records})

    @property
    def passed(self) -> bool:
        return all(r.ok for r in self.records)

    @property
    def max_ratio(self) -> Optional[float]:
        return _max_ratio(self.records)

    def summary(self) -> dict:
        """What ``audit.json`` keeps. Removing a real example moves the step by exactly that example's
        clipped gradient (the DP noise cancels): under automatic clipping ‖g‖/(‖g‖ + γ) gives ‖g‖ away — a
        statistic of private data outside the mechanism. So while the check holds, the numbers written
        are the canaries' (public directions) and the real examples count only as checks passed; a failed
        check (no DP claim stands) keeps every number as its bug report."""
        shown = self.records if not self.passed else [r for r in self.records if r.record.startswith("canary")]
        worst = max(shown, key=lambda r: r.difference / r.bound, default=None)
        return {
            "passed": self.passed,
            "examples": [int(i) for i in self.examples],
            "canary_checks": sum(r.record.startswith("canary") for r in self.records),
            "example_checks": sum(r.record.startswith("example") for r in self.records),
            "checks": len(self.records),
            "steps_checked": self.checked_steps,
            "max_difference_over_sensitivity": _max_ratio(shown),
            "worst": None if worst is None else {
                "step": worst.step, "record": worst.record, "difference": worst.difference, "bound": worst.bound,
                "sensitivity": worst.sensitivity, "rounding": worst.rounding},
            "failures": [{"step": r.step, "record": r.record, "difference": r.difference, "bound": r.bound}
                         for r in self.records if not r.ok][:20],
        }

    # ------------------------------------------------------------------------------------------
    def _snapshot(self) -> dict:
        tr = self.trainer
        return {"diffusion": tr.diffusion_gen.get_state(), "noise": tr.noise_gen.get_state(),
                "clipper": copy.deepcopy(tr.clipper.__dict__), "losses": len(tr.stats.losses),
                "canary_calls": list(getattr(tr.canaries, "calls", ()))}

    def _restore(self, state: dict) -> None:
        tr = self.trainer
        tr.diffusion_gen.set_state(state["diffusion"])
        tr.noise_gen.set_state(state["noise"])
        tr.clipper.__dict__.update(copy.deepcopy(state["clipper"]))
        del tr.stats.losses[state["losses"]:]
        if hasattr(tr.canaries, "calls"):  # the replay's extra passes are not sampling events
            tr.canaries.calls[:] = state["canary_calls"]

    def _step(self, indices: torch.Tensor) -> list[torch.Tensor]:
        tr = self.trainer
        chosen = self._chosen(indices)
        if not chosen:
            return self._original(indices)
        before = self._snapshot()
        sensitivity = float(tr.clipper.sensitivity)
        recorded = {}
        draw = tr.draw_diffusion_inputs

        def recording_draw(labels):
            recorded["draws"] = draw(labels)
            return recorded["draws"]

        with _instance_override(tr, "draw_diffusion_inputs", recording_draw):
            released = self._original(indices)
        after = self._snapshot()
        n = len(tr.images)
        real = indices[indices < n]
        divisor = float(tr.config.expected_batch_size)
        for pos, label in chosen:
            self._restore(before)
            keep_row = real != pos

            def replayed_draw(labels, keep_row=keep_row):
                return tuple(d[keep_row] for d in recorded["draws"])

            with _instance_override(tr, "draw_diffusion_inputs", replayed_draw):
                without = self._original(indices[indices != pos])
            diff = torch.sqrt(sum(((a.double() - b.double()) ** 2).sum() for a, b in zip(released, without)))
            size = torch.sqrt(sum((a.double() ** 2).sum() for a in released)) + \
                torch.sqrt(sum((b.double() ** 2).sum() for b in without))
            eps = torch.finfo(released[0].dtype).eps
            rounding = float(ROUNDING_ULPS * eps * divisor * size)
            self.records.append(ReplayRecord(step=tr.step, record=label, difference=float(diff) * divisor,
                                             bound=sensitivity * (1 + SLACK) + rounding, sensitivity=sensitivity,
                                             rounding=rounding))
        self._restore(after)
        return released


@contextmanager
def _instance_override(obj, name: str, value):
    """Set an attribute on one instance for the duration, then put back whatever was there."""
    missing = object()
    previous = obj.__dict__.get(name, missing)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if previous is missing:
            delattr(obj, name)
        else:
            setattr(obj, name, previous)
