"""Book-keeping (BK) per-example clipping: one forward, one output-gradient backward, no per-sample hooks.

After Bu et al., "Differentially Private Optimization on Large Model at Small Cost" (fastDP), written
from scratch on plain module hooks. :meth:`BookKeepingClipper.weighted_sum` does, for a batch of b
examples:

1. one forward (the caller's ``loss_fn``), forward hooks on every module that directly owns a trainable
   parameter recording the module's input (where a weight trains) and a gradient hook on its output;
2. one ``torch.autograd.grad`` of the summed per-example losses with respect to one small trainable
   parameter per layer (a bias where there is one) — no weight gradient is formed and no ``.grad``
   written (a convolution's backward, which on CPU forms the weight gradient even when autograd does
   not ask for it, is swapped for one that does not: ``_ConvWithoutWeightGradient``) — during which the
   output hooks receive each layer's output gradients;
3. per layer, as soon as its output gradients are in (still inside the backward), each example's squared
   gradient norm, from the *ghost norm* or from the *instantiated* per-example gradient (per layer type, by its rule); an
   instantiated layer then drops its input and output gradients, so the backward frees memory as a
   non-private one does (only ghost layers keep theirs, for step 5); the norms are summed over layers;
4. weights w = ``weights_fn(norms)`` (clipping factors min(1, C/‖g_i‖), say);
5. per layer one weighted contraction giving Σ_i w_i g_i: ghost layers contract the recorded inputs
   with the w-weighted output gradients (a GEMM, ``conv2d_weight``, ``index_add``), instantiated
   layers contract w with the per-example gradients they already hold (``w @ G``).

The per-layer rules live in :mod:`dpbench.engine.bookkeeping_layers` (positions, the ghost-or-instantiate
choice and its cost model; Linear, GroupNorm/LayerNorm, Embedding) and :mod:`dpbench.engine.bookkeeping_conv`
(Conv2d); modules with no rule go to the generic per-example path (:mod:`dpbench.engine.generic`).
This module is the driver: the hooks, the one backward, the coverage check and the weighted sums.

Precision: all norm, weight and sum arithmetic runs in float32, or float64 when the parameters are
float64 — activations and output gradients recorded under bf16 autocast are cast first, and autocast
is switched off for this arithmetic. Norms and sums come from the same cast tensors, so the clipped
contribution of each example is bounded by what its norm says, up to float32 rounding. (A layer's
input is taken as the module received it, before autocast rounds it to bf16 for the matmul: the
gradient differs from autograd's by that rounding, and is the one both norm and sum use.)
"""

from __future__ import annotations

import weakref
from typing import Callable, Literal, Optional, Sequence

import torch
import torch.nn as nn

from dpbench.engine.bookkeeping_conv import _Conv2dLayer
from dpbench.engine.bookkeeping_layers import (RULES, Rule, _Call, _EmbeddingLayer, _GroupNormLayer, _Layer,
                                               _LayerNormLayer, _LinearLayer)
from dpbench.engine.generic import GenericLayer, find_units

Path = Literal["auto", "ghost", "instantiate"]


# Exact types: a subclass may compute its output differently (or use its weight outside its own call).
_LAYER_TYPES: dict[type, type[_Layer]] = {
    nn.Linear: _LinearLayer,
    nn.Conv2d: _Conv2dLayer,
    nn.GroupNorm: _GroupNormLayer,
    nn.LayerNorm: _LayerNormLayer,
    nn.Embedding: _EmbeddingLayer,
}


class BookKeepingClipper:
    """Per-example gradient norms and weighted gradient sums of ``params`` by book-keeping (module docstring).

    ``params``: the trainable parameters in the caller's order (the sums come back in that order); forward
    hooks go on the modules that own them directly, and record only inside :meth:`weighted_sum`.
    ``rows_per_example``: K, the consecutive batch rows that make one example. ``path`` forces the ghost or
    the instantiated per-example norm wherever a layer type offers both (for testing); ``"auto"`` chooses
    per layer by ``rule``: ``"memory"`` (the default) or ``"time"`` (:mod:`dpbench.engine.bookkeeping_layers`).
    """

    def __init__(self, model: nn.Module, params: list[nn.Parameter], rows_per_example: int = 1, *,
                 path: Path = "auto", rule: Rule = "memory"):
        if rows_per_example < 1:
            raise ValueError(f"rows_per_example must be ≥ 1, not {rows_per_example}")
        if path not in ("auto", "ghost", "instantiate"):
            raise ValueError(f"path must be 'auto', 'ghost' or 'instantiate', not {path!r}")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, not {rule!r}")
        self.rows_per_example, self.path, self.rule = rows_per_example, path, rule
        position = {id(p): i for i, p in enumerate(params)}
        self._slots: list[Optional[tuple[_Layer, str]]] = [None] * len(params)
        self._layers: list[_Layer] = []
        # modules book-keeping has no rule for go to the generic per-example path (dpbench/engine/generic.py)
        for name, module, owned in find_units(model, params, _LAYER_TYPES):
            layer = GenericLayer(name, module, owned)
            for attr in owned:
                slot = position[id(module.get_parameter(attr))]
                if self._slots[slot] is not None:
                    raise NotImplementedError(f"parameter {name}.{attr} is shared with another module")
                self._slots[slot] = (layer, attr)
            self._layers.append(layer)
        claimed = {id(p) for layer in self._layers for p in layer.module.parameters()}
        for name, module in model.named_modules():
            owned = [(attr, p) for attr, p in module.named_parameters(recurse=False)
                     if id(p) in position and id(p) not in claimed]
            if not owned:
                continue
            layer_type = _LAYER_TYPES.get(type(module))
            if layer_type is None:
                raise NotImplementedError(f"book-keeping clipping does not support {type(module).__name__} "
                                          f"(module {name!r}, trainable {[attr for attr, _ in owned]})")
            layer = layer_type(name, module, [attr for attr, _ in owned])
            for attr, p in owned:
                if self._slots[position[id(p)]] is not None:
                    raise NotImplementedError(f"parameter {name}.{attr} is shared with another module")
                self._slots[position[id(p)]] = (layer, attr)
            self._layers.append(layer)
        missing = [i for i, slot in enumerate(self._slots) if slot is None]
        if missing:
            raise ValueError(f"parameters at positions {missing} are not owned by any module of the model")
        self.norm_dtype = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
        names = {id(p): name for name, p in model.named_parameters()}
        self._params, self._names = params, [names.get(id(p), f"#{i}") for i, p in enumerate(params)]
        self._coverage_checked = False  # on the first call (dpbench/engine/coverage.py)
        self._recording = False
        self._handles = [layer.module.register_forward_hook(self._hook(layer), with_kwargs=True)
                         for layer in self._layers]
        self._gradient_hooks: list = []  # on the recorded outputs, for one call of weighted_sum
        self._pending: dict[_Layer, int] = {}  # the layers whose outputs' gradients have not all arrived
        self._finish: Optional[Callable[[_Layer], None]] = None

    def _hook(self, layer: _Layer):
        def record(module, inputs, kwargs, output):
            if self._recording and torch.is_grad_enabled():
                call = layer.record(inputs, kwargs, output)
                if output.requires_grad:
                    self._gradient_hooks.append(output.register_hook(lambda grad: self._arrived(layer, call, grad)))
                    self._pending[layer] = self._pending.get(layer, 0) + 1
        return record

    def _arrived(self, layer: _Layer, call: _Call, grad: torch.Tensor) -> None:
        """An output's gradient, in the backward: a layer is finished once all its outputs' gradients are in,
        so that an instantiated layer's inputs and output gradients are freed during the backward — as a
        non-private backward frees its saved activations — rather than all held until its end."""
        call.output_grad = grad
        self._pending[layer] -= 1
        if self._pending[layer] == 0 and self._finish is not None:
            del self._pending[layer]
            with torch.autocast(grad.device.type, enabled=False):
                self._finish(layer)

    def weighted_sum(self, loss_fn: Callable[[], torch.Tensor],
                     weights_fn: Callable[[torch.Tensor], torch.Tensor]
                     ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Run ``loss_fn`` (per-example losses [b]); return (Σ_i w_i g_i per parameter, norms ‖g_i‖ [b], losses).

        ``weights_fn`` maps the norms [b] to the weights w [b]. Sums are in float32, or the parameter dtype
        if wider.
        """
        # After the first call's coverage check (which compares with autograd's weight gradients, so needs
        # them formed), modules may skip the batch weight gradient that book-keeping forms per example itself.
        try:
            if self._coverage_checked:
                for layer in self._layers:
                    layer.skip_weight_gradient()
            self._recording = True
            losses = loss_fn()
        except BaseException:
            self.discard()
            raise
        finally:
            self._recording = False
            for layer in self._layers:
                layer.restore_forward()
        try:
            if losses.dim() != 1:
                raise ValueError(f"loss_fn must return per-example losses of shape [b], not {tuple(losses.shape)}")
            with torch.autocast(losses.device.type, enabled=False):
                return self._weighted_sum(losses, weights_fn)
        finally:
            self._forget_gradient_hooks()
            for layer in self._layers:
                layer.calls = []

    def _weighted_sum(self, losses, weights_fn):
        batch = len(losses)
        calls = [(layer, c) for layer in self._layers for c in layer.calls]
        for layer, c in calls:
            changed = c.changed_in_place()
            if changed:
                raise RuntimeError(f"{layer.name}: its {changed} was modified in place after the module ran; "
                                   "book-keeping needs the tensors the module saw and produced")
            if c.rows != batch * self.rows_per_example:
                raise ValueError(f"{layer.name} ran on {c.rows} rows, expected {batch} examples × "
                                 f"{self.rows_per_example} rows")
        path = self.rule if self.path == "auto" else self.path
        layer_norms, layer_sums = {}, {}
        # the first call also asks autograd for every parameter's gradient: the coverage check
        check = not self._coverage_checked
        low = any(t.dtype in (torch.bfloat16, torch.float16) for t in self._recorded_outputs(calls))

        def finish(layer: _Layer) -> None:
            layer.calls = [c for c in layer.calls if c.output_grad is not None]  # unused outputs contribute 0
            if layer.calls:
                layer_norms[layer], layer_sums[layer] = layer.per_example(batch, path)
                if layer.weight_path != "ghost":  # its sums read per-example tensors only: free inputs and gradients
                    for c in layer.calls:
                        c.input = c.output_grad = None
                    layer.calls = []

        autograd_sums = self._backward(losses, finish, self._params if check else []) if self._pending else \
            [None] * (len(self._params) if check else 0)
        for layer in self._layers:
            if layer.calls and layer not in layer_norms:
                finish(layer)
        norms_sq = losses.new_zeros(batch, dtype=self.norm_dtype)
        for layer in self._layers:  # in a fixed order, whatever order the backward reached the layers in
            if layer in layer_norms:
                norms_sq += layer_norms[layer]
        norms = norms_sq.sqrt()
        if check:
            from dpbench.engine.coverage import check_coverage

            check_coverage(self._names, self._sums(layer_sums, torch.ones_like(norms), losses.device),
                           autograd_sums, "low" if low else self.norm_dtype)
            self._coverage_checked = True
        weights = weights_fn(norms)
        if weights.shape != (batch,):
            raise ValueError(f"weights_fn must return weights of shape [{batch}], not {tuple(weights.shape)}")
        return self._sums(layer_sums, weights, losses.device), norms, losses.detach()

    def _sums(self, layer_sums, weights: torch.Tensor, device) -> list[torch.Tensor]:
        sums = []
        for layer, attr in self._slots:
            if layer in layer_sums:
                sums.append(layer_sums[layer][attr](weights.to(layer.dtype)))
            else:  # the module did not run, or its output did not reach the loss
                sums.append(torch.zeros(layer.shape(attr), dtype=layer.dtype, device=device))
        return sums

    def _backward(self, losses: torch.Tensor, finish: Callable[[_Layer], None], checked: Sequence[torch.Tensor]
                  ) -> list[Optional[torch.Tensor]]:
        """The one backward; :meth:`_arrived` finishes each layer as its outputs' gradients come in. Asking
        autograd for the outputs' gradients would keep every one of them until the end (bias-only DP took
        1.9× the non-private memory that way); it is asked instead for one small trainable parameter per
        layer (a bias where there is one), whose gradient needs the gradient of each of the layer's outputs —
        and for the parameters in ``checked`` (the coverage check), whose gradients it returns."""
        anchors = [min((layer.module.get_parameter(attr) for attr in layer.trainable), key=lambda p: p.numel())
                   for layer in self._pending]
        self._finish = finish
        try:
            grads = torch.autograd.grad(losses.sum(), [*anchors, *checked], allow_unused=True)
        finally:
            self._finish = None
        return list(grads[len(anchors):])

    @staticmethod
    def _recorded_outputs(calls) -> list[torch.Tensor]:
        outputs = [c.output() if isinstance(c.output, weakref.ref) else c.output for _, c in calls]
        return [o for o in outputs if o is not None]

    def _forget_gradient_hooks(self) -> None:
        for handle in self._gradient_hooks:
            handle.remove()
        self._gradient_hooks, self._pending = [], {}

    @property
    def weight_paths(self) -> dict[str, str]:
        """How each module's trainable weight got its per-example norms in the last call: "ghost" or "instantiate"."""
        return {layer.name: layer.weight_path for layer in self._layers if layer.weight_path is not None}

    def discard(self) -> None:
        """Forget what a call that failed part-way (out of memory) recorded, so the chunk can be redone."""
        self._forget_gradient_hooks()
        for layer in self._layers:
            layer.calls = []

    def per_example_bytes(self) -> int:
        """Bytes of one example's instantiated gradients (the layers whose last call instantiated them;
        before any call, every layer): what the per-example state costs per row of a physical batch."""
        total = 0
        for layer in self._layers:
            if layer.weight_path != "ghost":
                total += sum(layer.shape(attr).numel() for attr in layer.trainable) * torch.finfo(self.norm_dtype).bits // 8
        return total

    def held_bytes(self) -> int:
        """Bytes this clipper keeps between steps: the per-example gradient workspaces (see
        :meth:`_Layer.workspace`) — memory a user pays for training, not only during a step."""
        return sum(layer._workspace.nbytes for layer in self._layers if layer._workspace is not None)

    def remove(self) -> None:
        """Remove every hook; the clipper cannot be used afterwards."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for layer in self._layers:
            layer.release_workspace()
