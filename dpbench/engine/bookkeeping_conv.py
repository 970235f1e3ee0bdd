"""Book-keeping's rule for Conv2d (:mod:`dpbench.engine.bookkeeping`, whose per-layer choice between the ghost
norm and instantiated per-example gradients is in :mod:`dpbench.engine.bookkeeping_layers`).

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
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dpbench.engine.bookkeeping_layers import (_Call, _channel_sums, _Layer, _per_example_sum, _squared_norms,
                                               _total)


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
