"""Per-example clipping rules as the DP loop applies them, and the quantile rule's private state.

All arithmetic is float32 or wider whatever dtype the per-example gradients came in (bf16 autocast
rounds norms by up to 0.4%, enough to let a "clipped" contribution exceed C): the norms handed in
are promoted here, and the weights handed back are fp32/fp64.
"""

from __future__ import annotations

import math

import torch

from dpbench.privacy.accounting import ClippingRule


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32, or the parameter dtype where it is wider (float64 in the selfcheck)."""
    return torch.promote_types(dtype, torch.float32)


class Clipper:
    """Turns per-example gradient norms into weights w_i (the contribution is w_i·g_i, ‖w_i·g_i‖ ≤ sensitivity).

    For the quantile rule it also runs the clipped-count query: per step, the number of unclipped
    examples (shifted by ½ each, sensitivity ½) plus N(0, σ_b²), divided by the expected batch size,
    moves C geometrically toward the target quantile. Only that noisy count is kept (for the
    diagnostics), never the raw count.
    """

    def __init__(self, rule: ClippingRule, expected_batch_size: int):
        self.rule = rule
        self.expected_batch_size = expected_batch_size
        self.max_grad_norm = rule.max_grad_norm
        self._unclipped = 0.0
        self._examples = 0
        self.noisy_unclipped_fractions: list[float] = []
        self.max_grad_norms: list[float] = []  # quantile rule: C after each step (post-processing of the counts)

    @property
    def sensitivity(self) -> float:
        return 1.0 if self.rule.mode == "auto" else self.max_grad_norm

    def weights(self, norms: torch.Tensor) -> torch.Tensor:
        norms = norms.to(accumulation_dtype(norms.dtype))
        if self.rule.mode == "auto":
            return 1.0 / (norms + self.rule.auto_gamma)
        if self.rule.mode == "none":
            return torch.ones_like(norms)
        return (self.max_grad_norm / norms.clamp_min(1e-12)).clamp(max=1.0)

    def observe(self, norms: torch.Tensor) -> None:
        """Record this chunk's examples for the clipped-count query (quantile rule only)."""
        if self.rule.mode == "quantile":
            self._unclipped += float((norms.to(torch.float64) <= self.max_grad_norm).sum())
            self._examples += len(norms)

    def count_query(self) -> torch.Tensor:
        """This step's shifted count Σ(1[‖g‖≤C] − ½), to be noised once (after any all-reduce)."""
        value = self._unclipped - 0.5 * self._examples
        self._unclipped, self._examples = 0.0, 0
        return torch.tensor([value], dtype=torch.float64)

    def end_step(self, noised_count: float) -> None:
        """Quantile rule: C ← C·exp(−η(b̃ − q*)) with b̃ the privatised unclipped fraction."""
        if self.rule.mode != "quantile":
            return
        fraction = (noised_count + 0.5 * self.expected_batch_size) / self.expected_batch_size
        self.noisy_unclipped_fractions.append(fraction)
        self.max_grad_norm *= math.exp(-self.rule.quantile_lr * (fraction - self.rule.target_quantile))
        self.max_grad_norms.append(self.max_grad_norm)

    def state_dict(self) -> dict:
        return {"max_grad_norm": self.max_grad_norm, "noisy_unclipped_fractions": list(self.noisy_unclipped_fractions),
                "max_grad_norms": list(self.max_grad_norms)}

    def load_state_dict(self, state: dict) -> None:
        self.max_grad_norm = float(state["max_grad_norm"])
        self.noisy_unclipped_fractions = [float(v) for v in state["noisy_unclipped_fractions"]]
        self.max_grad_norms = [float(v) for v in state.get("max_grad_norms", [])]  # absent in older checkpoints
