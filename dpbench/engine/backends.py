"""Per-example clipping backends: how the DP loop gets Σ_i w_i·g_i and the norms ‖g_i‖ for one chunk.

Every backend implements one call, :meth:`ClippingBackend.weighted_sum`: run the forward (``loss_fn``
returns the per-*example* losses), find each example's gradient norm over all trainable parameters,
ask ``weights_fn`` for the weights (the clipping rule, :class:`dpbench.privacy.clipping.Clipper`), and
return the weighted sum. Norms, weights and sums are float32 or wider, whatever the autocast dtype.

- ``bookkeeping`` (the default): dpbench/engine/bookkeeping.py — one forward, one backward of output
  gradients only, per-example norms by ghost norm or an unfold-free per-example gradient chosen per
  layer by memory (default) or by time (``training.bookkeeping_rule``), and the clipped sum as one weighted contraction per layer (Bu et al.'s book-keeping);
- ``hooks`` / ``functorch``: Opacus' grad-sample hooks (with dpbench's registered channels_last conv
  fix, dpbench/privacy/grad_samplers.py) materialise every per-example gradient, B × P (convolutions
  through ``unfold``).

With weights e_i (one-hot) any backend returns example i's own gradient: the selfcheck and the tests
use that to compare every backend with an explicit per-example loop.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn as nn

from dpbench.engine.coverage import check_coverage, low_precision
from dpbench.errors import UserError
from dpbench.privacy import grad_samplers  # noqa: F401  (registers the conv workaround)
from dpbench.privacy.clipping import accumulation_dtype

LossFn = Callable[[], torch.Tensor]
WeightsFn = Callable[[torch.Tensor], torch.Tensor]


class ClippingBackend(Protocol):
    def weighted_sum(self, loss_fn: LossFn, weights_fn: WeightsFn) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """(Σ_i w_i g_i per trainable parameter, norms ‖g_i‖ [b], losses [b] detached)."""

    def discard(self) -> None:
        """Forget what a chunk that failed part-way (out of memory) left behind, so it can be redone."""

    def held_bytes(self) -> int:
        """Bytes the backend keeps from one step to the next (part of what training holds)."""

    def remove(self) -> None:
        """Detach whatever the backend attached to the model."""


class OpacusBackend:
    """Per-example gradients from Opacus' GradSampleHooks (or its functorch mode)."""

    def __init__(self, model: nn.Module, named_params: list[tuple[str, nn.Parameter]], rows_per_example: int,
                 functorch: bool = False):
        from opacus.grad_sample.grad_sample_module import GradSampleHooks

        self.model, self.named_params = model, named_params
        self.rows_per_example = rows_per_example
        self.mode = "functorch" if functorch else "hooks"
        self._refuse_modules_without_a_grad_sampler(model, named_params, GradSampleHooks.GRAD_SAMPLERS)
        self.hooks = GradSampleHooks(model, batch_first=True, loss_reduction="sum", force_functorch=functorch)
        self._coverage_checked = False  # on the first call (dpbench/engine/coverage.py)

    def _refuse_modules_without_a_grad_sampler(self, model, named_params, registry) -> None:
        """Opacus covers the layer types in its grad-sampler registry; peft's raw parameters (IA3 vectors,
        LoHa factors, DoRA magnitudes, OFT rotations, ...) live in modules it never hooks or refuses."""
        from dpbench.engine.generic import find_units

        units = find_units(model, [p for _, p in named_params], set(registry))
        if units:
            name, module, owned = units[0]
            # name a parameter whose own module has no rule (DoRA's magnitude, not the LoRA factors beside it)
            attr = next((a for a in owned if type(module.get_submodule(a.rpartition(".")[0])) not in registry),
                        owned[0])
            owner = module.get_submodule(attr.rpartition(".")[0])
            where = f"{name}.{attr}" if name else attr
            raise UserError(f"parameter {where}: Opacus' {self.mode} engine has no per-sample rule for its module "
                            f"({type(owner).__module__}.{type(owner).__qualname__}) — use training.grad_sample_mode: "
                            "bookkeeping, which covers any module")

    def per_example_gradients(self, loss_fn: LossFn) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One [b, *shape] tensor per trainable parameter (accumulation dtype), and the losses [b]."""
        for _, p in self.named_params:
            p.grad_sample = None
            p.grad = None
        outputs = []
        if not self._coverage_checked:  # whether the forward ran under bf16/fp16 autocast, for the tolerance
            owners = {id(p) for _, p in self.named_params}
            watch = [m for m in self.model.modules() if any(id(p) in owners for p in m.parameters(recurse=False))]
            handles = [m.register_forward_hook(lambda m, i, o: outputs.append(o)) for m in watch]
        try:
            losses = loss_fn()
        finally:
            if not self._coverage_checked:
                for handle in handles:
                    handle.remove()
        losses.sum().backward()
        b, k = len(losses), self.rows_per_example
        grads, summed = [], []
        low = low_precision(o for o in outputs if isinstance(o, torch.Tensor))
        for name, p in self.named_params:
            gs = p.grad_sample
            if gs is None:
                raise UserError(f"parameter {name}: Opacus' {self.mode} engine computed no per-sample gradient for it "
                                "(its module is never called, or Opacus has no rule for it) — use "
                                "training.grad_sample_mode: bookkeeping, which covers any module")
            if isinstance(gs, list):  # parameter used twice in one forward: Opacus keeps one entry per use
                gs = torch.stack(gs).sum(0)
            gs = gs.to(accumulation_dtype(p.dtype))
            # Opacus yields one row per (example, copy); the K copies of one example sum to its gradient.
            grads.append(gs.reshape(b, k, *p.shape).sum(1) if k > 1 else gs.reshape(b, *p.shape))
            summed.append(p.grad)
            p.grad_sample = None
            p.grad = None
        if not self._coverage_checked:
            precision = "low" if low else grads[0].dtype
            check_coverage([n for n, _ in self.named_params], [g.sum(0) for g in grads], summed, precision)
            self._coverage_checked = True
        return grads, losses.detach()

    def weighted_sum(self, loss_fn, weights_fn):
        grads, losses = self.per_example_gradients(loss_fn)
        norms = torch.stack([g.reshape(len(g), -1).norm(2, dim=1) for g in grads], dim=1).norm(2, dim=1)
        weights = weights_fn(norms)
        sums = [torch.einsum("i,i...->...", weights.to(g.dtype), g) for g in grads]
        return sums, norms, losses

    def discard(self) -> None:
        # A forward that stopped part-way leaves captured activations and raised forward counters, with
        # which the next backward would pair the wrong activations or never promote the per-sample
        # gradients; a backward that stopped part-way leaves partial per-sample gradients.
        for module in self.model.modules():
            for attr in ("activations", "max_batch_len"):
                if hasattr(module, attr):
                    delattr(module, attr)
        for _, p in self.named_params:
            p.grad_sample = p.grad = None
            p._forward_counter = 0
            if hasattr(p, "_current_grad_sample"):
                del p._current_grad_sample

    def held_bytes(self) -> int:
        return 0  # per-sample gradients and captured activations are released within each step

    def disable(self) -> None:
        self.hooks.disable_hooks()

    def enable(self) -> None:
        self.hooks.enable_hooks()

    def remove(self) -> None:
        self.hooks.remove_hooks()


def make_backend(mode: str, model: nn.Module, named_params, rows_per_example: int,
                 bookkeeping_rule: str = "memory") -> ClippingBackend:
    if mode == "bookkeeping":
        from dpbench.engine.bookkeeping import BookKeepingClipper

        return BookKeepingClipper(model, [p for _, p in named_params], rows_per_example, rule=bookkeeping_rule)
    if mode in ("hooks", "functorch"):
        return OpacusBackend(model, named_params, rows_per_example, functorch=mode == "functorch")
    raise ValueError(f"unknown grad_sample_mode {mode!r}")
