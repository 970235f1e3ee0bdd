"""Refuse a parameter whose gradient reaches it by a path the per-example engine did not see.

A per-example engine computes each parameter's gradient from what its hooks observed: book-keeping from
the owning layer's calls, Opacus from its grad-sample hooks, the generic path from its unit's forward. A
parameter also used elsewhere — ``self.lin(x) + F.linear(x, self.lin.weight)`` in a parent module —
gets only part of its gradient, and norm and sum stay consistent with each other, so nothing else
notices: the update is silently wrong. On its first chunk each engine therefore compares its
unweighted sum Σ_i g_i with autograd's gradient of the summed loss and refuses the first parameter
that differs.

The outcome is meant to be a property of the model's code, not of the data: with every path seen the
two sums agree up to rounding for any batch, and a missed path of O(1) weight makes them differ for
essentially any batch. Only a missed path whose share sits near the tolerance could make it depend on
the chunk's examples; the run then stops before any update (docs/threat-model.md).
"""

from __future__ import annotations

from typing import Sequence

import torch

from dpbench.errors import UserError

# Relative tolerance per parameter by the precision the forward ran in; a missed path is O(1) (the
# reproduction in the issue was 50%). float64: some tuners compute in float32 inside whatever the
# parameters' dtype (FourierFT's spectrum), so the two sums agree to ~1e-7. bf16 autocast rounds
# activations by 2⁻⁸, and the engine's sums use the module's input before that rounding, autograd's
# the rounded one.
TOLERANCE = {torch.float64: 1e-5, torch.float32: 1e-3, "low": 0.1}


def check_coverage(names: Sequence[str], engine_sums: Sequence[torch.Tensor], autograd_sums: Sequence,
                   precision) -> None:
    """``engine_sums``: the engine's Σ_i g_i per parameter; ``autograd_sums``: autograd's (None = unused).

    ``precision``: the parameters' dtype, or ``"low"`` when the forward ran under bf16/fp16 autocast."""
    tol = TOLERANCE.get(precision, TOLERANCE[torch.float32])
    wants = [torch.zeros_like(e) if a is None else a.to(e.dtype) for e, a in zip(engine_sums, autograd_sums)]
    total = float(torch.sqrt(sum(w.square().sum() for w in wants)))
    for name, got, want in zip(names, engine_sums, wants):
        err, scale = float((got - want).norm()), float(want.norm())
        if err > tol * (scale + 1e-2 * total):
            raise UserError(
                f"parameter {name}: the per-example engine's summed gradient differs from autograd's by "
                f"{err / max(scale, 1e-30):.1%}: its gradient also arrives by a path the engine did not see (a use "
                f"outside the forward of the module that owns it — use it only there, or set "
                f"`dpbench_per_example_unit = True` on the module whose forward makes every use), or the engine "
                f"is wrong for this layer (run `dpbench selfcheck`)")


def low_precision(tensors) -> bool:
    """Whether any of ``tensors`` (a forward's recorded outputs) came out of bf16/fp16 autocast."""
    return any(t.dtype in (torch.bfloat16, torch.float16) for t in tensors)
