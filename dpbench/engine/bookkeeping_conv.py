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
the input once instead of k_h·k_w times (:func:`_shift_gradient` picks by bytes moved). Where the image
is large against the channels, one grouped ``conv2d_weight`` over the batch's rows instantiates faster than
either (:func:`_use_grouped`, measured) and needs no grid. The ghost
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


def _phase_grid(conv: nn.Conv2d, x_shape: torch.Size, grad_shape: torch.Size, batch: int) -> tuple[int, int, int]:
    """(phase height, phase width, grid rows) of :class:`_ConvLayout` for these shapes: its grid has
    K·grid_rows·phase_width positions. K copies each take a whole phase image; a single one needs only its
    H_out grid rows."""
    left, right, top, bottom = conv._reversed_padding_repeated_twice
    (s_h, s_w), (h, w) = conv.stride, x_shape[-2:]
    phase_h, phase_w = -(-(h + top + bottom) // s_h), -(-(w + left + right) // s_w)
    return phase_h, phase_w, grad_shape[-2] if x_shape[0] == batch else phase_h


def _grid_positions(conv: nn.Conv2d, call: _Call, batch: int) -> int:
    """The positions of one call's :class:`_ConvLayout` grid, without building it."""
    _, phase_w, grid_rows = _phase_grid(conv, call.input.shape, call.output_grad.shape, batch)
    return call.rows // batch * grid_rows * phase_w


class _ConvLayout:
    """One conv call's input and output gradient on a flat grid where every kernel tap is a unit-stride view.

    The padded input is split into s_h·s_w stride phases (phase (a, c) holds pixels (a + s_h·i, c + s_w·j);
    one phase when the stride is 1), each stored flat with rows of ``row_width`` = its width. The output
    gradient sits on a grid of the same row width (spare columns hold 0), so grid position p meets pixel
    p + offset of the tap's phase. An example's K copies follow one another along the flat axis.
    """

    def __init__(self, conv: nn.Conv2d, x: torch.Tensor, grad: torch.Tensor, batch: int):
        left, right, top, bottom = conv._reversed_padding_repeated_twice
        phase_h, phase_w, grid_rows = _phase_grid(conv, x.shape, grad.shape, batch)
        if conv.padding_mode != "zeros":
            x = F.pad(x, (left, right, top, bottom), mode=conv.padding_mode)
            left = right = top = bottom = 0
        rows, c_in = x.shape[:2]
        copies, c_out, (h_out, w_out) = rows // batch, grad.shape[1], grad.shape[-2:]
        s_h, s_w = conv.stride
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


def _use_grouped(conv: nn.Conv2d, calls: list[_Call], batch: int) -> bool:
    """Instantiate by one grouped ``conv2d_weight`` (:func:`_grouped_weight_grads`) rather than on the grid.

    The grouped weight-gradient kernel (mkldnn on CPU) wins when the image is large against the channels;
    the grid's batched matmuls win on small deep feature maps, and the shifted gradient on rank-r
    convolutions (few output channels). Measured on CPU (1 thread, channels_last inputs, batch b; grid vs
    grouped, ms): b 256, 16→16 at 16²: 14.2 vs 6.6; 32→16 at 16²: 37.1 vs 18.8; b 32, 64→64 at 14²: 16.2 vs
    6.6; 1→32 at 28²: 4.9 vs 1.1; b 8, 3→128 at 32²: 5.5 vs 1.4; 128→128 at 32²: 59 vs 55 — but b 256,
    32→32 at 8²: 8.4 vs 14.3; b 8, 256→256 at 8²: 17 vs 47; 128→256 at 16²: 26 vs 30; rank-r 32→4 at 28²
    (shifted): 9.5 vs 21.5; strided convs mixed (b 256, 16→16 at 16², stride 2: 10.4 vs 13.7). Hence: stride
    and dilation 1, a kernel wider than 1×1, one row per example (K copies would need K× the output),
    not a rank-r down-projection (3·C_out ≥ C_in), and H_out·W_out > 2·max(C_in, C_out).
    """
    c_out, c_in = conv.out_channels, conv.in_channels
    return (all(c.rows == batch for c in calls) and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and conv.kernel_size != (1, 1) and 3 * c_out >= c_in
            and all(c.output_grad.shape[-2] * c.output_grad.shape[-1] > 2 * max(c_in, c_out) for c in calls))


def _grouped_weight_grads(conv: nn.Conv2d, x: torch.Tensor, grad: torch.Tensor, batch: int) -> torch.Tensor:
    """[b, C_out, C_in, k_h, k_w]: per-example weight gradients by one grouped ``conv2d_weight`` with every
    row of the batch its own group (Rochette et al. 2019), the K rows of an example then summed. The
    reshapes copy channels_last-strided tensors into the order they describe."""
    padding_mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    x = F.pad(x, conv._reversed_padding_repeated_twice, mode=padding_mode)
    rows, c_in, c_out = len(x), x.shape[1], grad.shape[1]
    per_row = torch.nn.grad.conv2d_weight(x.reshape(1, rows * c_in, *x.shape[-2:]),
                                          (rows * c_out, c_in, *conv.kernel_size),
                                          grad.reshape(1, rows * c_out, *grad.shape[-2:]),
                                          conv.stride, 0, conv.dilation, groups=rows)
    return per_row.view(batch, rows // batch, c_out, c_in, *conv.kernel_size).sum(1)


class _ConvWithoutWeightGradient(torch.autograd.Function):
    """``F.conv2d`` whose backward forms the input and bias gradients and *not* the weight's.

    Book-keeping asks autograd only for output gradients (and one small parameter per layer), so a
    convolution's weight gradient over the batch is never needed: book-keeping forms it per example. Yet
    on CPU ``convolution_backward`` (mkldnn) costs as much with the weight gradient masked off as with it:
    measured at 1 thread, batch 32, 3×3: 64→64 at 28² 52.9 ms masked vs 54.9 ms not, against 17–33 ms for
    the input gradient alone as ``conv_transpose2d`` (the same numbers: difference 0); 128→64 at 14²: 20.2
    vs 9.8 ms. Paying for the weight gradient twice was most of full fine-tuning's DP step overhead.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        out = F.conv2d(x, weight, bias, stride, padding, dilation)
        ctx.save_for_backward(weight)
        ctx.geometry = (stride, padding, dilation, x.shape[-2:], out.shape[-2:], x.dtype)
        return out

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        stride, padding, dilation, in_size, out_size, in_dtype = ctx.geometry
        grad_input = grad_bias = None
        if ctx.needs_input_grad[0]:
            # the rows/columns a strided convolution never read get output padding (zero gradient)
            extra = [n_in - ((n_out - 1) * s - 2 * p + d * (k - 1) + 1)
                     for n_in, n_out, s, p, d, k in zip(in_size, out_size, stride, padding, dilation, weight.shape[-2:])]
            grad_input = F.conv_transpose2d(grad, weight.to(grad.dtype), None, stride, padding, extra, 1,
                                            dilation).to(in_dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3), dtype=weight.dtype)
        return grad_input, None, grad_bias, None, None, None


class _Conv2dLayer(_Layer):
    def __init__(self, name, module, trainable):
        if module.groups != 1:
            raise NotImplementedError(f"{name}: grouped convolutions (groups={module.groups}) are not supported "
                                      "by book-keeping clipping")
        super().__init__(name, module, trainable)
        self._forward_replaced = False

    def skip_weight_gradient(self):
        conv = self.module
        # CPU only: that is where the masked backward was measured to cost the full one
        if ("weight" in self.trainable and conv.weight.device.type == "cpu" and conv.padding_mode == "zeros"
                and not isinstance(conv.padding, str) and "_conv_forward" not in vars(conv)):
            # an instance attribute shadows nn.Conv2d._conv_forward, which its forward calls; it checks the
            # flag on every call, so a copy of the module made meanwhile (deepcopy copies the attribute)
            # falls back to the ordinary forward, with its weight gradient, once this call is over
            def forward(x, weight, bias):
                if self._forward_replaced:
                    return _ConvWithoutWeightGradient.apply(x, weight, bias, conv.stride, conv.padding, conv.dilation)
                return nn.Conv2d._conv_forward(conv, x, weight, bias)

            conv._conv_forward = forward
            self._forward_replaced = True

    def restore_forward(self):
        if self._forward_replaced:
            del self.module._conv_forward
            self._forward_replaced = False

    def per_example(self, batch, path):
        conv, dtype = self.module, self.dtype
        norms, sums = 0, {}
        if "bias" in self.trainable:
            bias = _total(_channel_sums(c.output_grad.to(dtype), batch) for c in self.calls)
            norms, sums["bias"] = norms + _squared_norms(bias), _per_example_sum(bias)
        if "weight" in self.trainable:
            positions, params = sum(_grid_positions(conv, c, batch) for c in self.calls), conv.weight.numel()
            d_in, d_out = params // conv.out_channels, conv.out_channels
            if self.use_ghost(path, positions, params, positions**2 * (d_in + d_out + 1) + positions * params,
                              positions * params + 2 * params):
                layouts = self._layouts(batch)
                norms = norms + self._ghost_norms(layouts)
                sums["weight"] = self._weighted_contraction
            elif _use_grouped(conv, self.calls, batch):
                self.release_workspace()  # conv2d_weight allocates its own output
                weight = _total(_grouped_weight_grads(conv, c.input.to(dtype), c.output_grad.to(dtype), batch)
                                for c in self.calls).view(batch, -1)
                norms = norms + torch.linalg.vector_norm(weight, dim=1).square()
                sums["weight"] = lambda w: torch.matmul(w, weight).view(conv.weight.shape)
            else:
                layouts = self._layouts(batch)
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

    def _layouts(self, batch: int) -> list[_ConvLayout]:
        return [_ConvLayout(self.module, c.input.to(self.dtype), c.output_grad.to(self.dtype), batch) for c in self.calls]

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
