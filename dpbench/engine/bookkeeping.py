"""Book-keeping (BK) per-example clipping: one forward, one output-gradient backward, no per-sample hooks.

After Bu et al., "Differentially Private Optimization on Large Model at Small Cost" (fastDP), written
from scratch on plain module hooks. :meth:`BookKeepingClipper.weighted_sum` does, for a batch of b
examples:

1. one forward (the caller's ``loss_fn``), forward hooks on every module that directly owns a trainable
   parameter recording the module's input (where a weight trains) and a gradient hook on its output;
2. one ``torch.autograd.grad`` of the summed per-example losses with respect to one small trainable
   parameter per layer (a bias where there is one) — no weight gradient is formed and no ``.grad``
   written — during which the output hooks receive each layer's output gradients;
3. per layer, as soon as its output gradients are in (still inside the backward), each example's squared
   gradient norm, from the *ghost norm* or from the *instantiated* per-example gradient (below); an
   instantiated layer then drops its input and output gradients, so the backward frees memory as a
   non-private one does (only ghost layers keep theirs, for step 5); the norms are summed over layers;
4. weights w = ``weights_fn(norms)`` (clipping factors min(1, C/‖g_i‖), say);
5. per layer one weighted contraction giving Σ_i w_i g_i: ghost layers contract the recorded inputs
   with the w-weighted output gradients (a GEMM, ``conv2d_weight``, ``index_add``), instantiated
   layers contract w with the per-example gradients they already hold (``w @ G``).

Positions. Example i owns rows i·K … i·K+K-1 of the batch (K = ``rows_per_example`` noised copies
built with ``repeat_interleave``). Its gradient for a layer's weight is Σ_s g_s a_sᵀ over all its
*positions* s: the K rows, times each row's tokens (attention projections, inputs [N, T, d]) or output
pixels (convolutions), times every call of the module in the forward. Hence for one example with
position matrices A [S, d_in], G [S, d_out]:

    ghost norm      ‖Gᵀ A‖² = Σ_{s,s'} (a_s·a_s')(g_s·g_s') = Σ (A Aᵀ ⊙ G Gᵀ)   (‖a‖²‖g‖² when S = 1)
    instantiated    Gᵀ A, one [d_out, d_in] matrix per example (a batched matmul)

Convolutions without ``unfold``. A conv weight gradient is a sum over the k_h·k_w kernel taps of an
(output gradient × shifted input) product. :class:`_ConvLayout` copies the padded input once into a
flat buffer [b, C_in, phases, L'] — the s_h·s_w stride phases of the image, rows laid end to end, the K
copies of an example one after another — and zero-pads the output gradient onto a grid [b, C_out, L]
of the same row width, so that for every tap the input pixels that meet the L grid positions form a
*unit-stride view* of the buffer: no C_in·k²×HW tensor, and the grid's spare columns carry g = 0,
so the values they read never count. Instantiation is one batched matmul per tap, [b, C_out, L] ×
[b, L, C_in] written in place into the per-example gradient — or, when the output channels are few
(rank-r adapters), a single matmul against the gradient copied to every tap's offset, which reads
the input once instead of k_h·k_w times (:func:`_shift_gradient` picks by bytes moved). The ghost
norm's input Gram matrix is Σ_taps Vᵀ V ([b, L, L]). Whatever the input's strides (diffusers hands
convolutions channels_last-strided tensors), the one copy into the buffer reads it correctly.

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

Precision: all norm, weight and sum arithmetic runs in float32, or float64 when the parameters are
float64 — activations and output gradients recorded under bf16 autocast are cast first, and autocast
is switched off for this arithmetic. Norms and sums come from the same cast tensors, so the clipped
contribution of each example is bounded by what its norm says, up to float32 rounding. (A layer's
input is taken as the module received it, before autocast rounds it to bf16 for the matmul: the
gradient differs from autograd's by that rounding, and is the one both norm and sum use.)
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

Path = Literal["auto", "ghost", "instantiate"]
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


def _kernel_taps(conv: nn.Conv2d, row_width: int) -> list[tuple[int, int]]:
    """(phase, flat offset) of each kernel tap (u, v), in the weight's row-major (k_h, k_w) order.

    Tap (u, v) reads padded-input pixel (s_h·h + d_h·u, s_w·w + d_w·v) for output (h, w): with
    d_h·u = s_h·r + a and d_w·v = s_w·q + c, that is pixel (h + r, w + q) of phase (a, c).
    """
    (s_h, s_w), (d_h, d_w), (k_h, k_w) = conv.stride, conv.dilation, conv.kernel_size
    taps = []
    for u in range(k_h):
        r, a = divmod(d_h * u, s_h)
        for v in range(k_w):
            q, c = divmod(d_w * v, s_w)
            taps.append((a * s_w + c, r * row_width + q))
    return taps


class _ConvLayout:
    """One conv call's input and output gradient on a flat grid where every kernel tap is a unit-stride view.

    The padded input is split into s_h·s_w stride phases (phase (a, c) holds pixels (a + s_h·i, c + s_w·j);
    one phase when the stride is 1), each stored flat with rows of ``row_width`` = its width. The output
    gradient sits on a grid of the same row width (spare columns hold 0), so grid position p meets pixel
    p + offset of the tap's phase. An example's K copies follow one another along the flat axis.
    """

    def __init__(self, conv: nn.Conv2d, x: torch.Tensor, grad: torch.Tensor, batch: int):
        left, right, top, bottom = conv._reversed_padding_repeated_twice
        if conv.padding_mode != "zeros":
            x = F.pad(x, (left, right, top, bottom), mode=conv.padding_mode)
            left = right = top = bottom = 0
        rows, c_in, h, w = x.shape
        copies, c_out, (h_out, w_out) = rows // batch, grad.shape[1], grad.shape[-2:]
        s_h, s_w = conv.stride
        phase_h, phase_w = -(-(h + top + bottom) // s_h), -(-(w + left + right) // s_w)
        # K copies each take a whole phase image; a single one needs only its H_out grid rows
        grid_rows = h_out if copies == 1 else phase_h
        self.length = copies * grid_rows * phase_w
        self.taps = _kernel_taps(conv, phase_w)
        image_size = copies * phase_h * phase_w  # copy k starts at k·grid_rows·phase_w, = k·phase_h·phase_w if K > 1
        size = max(image_size, max(offset for _, offset in self.taps) + self.length)
        buffer = x.new_zeros(batch, c_in, s_h * s_w, size)
        images = buffer[..., :image_size].view(batch, c_in, s_h * s_w, copies, phase_h, phase_w)
        x = x.unflatten(0, (batch, copies)).transpose(1, 2)  # [b, C_in, K, h, w]
        for a in range(s_h):
            for c in range(s_w):
                first_row, first_col = (a - top) % s_h, (c - left) % s_w  # first input pixel in this phase
                part = x[..., first_row::s_h, first_col::s_w]
                row, col = (first_row + top) // s_h, (first_col + left) // s_w
                images[:, :, a * s_w + c, :, row:row + part.shape[-2], col:col + part.shape[-1]] = part
        self.input = buffer
        grid = grad.new_zeros(batch, c_out, copies, grid_rows, phase_w)
        grid[..., :h_out, :w_out] = grad.unflatten(0, (batch, copies)).transpose(1, 2)
        self.grad = grid.view(batch, c_out, self.length)  # [b, C_out, L]

    def input_view(self, tap: int) -> torch.Tensor:
        """[b, C_in, L]: the input pixel each grid position meets at kernel tap ``tap``."""
        phase, offset = self.taps[tap]
        return self.input[:, :, phase, offset:offset + self.length]

    def add_weight_grads(self, out: torch.Tensor, accumulate: bool) -> None:
        """Write (or add) this call's per-example weight gradients into ``out`` [taps, b, C_out, C_in].

        Tap-major, so each tap's batched matmul writes one contiguous block: into a [b, taps, …] buffer
        the same products ran 15–50% slower on CPU (a strided ``out=`` is computed aside and copied)."""
        batch, c_out, _ = self.grad.shape
        if _shift_gradient(self):
            # one matmul [b, taps·C_out, phases·size] x [b, phases·size, C_in] against the gradient placed
            # at every tap's offset: the input is read once, not once per tap (few output channels, so
            # the reorder to tap-major that follows is small)
            phases, size = self.input.shape[2:]
            shifted = self.grad.new_zeros(batch, len(self.taps), c_out, phases, size)
            for tap, (phase, offset) in enumerate(self.taps):
                shifted[:, tap, :, phase, offset:offset + self.length] = self.grad
            product = torch.bmm(shifted.view(batch, -1, phases * size), self.input.view(batch, -1, phases * size).mT)
            product = product.view(batch, len(self.taps), c_out, -1).transpose(0, 1)
            out.add_(product) if accumulate else out.copy_(product)
            return
        for tap in range(len(self.taps)):
            if accumulate:
                out[tap].baddbmm_(self.grad, self.input_view(tap).mT)
            else:
                torch.bmm(self.grad, self.input_view(tap).mT, out=out[tap])


def _shift_gradient(layout: _ConvLayout) -> bool:
    """Instantiate by shifting the gradient (one matmul) rather than per tap, when that moves fewer bytes.

    Per tap reads the input once per tap: taps·C_in·L. The shifted gradient is zero-filled, written and
    read once, and the input read once, over every phase: (3·taps·C_out + C_in)·phases·size. The
    multiply-adds are the same for one phase. The shift wins for few output channels — LoDA/LoRA's
    rank-r A convolutions. Measured on CPU (2 threads, batch 32; taps vs shifted, ms): C_in→C_out at
    H×W 32→4 at 28²: 0.82 vs 0.57; 64→8 at 14²: 0.82 vs 0.59; 64→16 at 14²: 1.02 vs 1.13; 96→32 at 28²:
    10.8 vs 14.4. Without the fill term the last one (a full UNet's up-path conv) took the slower shift.
    """
    _, c_in, phases, size = layout.input.shape
    c_out, taps = layout.grad.shape[1], len(layout.taps)
    return (3 * taps * c_out + c_in) * phases * size < taps * c_in * layout.length


class _Conv2dLayer(_Layer):
    def __init__(self, name, module, trainable):
        if module.groups != 1:
            raise NotImplementedError(f"{name}: grouped convolutions (groups={module.groups}) are not supported "
                                      "by book-keeping clipping")
        super().__init__(name, module, trainable)

    def per_example(self, batch, path):
        conv, dtype = self.module, self.dtype
        norms, sums = 0, {}
        if "bias" in self.trainable:
            bias = _total(_channel_sums(c.output_grad.to(dtype), batch) for c in self.calls)
            norms, sums["bias"] = norms + _squared_norms(bias), _per_example_sum(bias)
        if "weight" in self.trainable:
            layouts = [_ConvLayout(conv, c.input.to(dtype), c.output_grad.to(dtype), batch) for c in self.calls]
            positions, params = sum(lay.length for lay in layouts), conv.weight.numel()
            d_in, d_out = params // conv.out_channels, conv.out_channels
            if self.use_ghost(path, positions, params, positions**2 * (d_in + d_out + 1) + positions * params,
                              positions * params + 2 * params):
                norms = norms + self._ghost_norms(layouts)
                sums["weight"] = self._weighted_contraction
            else:
                c_out, c_in, kh, kw = conv.weight.shape
                weight = self.workspace((kh * kw, batch, c_out, c_in), layouts[0].grad)
                for i, lay in enumerate(layouts):
                    lay.add_weight_grads(weight, accumulate=i > 0)
                norms = norms + torch.linalg.vector_norm(weight, dim=(0, 2, 3)).square()

                def weighted(w: torch.Tensor) -> torch.Tensor:  # [taps, b, C_out·C_in] -> [C_out, C_in, k_h, k_w]
                    per_tap = torch.matmul(w, weight.view(kh * kw, batch, c_out * c_in))
                    return per_tap.view(kh, kw, c_out, c_in).permute(2, 3, 0, 1).contiguous()

                sums["weight"] = weighted
        return norms, sums

    def _ghost_norms(self, layouts: list[_ConvLayout]) -> torch.Tensor:
        grad = torch.cat([lay.grad for lay in layouts], 2)
        input_gram = 0
        for tap in range(len(layouts[0].taps)):
            view = torch.cat([lay.input_view(tap) for lay in layouts], 2)
            input_gram = input_gram + torch.bmm(view.mT, view)
        return (input_gram * torch.bmm(grad.mT, grad)).sum((1, 2))

    def _weighted_contraction(self, w: torch.Tensor) -> torch.Tensor:
        conv = self.module
        padding_mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode

        def contraction(c: _Call) -> torch.Tensor:
            x = F.pad(c.input.to(self.dtype), conv._reversed_padding_repeated_twice, mode=padding_mode)
            grad = c.output_grad.to(self.dtype) * w.repeat_interleave(len(x) // len(w))[:, None, None, None]
            return torch.nn.grad.conv2d_weight(x, conv.weight.shape, grad, conv.stride, 0, conv.dilation)

        return _total(contraction(c) for c in self.calls)


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
    per layer by ``rule``: ``"memory"`` (the default) or ``"time"`` (module docstring).
    """

    def __init__(self, model: nn.Module, params: list[nn.Parameter], rows_per_example: int = 1, *,
                 path: Path = "auto", rule: Rule = "memory"):
        if rows_per_example < 1:
            raise ValueError(f"rows_per_example must be ≥ 1, not {rows_per_example}")
        if path not in ("auto", "ghost", "instantiate"):
            raise ValueError(f"path must be 'auto', 'ghost' or 'instantiate', not {path!r}")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, not {rule!r}")
        from dpbench.engine.generic import GenericLayer, find_units

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
        self._recording = True
        try:
            losses = loss_fn()
        except BaseException:
            self.discard()
            raise
        finally:
            self._recording = False
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
