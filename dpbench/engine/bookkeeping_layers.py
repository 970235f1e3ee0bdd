"""Book-keeping's per-layer rules (:mod:`dpbench.engine.bookkeeping`): for a hooked module's calls in one
forward and their output gradients, each example's squared gradient norm and the weighted sum Σ_i w_i g_i
of each trainable parameter — for Linear, GroupNorm/LayerNorm and Embedding here, Conv2d in
:mod:`dpbench.engine.bookkeeping_conv`.

Positions. Example i owns rows i·K … i·K+K-1 of the batch (K = ``rows_per_example`` noised copies
built with ``repeat_interleave``). Its gradient for a layer's weight is Σ_s g_s a_sᵀ over all its
*positions* s: the K rows, times each row's tokens (attention projections, inputs [N, T, d]) or output
pixels (convolutions), times every call of the module in the forward. Hence for one example with
position matrices A [S, d_in], G [S, d_out]:

    ghost norm      ‖Gᵀ A‖² = Σ_{s,s'} (a_s·a_s')(g_s·g_s') = Σ (A Aᵀ ⊙ G Gᵀ)   (‖a‖²‖g‖² when S = 1)
    instantiated    Gᵀ A, one [d_out, d_in] matrix per example (a batched matmul)

Which path per layer (``rule``). Instantiating holds b·P per layer until the weights are known (every
instantiated layer at once, and kept between steps as a reused workspace); the ghost norm needs two
[S, S] Gram matrices per example, transiently, one layer at a time. So:

- ``memory`` (the default): the ghost norm where 2·S² < P — fastDP's rule (Bu et al.), with S the
  positions this implementation really forms (a conv's grid counts its spare columns, K rows and every
  call of the module). In diffusers' UNet2DModel that ghosts the wide low-resolution convolutions
  (256 channels at 8×8 and below: 2·(HW)² ≪ C_in·k²·C_out), the time-embedding linears and the class
  embedding, and instantiates convolutions at high resolution and most attention projections.
- ``time``: the cheaper path by the multiply-add model below (the engine's earlier rule).

Cost model (multiply-adds per layer and step; b examples, S positions per example, P weight elements;
for a conv d_in = C_in·k_h·k_w, d_out = C_out and S counts the grid's spare positions):

    ghost        b·S²·(d_in + d_out + 1)    Gram matrices of A and G, their inner product
               + b·S·P                      the weighted contraction for the sum
    instantiate  b·S·P                      the per-example gradients
               + 2·b·P                      their norms and the weighted sum w @ G

The time rule takes the ghost path when it is cheaper: S²·(d_in + d_out + 1) < 2·P. Instantiating costs
the same contraction as the ghost path's weighted sum, done once and reused, so it wins unless S is tiny
(forcing the ghost norm on the attention projections made the attention and LoRA DP steps ~20% slower
on CPU): it ghosts only the time-embedding and ``time_emb_proj`` linears and the class embedding
(S = K), and instantiates attention projections (S = 49…196 tokens) and every convolution, at b·P
memory per layer (what Opacus holds for every layer). Embedding (V rows of width d): ghost
b·S²·(d + 1) vs. instantiate 3·b·V·d; memory 2·S² vs V·d. GroupNorm/LayerNorm weights and all biases
(P ≤ channels) are always instantiated — a per-example [b, C] reduction of g·x̂ or g — since their
ghost norm would cost b·S².
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

# How "auto" chooses between the two (module docstring): the smaller memory or the fewer multiply-adds.
Rule = Literal["memory", "time"]
RULES = ("memory", "time")
# Turns per-example weights [b] into the weighted sum Σ_i w_i g_i of one parameter.
WeightedSum = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class _Call:
    """One call of a hooked module in the current forward."""

    # detached; None where only biases train (their gradients need no input) and once the layer is finished
    input: Optional[torch.Tensor]
    # A weak reference: held, the output would outlive the tensors autograd frees during the backward (a
    # conv output that only a residual addition reads). Its gradient comes from a hook registered on it
    # in the forward, which sees the gradient of the value the module produced.
    output: "weakref.ref[torch.Tensor]"
    rows: int
    # to detect in-place changes after the call, which would make these tensors lie about it
    input_version: int
    output_version: int
    output_grad: Optional[torch.Tensor] = None

    def changed_in_place(self) -> Optional[str]:
        if self.input is not None and self.input._version != self.input_version:
            return "input"
        output = self.output()
        if output is not None and output._version != self.output_version:
            return "output"
        return None


def _total(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """Σ terms without the copy of the first one that Python's sum (0 + t) makes — these can be [b, P]."""
    terms = iter(terms)
    total = next(terms)
    for term in terms:
        total = total + term
    return total


def _per_example_sum(per_example: torch.Tensor) -> WeightedSum:
    """The weighted sum of per-example gradients [b, *shape] that are already instantiated."""
    return lambda w: (w @ per_example.flatten(1)).view(per_example.shape[1:])


def _squared_norms(per_example: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(per_example.flatten(1), dim=1).square()


def _ghost_norms(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """‖Gᵀ A‖² per example for positions a [b, S, d_in], g [b, S, d_out]: Σ (A Aᵀ ⊙ G Gᵀ)."""
    return (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))


def _channel_sums(t: torch.Tensor, batch: int) -> torch.Tensor:
    """[N, C, *positions] rows -> [b, C] per-example sums over an example's rows and positions."""
    return t.unflatten(0, (batch, -1)).transpose(1, 2).flatten(2).sum(2)


class _Layer:
    """A hooked module: which of its parameters train, and its calls in the current forward."""

    def __init__(self, name: str, module: nn.Module, trainable: list[str]):
        self.name, self.module, self.trainable = name, module, trainable
        self.dtype = torch.promote_types(module.get_parameter(trainable[0]).dtype, torch.float32)
        self.calls: list[_Call] = []
        self.weight_path: Optional[str] = None  # "ghost" or "instantiate", once decided
        self._workspace: Optional[torch.Tensor] = None

    def record(self, inputs: tuple, kwargs: dict, output: torch.Tensor) -> _Call:
        x = inputs[0]
        kept = x.detach() if "weight" in self.trainable else None  # kept alive, it would outlive autograd's copy
        self.calls.append(_Call(kept, weakref.ref(output), len(x), x._version, output._version))
        return self.calls[-1]

    def shape(self, attr: str) -> torch.Size:
        return self.module.get_parameter(attr).shape

    def per_example(self, batch: int, path: str) -> tuple[torch.Tensor, dict[str, WeightedSum]]:
        """Squared per-example gradient norms [b] of the trainable parameters, and their weighted sums;
        ``path``: "ghost", "instantiate" or the :data:`Rule` that chooses (:meth:`use_ghost`)."""
        raise NotImplementedError

    def use_ghost(self, path: str, positions: int, params: int, ghost_time: int, instantiate_time: int) -> bool:
        """Decide this layer's weight path: ``path`` is "ghost", "instantiate", or a :data:`Rule` choosing
        between them — memory: 2·S² < P (two [S, S] Gram matrices vs P per example); time: multiply-adds."""
        if path == "memory":
            ghost = 2 * positions**2 < params
        elif path == "time":
            ghost = ghost_time < instantiate_time
        else:
            ghost = path == "ghost"
        self.weight_path = "ghost" if ghost else "instantiate"
        if ghost:
            self.release_workspace()  # a layer that went ghost keeps no per-example buffer
        return ghost

    def workspace(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised buffer for instantiated per-example weight gradients, kept from call to call.

        A fresh [b, P] tensor every step costs as much as filling it: the CPU allocator hands large
        blocks back to the OS when they are freed, so each step page-faults them in again. The buffer
        grows to the largest batch seen (Poisson batches vary) and is released by ``remove()``.
        """
        numel = math.prod(shape)
        if (self._workspace is None or self._workspace.numel() < numel or self._workspace.dtype != like.dtype
                or self._workspace.device != like.device):
            self._workspace = like.new_empty(numel)
        return self._workspace[:numel].view(shape)

    def release_workspace(self) -> None:
        self._workspace = None

    def skip_weight_gradient(self) -> None:
        """For the next forward, let the module's backward skip forming the weight gradient of the whole
        batch, which book-keeping forms per example itself (only where that saves time; by default nothing
        changes). Undone by :meth:`restore_forward`."""

    def restore_forward(self) -> None:
        """Undo :meth:`skip_weight_gradient`."""



class _LinearLayer(_Layer):
    def per_example(self, batch, path):
        d_out, d_in = self.module.weight.shape
        g = [c.output_grad.to(self.dtype).reshape(batch, -1, d_out) for c in self.calls]
        norms, sums = 0, {}
        if "bias" in self.trainable:
            bias = _total(gi.sum(1) for gi in g)
            norms, sums["bias"] = norms + _squared_norms(bias), _per_example_sum(bias)
        if "weight" in self.trainable:
            a = [c.input.to(self.dtype).reshape(batch, -1, d_in) for c in self.calls]
            positions, params = sum(ai.shape[1] for ai in a), d_in * d_out
            if self.use_ghost(path, positions, params, positions**2 * (d_in + d_out + 1) + positions * params,
                              positions * params + 2 * params):
                norms = norms + _ghost_norms(torch.cat(a, 1), torch.cat(g, 1))
                sums["weight"] = lambda w: _total((gi * w[:, None, None]).reshape(-1, d_out).T @ ai.reshape(-1, d_in)
                                                  for ai, gi in zip(a, g))
            else:
                weight = self.workspace((batch, d_out, d_in), a[0])
                torch.bmm(g[0].transpose(1, 2), a[0], out=weight)
                for ai, gi in zip(a[1:], g[1:]):
                    weight.baddbmm_(gi.transpose(1, 2), ai)
                norms, sums["weight"] = norms + _squared_norms(weight), _per_example_sum(weight)
        return norms, sums


class _NormLayer(_Layer):
    """GroupNorm / LayerNorm: per-example gradients of the affine weight (Σ g·x̂) and bias (Σ g)."""

    def per_example(self, batch, path):
        norms, sums = 0, {}
        for attr in self.trainable:
            per_example = _total(self._reduce(self._grad_factor(c, attr), batch) for c in self.calls)
            norms, sums[attr] = norms + _squared_norms(per_example), _per_example_sum(per_example)
        if "weight" in self.trainable:
            self.weight_path = "instantiate"
        return norms, sums

    def _grad_factor(self, call: _Call, attr: str) -> torch.Tensor:
        """Per-position d loss/d param: y = x̂·γ + β, so g·x̂ for the weight γ and g for the bias β."""
        grad = call.output_grad.to(self.dtype)
        return grad * self._normalise(call.input.to(self.dtype)) if attr == "weight" else grad

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _reduce(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        raise NotImplementedError


class _GroupNormLayer(_NormLayer):
    def _normalise(self, x):
        return F.group_norm(x, self.module.num_groups, eps=self.module.eps)

    def _reduce(self, t, batch):
        return _channel_sums(t, batch)


class _LayerNormLayer(_NormLayer):
    def _normalise(self, x):
        return F.layer_norm(x, self.module.normalized_shape, eps=self.module.eps)

    def _reduce(self, t, batch):
        return t.reshape(batch, -1, *self.module.normalized_shape).sum(1)


class _EmbeddingLayer(_Layer):
    def __init__(self, name, module, trainable):
        if module.scale_grad_by_freq:
            raise NotImplementedError(f"{name}: scale_grad_by_freq couples the examples of a batch; "
                                      "per-example gradients are undefined")
        super().__init__(name, module, trainable)

    def per_example(self, batch, path):
        num_rows, width = self.module.weight.shape
        index = torch.cat([c.input.reshape(batch, -1) for c in self.calls], 1)  # [b, S]
        grad = torch.cat([c.output_grad.to(self.dtype).reshape(batch, -1, width) for c in self.calls], 1)
        if self.module.padding_idx is not None:  # the padding row gets no gradient
            grad = grad * (index != self.module.padding_idx)[..., None]
        positions = index.shape[1]
        if self.use_ghost(path, positions, num_rows * width, positions**2 * (width + 1), 3 * num_rows * width):
            same_row = (index[:, :, None] == index[:, None, :]).to(self.dtype)
            norms = (same_row * torch.bmm(grad, grad.transpose(1, 2))).sum((1, 2))
            weighted = lambda w: grad.new_zeros(num_rows, width).index_add_(  # noqa: E731
                0, index.flatten(), (grad * w[:, None, None]).reshape(-1, width))
            return norms, {"weight": weighted}
        rows = torch.arange(batch, device=index.device)[:, None].expand_as(index)
        per_example = self.workspace((batch, num_rows, width), grad).zero_()
        per_example.index_put_((rows, index), grad, accumulate=True)
        return _squared_norms(per_example), {"weight": _per_example_sum(per_example)}
