"""Book-keeping clipping (dpbench/engine/bookkeeping.py) against explicit per-example autograd loops.

Every per-example gradient the clipper can return is checked: with one-hot weights e_i the weighted sum
*is* example i's gradient. Models: the tiny class-conditional UNet with attention for every method,
in float64, plus small hand-built models for what the UNet does not exercise (padding modes, strides,
dilation, a module called twice, LayerNorm, embeddings with a padding row).
"""

from __future__ import annotations


import pytest
import torch
import torch.nn as nn

from dpbench.engine import bookkeeping_conv
from dpbench.engine.bookkeeping import BookKeepingClipper
from dpbench.config.suite import TrainingSettings
from dpbench.errors import UserError
from dpbench.engine.measure import probe_step
from dpbench.engine.trainer import DPTrainer, TrainerSetup, prepare_model
from dpbench.models.diffusion import build_unet, make_noise_scheduler
from dpbench.registry import METHODS


TOL = 1e-10
BATCH = 4
METHOD_CASES = {
    "full": ("full", {}),
    "bias": ("bias", {}),
    "attention": ("attention", {}),
    "lora": ("lora", {"target": "all"}),
    "loda-linear": ("loda", {"target": "all", "hidden": 0}),
    "loda": ("loda", {"target": "all", "hidden": 4}),
    # peft's tuners: raw parameters and custom autograd functions, on the generic path (engine/generic.py)
    **{name: (name, {}) for name in ("dora", "loha", "lokr", "oft", "ia3", "vera", "hra", "fourierft")},
    "peft-loha-conv": ("peft", {"type": "loha", "r": 2, "target": "conv"}),
}


class UNetCase:
    """A tiny UNet prepared for one method, a batch, and its per-example losses as DPTrainer builds them."""

    def __init__(self, method: str, rows_per_example: int, dtype=torch.float64, seed: int = 0):
        name, options = METHOD_CASES[method]
        torch.manual_seed(seed)
        model = prepare_model(build_unet("tiny", 8, 1, 3), METHODS.get(name)(options), 3, "cpu", dtype)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # zero-initialised adapters (B = 0) would make the A gradients vanish
            for p in model.parameters():
                if p.requires_grad and not p.any():
                    p.normal_(0, 0.1, generator=gen)
        images = torch.rand(BATCH, 1, 8, 8, generator=gen, dtype=dtype) * 2 - 1
        labels = torch.randint(0, 3, (BATCH,), generator=gen)
        step = probe_step(BATCH, private=False, noise_multiplicity=rows_per_example)
        # label dropout: the K copies of one example can carry different class-embedding rows
        settings = TrainingSettings(optimizer="sgd", ema_decay=None, label_dropout=0.5)
        self.trainer = DPTrainer(model, make_noise_scheduler(), images, labels, TrainerSetup(step, settings, seed), "cpu")
        self.model, self.params, self.rows_per_example = model, self.trainer.params, rows_per_example
        self.inputs = (self.trainer.images, *self.trainer.draw_diffusion_inputs(self.trainer.labels))

    def losses(self, examples=slice(None)) -> torch.Tensor:
        x, t, noise, labels = (z[examples] for z in self.inputs)
        return self.trainer.example_losses(x, t, noise, labels)

    def reference_grads(self) -> list[list[torch.Tensor]]:
        return [list(torch.autograd.grad(self.losses(slice(i, i + 1)).sum(), self.params)) for i in range(BATCH)]


def one_hot(i: int):
    return lambda norms: nn.functional.one_hot(torch.tensor(i), len(norms)).to(norms.dtype)


def errors_against(clipper, loss_fn, params, reference, batch: int) -> dict[str, float]:
    """Largest relative errors of the clipper's norms, per-example gradients and a random weighted sum."""
    ref_norms = torch.stack([torch.cat([g.flatten() for g in grads]).norm() for grads in reference])

    def rel(got: list[torch.Tensor], want: list[torch.Tensor], scale: torch.Tensor) -> float:
        # Per parameter, so that a wrong small parameter cannot hide under the example's whole norm; the floor
        # is for gradients that are zero up to rounding (attention key biases: softmax ignores a shift).
        return max(float((a - b).norm() / (b.norm() + 1e-6 * scale)) for a, b in zip(got, want))

    worst_grad = 0.0
    for i in range(batch):
        sums, norms, _ = clipper.weighted_sum(loss_fn, one_hot(i))
        worst_grad = max(worst_grad, rel(sums, reference[i], ref_norms[i]))
    weights = torch.rand(batch, generator=torch.Generator().manual_seed(1), dtype=ref_norms.dtype)
    sums, norms, _ = clipper.weighted_sum(loss_fn, lambda n: weights.to(n.dtype))
    assert norms.dtype == ref_norms.dtype and [s.dtype for s in sums] == [p.dtype for p in params]
    want = [sum(w * grads[j] for w, grads in zip(weights, reference)) for j in range(len(params))]
    return {"norm": float(((norms - ref_norms).abs() / ref_norms).max()), "grad": worst_grad,
            "weighted": rel(sums, want, ref_norms.max())}


# ------------------------------------------------------------------------------------------ the UNet
@pytest.mark.parametrize("rows_per_example", [1, 2])
@pytest.mark.parametrize("method", list(METHOD_CASES))
def test_unet_norms_and_per_example_gradients_match_an_explicit_loop(method, rows_per_example):
    case = UNetCase(method, rows_per_example)
    reference = case.reference_grads()
    clipper = BookKeepingClipper(case.model, case.params, rows_per_example)
    errors = errors_against(clipper, case.losses, case.params, reference, BATCH)
    assert max(errors.values()) <= TOL, errors
    for p in case.params:
        assert p.grad is None and not hasattr(p, "grad_sample")
    clipper.remove()


@pytest.mark.parametrize("path", ["ghost", "instantiate"])
@pytest.mark.parametrize("method", ["full", "loda"])
def test_each_forced_path_is_right(method, path):
    case = UNetCase(method, rows_per_example=2)
    reference = case.reference_grads()
    clipper = BookKeepingClipper(case.model, case.params, 2, path=path)
    errors = errors_against(clipper, case.losses, case.params, reference, BATCH)
    assert max(errors.values()) <= TOL, errors
    by_type = {}
    for name, chosen in clipper.weight_paths.items():
        by_type.setdefault(type(case.model.get_submodule(name)), set()).add(chosen)
    assert by_type[nn.Linear] == {path} and by_type[nn.Conv2d] == {path}
    if method == "full":
        assert by_type[nn.Embedding] == {path} and by_type[nn.GroupNorm] == {"instantiate"}


def test_cost_model_ghosts_single_position_layers_and_instantiates_attention_and_convs():
    case = UNetCase("full", rows_per_example=1)
    clipper = BookKeepingClipper(case.model, case.params, 1, rule="time")
    clipper.weighted_sum(case.losses, lambda n: torch.ones_like(n))
    paths = clipper.weight_paths
    assert paths["class_embedding"] == "ghost"
    assert paths["time_embedding.linear_1"] == "ghost" and paths["down_blocks.0.resnets.0.time_emb_proj"] == "ghost"
    assert paths["down_blocks.1.attentions.0.to_q"] == "instantiate"
    assert paths["down_blocks.0.resnets.0.conv1"] == "instantiate"


def weight_positions(model: nn.Module, loss_fn, rows_per_example: int) -> dict[str, tuple[int, int]]:
    """(S, P) of every Linear / Conv2d with a trainable weight: S = one example's output positions over its K
    rows and every call (tokens, or output pixels H·W), P = weight elements — fastDP's quantities."""
    positions, hooks = {}, []
    for name, module in model.named_modules():
        if type(module) in (nn.Linear, nn.Conv2d) and module.weight.requires_grad:
            def count(m, i, out, name=name):
                per_row = out.shape[2:].numel() if isinstance(m, nn.Conv2d) else out[0].numel() // out.shape[-1]
                positions[name] = positions.get(name, 0) + per_row * rows_per_example
            hooks.append(module.register_forward_hook(count))
    loss_fn()
    for h in hooks:
        h.remove()
    return {name: (s, model.get_submodule(name).weight.numel()) for name, s in positions.items()}


@pytest.mark.parametrize("rows_per_example", [1, 2])
def test_memory_rule_is_exact_and_ghosts_the_wide_low_resolution_layers(rows_per_example):
    """The default rule: norms, per-example gradients and clipped sums as the explicit loop (fp64), the ghost
    norm wherever two Gram matrices are smaller than a per-example gradient, and less memory held."""
    k = rows_per_example
    case = UNetCase("full", k)
    reference = case.reference_grads()
    clipper = BookKeepingClipper(case.model, case.params, k)
    assert clipper.rule == "memory"
    errors = errors_against(clipper, case.losses, case.params, reference, BATCH)
    assert max(errors.values()) <= 1e-10, errors
    # clipped sums: C inside the spread of the norms, so some examples are clipped and some are not
    ref_norms = torch.stack([torch.cat([g.flatten() for g in grads]).norm() for grads in reference])
    max_norm = float(ref_norms.median())
    sums, norms, _ = clipper.weighted_sum(case.losses, lambda n: (max_norm / n).clamp(max=1.0))
    factors = (max_norm / ref_norms).clamp(max=1.0)
    for j, got in enumerate(sums):
        want = sum(f * grads[j] for f, grads in zip(factors, reference))
        assert float((got - want).norm()) <= 1e-10 * max_norm, case.trainer.named_params[j][0]

    paths = clipper.weight_paths
    sizes = weight_positions(case.model, case.losses, k)
    ghosts = {name for name in sizes if paths[name] == "ghost"}
    # the grid the engine forms has at least the S output positions, so 2·S² ≥ P always instantiates
    assert all(2 * s * s < p for name, (s, p) in sizes.items() if name in ghosts)
    # The 8x8 UNet's 4x4 level has 2·S² < P for S = 16 output positions (K = 1), but the engine's grid for a
    # 3x3 conv is the padded 6x6 = 36 positions per row: with K = 2 only the widest convolutions stay ghost.
    expected = {1: {"down_blocks.1.resnets.0.conv1", "mid_block.resnets.0.conv2", "mid_block.attentions.0.to_q"},
                2: {"up_blocks.0.resnets.0.conv1", "up_blocks.0.resnets.1.conv1"}}[k]
    assert expected <= ghosts
    assert not {"conv_in", "down_blocks.0.resnets.0.conv1", "up_blocks.1.resnets.0.conv1"} & ghosts
    assert paths["class_embedding"] == "ghost" and paths["time_embedding.linear_1"] == "ghost"
    # what the instantiated layers keep between steps, against the time rule (which instantiates every conv)
    clipper.remove()
    held = {}
    for rule in ("memory", "time"):
        ruled = BookKeepingClipper(case.model, case.params, k, rule=rule)
        ruled.weighted_sum(case.losses, lambda n: torch.ones_like(n))
        held[rule] = ruled.held_bytes()
        ruled.remove()
    assert held["memory"] < held["time"]


def test_workspaces_are_reused_across_steps_and_released_by_layers_that_go_ghost():
    torch.manual_seed(0)
    model = TwiceConv(nn.Conv2d(**CONVS["reflect-stride2"])).double()
    params = list(model.parameters())
    x = torch.randn(6, 3, 12, 12, dtype=torch.float64)
    clipper = BookKeepingClipper(model, params, 2, path="instantiate")
    clipper.weighted_sum(rows_losses(model, x, 2), lambda n: torch.ones_like(n))
    conv = next(layer for layer in clipper._layers if layer.name == "conv")
    first = conv._workspace.data_ptr()
    clipper.weighted_sum(rows_losses(model, x[:4], 2), lambda n: torch.ones_like(n))  # a smaller batch
    assert conv._workspace.data_ptr() == first and clipper.held_bytes() > 0
    clipper.path = "ghost"
    clipper.weighted_sum(rows_losses(model, x, 2), lambda n: torch.ones_like(n))
    assert clipper.held_bytes() == 0


def test_rank_r_convs_shift_the_gradient_and_wide_convs_go_per_tap(monkeypatch):
    decisions = {}

    def spy(layout):
        decision = choose(layout)
        decisions[layout.input.shape[1], layout.grad.shape[1], len(layout.taps)] = decision
        return decision

    choose = bookkeeping_conv._shift_gradient
    monkeypatch.setattr(bookkeeping_conv, "_shift_gradient", spy)
    for method in ("full", "loda"):
        case = UNetCase(method, rows_per_example=1)
        BookKeepingClipper(case.model, case.params, 1).weighted_sum(case.losses, lambda n: torch.ones_like(n))
    # LoDA's rank-4 3x3 A convolutions from 32 input channels up (16 -> 4 on an 8x8 image is a tie,
    # measured 0.17 ms either way, and may go per tap)
    rank_r = {key: shift for key, shift in decisions.items() if key[1] == 4 and key[2] == 9 and key[0] >= 32}
    square = {key: shift for key, shift in decisions.items() if key[0] == key[1] and key[2] == 9}
    assert rank_r and all(rank_r.values())
    assert square and not any(square.values())  # the UNet's own C -> C 3x3 convolutions


def test_wide_images_with_few_channels_instantiate_by_one_grouped_conv(monkeypatch):
    """The UNet's first-level convolutions (8x8 images, 16 channels) go grouped; its 4x4 32-channel maps, its
    strided downsampler and every conv with K = 2 rows per example stay on the grid."""
    decisions = []

    def spy(conv, calls, batch):
        decision = choose(conv, calls, batch)
        decisions.append((calls[0].output_grad.shape[-1], conv.stride, calls[0].rows // batch, decision))
        return decision

    choose = bookkeeping_conv._use_grouped
    monkeypatch.setattr(bookkeeping_conv, "_use_grouped", spy)
    for k in (1, 2):
        case = UNetCase("full", rows_per_example=k)
        BookKeepingClipper(case.model, case.params, k, path="instantiate").weighted_sum(case.losses,
                                                                                        lambda n: torch.ones_like(n))
    grouped = {(size, stride, k) for size, stride, k, decision in decisions if decision}
    grid = {(size, stride, k) for size, stride, k, decision in decisions if not decision}
    assert grouped == {(8, (1, 1), 1)}
    assert {(4, (1, 1), 1), (4, (2, 2), 1), (8, (1, 1), 2)} <= grid


@pytest.mark.parametrize("path", ["ghost", "instantiate"])
def test_a_conv_offset_off_by_one_is_caught(monkeypatch, path):
    """The comparison can fail: shift every kernel tap by one pixel and the norms (and, where instantiated, the
    per-example gradients) are wrong. The ghost path's sums come from conv2d_weight, which uses no offsets."""
    case = UNetCase("loda", rows_per_example=2)
    reference = case.reference_grads()
    correct = bookkeeping_conv._kernel_taps
    monkeypatch.setattr(bookkeeping_conv, "_kernel_taps",
                        lambda conv, row_width: [(phase, offset + 1) for phase, offset in correct(conv, row_width)])
    clipper = BookKeepingClipper(case.model, case.params, 2, path=path)
    if path == "instantiate":  # its summed gradient is wrong too: the first call's coverage check refuses it
        with pytest.raises(UserError, match="path the engine did not see"):
            clipper.weighted_sum(case.losses, lambda n: torch.ones_like(n))
        clipper._coverage_checked = True  # to see the per-example comparison fail as well
    errors = errors_against(clipper, case.losses, case.params, reference, BATCH)
    assert errors["norm"] > 1e-3
    if path == "instantiate":
        assert errors["grad"] > 1e-3


def test_unet_hands_convolutions_channels_last_inputs():
    """So the UNet tests above cover channels_last-strided conv inputs (where Opacus 1.6 goes wrong)."""
    case = UNetCase("loda", rows_per_example=1)
    layouts = []
    hooks = [m.register_forward_hook(lambda m, i, o: layouts.append(i[0].is_contiguous()))
             for m in case.model.modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad]
    case.losses()
    for h in hooks:
        h.remove()
    assert not all(layouts) and any(layouts)


def test_bf16_autocast_norms_fp32_and_each_clipped_contribution_at_most_C():
    case = UNetCase("loda", rows_per_example=2, dtype=torch.float32)
    clipper = BookKeepingClipper(case.model, case.params, 2)

    def bf16_losses():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return case.losses()

    _, norms, losses = clipper.weighted_sum(bf16_losses, lambda n: torch.ones_like(n))
    assert norms.dtype == torch.float32 and losses.dtype == torch.float32
    max_norm = float(norms.median())  # inside the spread: some examples are clipped, some are not
    for i in range(BATCH):
        def clip_only_i(n, i=i):
            return one_hot(i)(n) * (max_norm / n).clamp(max=1.0)

        with torch.autocast("cpu", dtype=torch.bfloat16):  # the clipper must not run its own math in bf16
            sums, norms_i, _ = clipper.weighted_sum(bf16_losses, clip_only_i)
        assert norms_i.dtype == torch.float32 and all(s.dtype == torch.float32 for s in sums)
        contribution = torch.cat([s.double().flatten() for s in sums]).norm()
        assert contribution <= max_norm * (1 + 1e-6)
        if norms_i[i] > max_norm:
            assert contribution == pytest.approx(max_norm, rel=1e-5)


def test_remove_detaches_every_hook_and_no_grad_is_written():
    case = UNetCase("full", rows_per_example=1)
    hook_count = lambda: sum(len(m._forward_hooks) for m in case.model.modules())  # noqa: E731
    before = hook_count()
    clipper = BookKeepingClipper(case.model, case.params, 1)
    assert hook_count() == before + len({id(m) for m in case.model.modules()
                                         if any(p.requires_grad for p in m.parameters(recurse=False))})
    clipper.weighted_sum(case.losses, lambda n: torch.ones_like(n))
    assert all(p.grad is None for p in case.model.parameters())
    clipper.remove()
    assert hook_count() == before


# ------------------------------------------------------------------------------ hand-built models
class TwiceConv(nn.Module):
    """Calls one conv twice (at two resolutions) and one linear twice, as a module reused in a forward."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv, self.head = conv, nn.Linear(conv.out_channels, 3)
        self.register_buffer("mix", torch.randn(3, conv.out_channels))

    def forward(self, x):
        y = torch.tanh(self.conv(x))
        z = torch.tanh(self.conv(nn.functional.avg_pool2d(x, 2)))
        pooled = y.mean((2, 3)) + z.amax((2, 3))
        return self.head(torch.tanh(self.head(pooled) @ self.mix))


CONVS = {
    "reflect-stride2": dict(in_channels=3, out_channels=5, kernel_size=3, stride=2, padding=1, padding_mode="reflect"),
    "circular-dilated": dict(in_channels=3, out_channels=4, kernel_size=3, padding=2, dilation=2, padding_mode="circular"),
    "replicate-anisotropic": dict(in_channels=3, out_channels=4, kernel_size=(3, 2), stride=(2, 1), padding=(1, 2),
                                  padding_mode="replicate"),
    "same-even-kernel": dict(in_channels=3, out_channels=4, kernel_size=4, padding="same"),
    "strided-dilated": dict(in_channels=3, out_channels=4, kernel_size=3, stride=(2, 3), dilation=(3, 2), padding=(2, 1)),
    "strided-no-pad-no-bias": dict(in_channels=3, out_channels=6, kernel_size=3, stride=3, bias=False),
}


def rows_losses(model, x, rows_per_example):
    """Per-example losses of row inputs x [b·K, ...]: each example's mean over its K rows."""
    return lambda: model(x).square().mean(1).view(-1, rows_per_example).mean(1)


def reference_for_rows(model, params, x, rows_per_example, batch):
    k = rows_per_example
    return [list(torch.autograd.grad(rows_losses(model, x[i * k:(i + 1) * k], k)().sum(), params))
            for i in range(batch)]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("path,kernel", [("ghost", None), ("instantiate", "per-tap"), ("instantiate", "shifted"),
                                         ("instantiate", "grouped")])
@pytest.mark.parametrize("conv", list(CONVS))
def test_conv_variants_channels_last_and_a_module_called_twice(monkeypatch, conv, path, kernel):
    """Every conv variant, each way: ghost norm, instantiated per tap, by the shifted gradient, by one grouped
    conv2d_weight (forced here also with K = 2 rows per example and strides, which the rule leaves to the grid)."""
    monkeypatch.setattr(bookkeeping_conv, "_shift_gradient", lambda layout: kernel == "shifted")
    monkeypatch.setattr(bookkeeping_conv, "_use_grouped", lambda conv, calls, batch: kernel == "grouped")
    torch.manual_seed(0)
    model = TwiceConv(nn.Conv2d(**CONVS[conv])).double()
    params = list(model.parameters())
    k, batch = 2, 3
    x = torch.randn(batch * k, 3, 12, 12, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    assert not x.is_contiguous()
    clipper = BookKeepingClipper(model, params, k, path=path)
    errors = errors_against(clipper, rows_losses(model, x, k), params,
                            reference_for_rows(model, params, x, k, batch), batch)
    assert max(errors.values()) <= TOL, errors
    assert clipper.weight_paths == {"conv": path, "head": path}


def test_batches_of_changing_size_reuse_the_per_example_workspace_correctly():
    """Poisson batches vary: the kept per-example buffers must serve a smaller and then a larger batch again."""
    torch.manual_seed(0)
    model = TwiceConv(nn.Conv2d(**CONVS["reflect-stride2"])).double()
    params = list(model.parameters())
    k = 2
    clipper = BookKeepingClipper(model, params, k, path="instantiate")
    for batch in (3, 2, 4):
        x = torch.randn(batch * k, 3, 12, 12, dtype=torch.float64)
        errors = errors_against(clipper, rows_losses(model, x, k), params,
                                reference_for_rows(model, params, x, k, batch), batch)
        assert max(errors.values()) <= TOL, (batch, errors)


class ConvAfterConv(nn.Module):
    """A conv variant whose input comes from a trainable conv, on an odd-sized image: the first conv's
    per-example gradients pass through the variant's *input* gradient (output padding where strided)."""

    def __init__(self, variant: dict):
        super().__init__()
        self.first = nn.Conv2d(3, 3, 3, padding=1)
        self.variant = nn.Conv2d(**variant)

    def forward(self, x):
        return self.variant(torch.tanh(self.first(x))).flatten(1)


# the variants whose backward skips the weight gradient (zero padding given as numbers)
NUMERIC_ZERO_PADDING = [name for name, conv in CONVS.items()
                        if conv.get("padding_mode", "zeros") == "zeros" and not isinstance(conv.get("padding"), str)]


@pytest.mark.parametrize("conv", NUMERIC_ZERO_PADDING)
def test_conv_backward_without_the_weight_gradient_is_exact_and_undone(conv):
    """After the first call (whose coverage check needs autograd's weight gradients), a conv whose weight
    trains runs a backward that forms only its input and bias gradients; the module's forward is restored
    after each call, also when the loss function fails."""
    torch.manual_seed(0)
    model = ConvAfterConv(CONVS[conv]).double()
    params = list(model.parameters())
    k, batch = 2, 3
    x = torch.randn(batch * k, 3, 13, 11, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    backward_nodes = []
    model.variant.register_forward_hook(lambda m, i, out: backward_nodes.append(type(out.grad_fn).__name__))
    clipper = BookKeepingClipper(model, params, k, path="instantiate")
    errors = errors_against(clipper, rows_losses(model, x, k), params,
                            reference_for_rows(model, params, x, k, batch), batch)
    assert max(errors.values()) <= TOL, errors
    calls = batch + 1  # errors_against's calls of weighted_sum, after the reference loop's forwards
    assert backward_nodes[-calls] == "ConvolutionBackward0"  # the first call: the coverage check
    assert set(backward_nodes[-calls + 1:]) == {"_ConvWithoutWeightGradientBackward"}
    assert "_conv_forward" not in vars(model.variant) and "_conv_forward" not in vars(model.first)
    model(x).sum().backward()  # outside the clipper's calls, autograd forms weight gradients as before
    assert model.variant.weight.grad is not None and backward_nodes[-1] == "ConvolutionBackward0"

    def failing():
        model(x)
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        clipper.weighted_sum(failing, lambda n: torch.ones_like(n))
    assert "_conv_forward" not in vars(model.variant)


@pytest.mark.parametrize("kernel,stride,dilation,padding", [
    (1, 1, 1, 0), (1, 2, 1, 0), (3, 1, 1, 1), (3, 2, 1, 1), (2, 3, 1, 0), (3, 5, 1, 4), (4, 2, 3, (5, 1)),
    ((3, 1), (1, 4), (2, 1), (0, 2)), (3, 4, 2, 7)])
def test_conv_without_weight_gradient_matches_autograd_on_every_geometry(kernel, stride, dilation, padding):
    """Kernels from 1×1, strides beyond the kernel, padding beyond d·(k-1), odd sizes: output padding in every
    residue the formula can give."""
    conv = nn.Conv2d(3, 4, kernel, stride=stride, dilation=dilation, padding=padding).double()
    for size in [(13, 11), (16, 9)]:
        x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
        out = bookkeeping_conv._ConvWithoutWeightGradient.apply(x, conv.weight, conv.bias, conv.stride, conv.padding,
                                                                conv.dilation)
        want = conv(x)
        assert torch.equal(out, want)
        grad = torch.randn_like(want)
        got = torch.autograd.grad(out, [x, conv.bias], grad)
        expected = torch.autograd.grad(want, [x, conv.bias], grad)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_a_model_copied_during_the_call_keeps_its_weight_gradient():
    """deepcopy copies the replaced forward along with the module: the copy must fall back to the ordinary
    forward (weight gradient included) once the clipper's call is over."""
    import copy

    torch.manual_seed(0)
    model = ConvAfterConv(CONVS["strided-dilated"]).double()
    x = torch.randn(3, 3, 13, 11, dtype=torch.float64)
    clipper = BookKeepingClipper(model, list(model.parameters()), 1)
    copies = []

    def copying_losses():
        copies.append(copy.deepcopy(model))
        return rows_losses(model, x, 1)()

    for _ in range(2):  # the second call runs the forward without weight gradients
        clipper.weighted_sum(copying_losses, lambda n: torch.ones_like(n))
    copied = copies[-1]
    copied(x).sum().backward()
    reference = copy.deepcopy(model)
    reference(x).sum().backward()
    torch.testing.assert_close(copied.variant.weight.grad, reference.variant.weight.grad)


def test_conv_backward_without_the_weight_gradient_under_bf16_autocast():
    """The input gradient is formed in the autocast dtype: the norms match the coverage-checked first
    call's (autograd's backward) to bf16 rounding, and come back in float32."""
    torch.manual_seed(0)
    model = ConvAfterConv(CONVS["strided-dilated"])
    params = list(model.parameters())
    x = torch.randn(4, 3, 13, 11)
    clipper = BookKeepingClipper(model, params, 1, path="instantiate")

    def bf16_losses():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return rows_losses(model, x, 1)()

    _, first, _ = clipper.weighted_sum(bf16_losses, lambda n: torch.ones_like(n))
    sums, later, _ = clipper.weighted_sum(bf16_losses, lambda n: torch.ones_like(n))
    assert later.dtype == torch.float32 and all(s.dtype == torch.float32 for s in sums)
    torch.testing.assert_close(later, first, rtol=2e-2, atol=0)


class Tokens(nn.Module):
    """Embedding with a padding row, LayerNorm, and token-wise linears: inputs [N, T] token ids."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(7, 5, padding_idx=0)
        self.norm = nn.LayerNorm(5)
        self.proj = nn.Linear(5, 4)

    def forward(self, tokens):
        return self.proj(torch.tanh(self.norm(self.embed(tokens)))).flatten(1)


@pytest.mark.parametrize("path", ["ghost", "instantiate"])
def test_embedding_layernorm_and_sequence_linear(path):
    torch.manual_seed(0)
    model = Tokens().double()
    params = list(model.parameters())
    k, batch = 2, 3
    tokens = torch.randint(0, 7, (batch * k, 6))
    tokens[0, :2] = 0  # padding rows get no gradient
    clipper = BookKeepingClipper(model, params, k, path=path)
    errors = errors_against(clipper, rows_losses(model, tokens, k), params,
                            reference_for_rows(model, params, tokens, k, batch), batch)
    assert max(errors.values()) <= TOL, errors
    assert clipper.weight_paths == {"embed": path, "norm": "instantiate", "proj": path}


def test_only_trainable_parameters_of_a_module_are_summed_in_the_callers_order():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    model[0].weight.requires_grad_(False)
    params = [model[2].weight, model[0].bias, model[2].bias]
    x = torch.randn(5, 4, dtype=torch.float64)
    clipper = BookKeepingClipper(model, params)
    errors = errors_against(clipper, rows_losses(model, x, 1), params, reference_for_rows(model, params, x, 1, 5), 5)
    assert max(errors.values()) <= TOL, errors


def test_unsupported_or_grouped_modules_are_refused_at_construction():
    bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    with pytest.raises(NotImplementedError, match=r"BatchNorm1d.*'1'"):
        BookKeepingClipper(bn, list(bn.parameters()))
    grouped = nn.Conv2d(4, 4, 3, groups=2)
    with pytest.raises(NotImplementedError, match="grouped"):
        BookKeepingClipper(grouped, list(grouped.parameters()))
    frozen_bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4).requires_grad_(False))
    BookKeepingClipper(frozen_bn, [p for p in frozen_bn.parameters() if p.requires_grad]).remove()


@pytest.mark.parametrize("changed", ["input", "output"])
def test_a_tensor_changed_in_place_after_the_call_is_refused(changed):
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 3)

        def forward(self, x):
            x = torch.tanh(x)
            y = self.linear(x)
            (x if changed == "input" else y).mul_(2)
            return y

    model = InPlace()
    clipper = BookKeepingClipper(model, list(model.parameters()))
    with pytest.raises(RuntimeError, match=f"its {changed} was modified in place"):
        clipper.weighted_sum(rows_losses(model, torch.randn(2, 3), 1), lambda n: torch.ones_like(n))


def test_layers_are_finished_during_the_backward_and_release_their_tensors():
    """Each instantiated layer frees its recorded inputs and output gradients as soon as its per-example
    gradients exist, in the backward, as a non-private backward frees its activations: when any layer is
    finished, no earlier-finished instantiated layer still holds a tensor (all held at once took bias-only
    DP to 1.9× the non-private memory)."""
    case = UNetCase("full", rows_per_example=1)
    clipper = BookKeepingClipper(case.model, case.params, 1)
    finished, still_held = [], []
    for layer in clipper._layers:
        def spy(batch, path, layer=layer, per_example=layer.per_example):
            still_held.extend(f.name for f in finished if f.weight_path != "ghost" and f.calls)
            out = per_example(batch, path)
            finished.append(layer)
            return out
        layer.per_example = spy
    clipper.weighted_sum(case.losses, lambda n: torch.ones_like(n))
    assert len(finished) == len(clipper._layers) and not still_held
    assert {layer.weight_path for layer in finished if layer.weight_path} == {"ghost", "instantiate"}


# ------------------------------------------------------------------- modules with raw parameters
class ChannelScale(nn.Module):
    """IA3-like: a raw per-channel scale on a frozen conv's output."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.base = conv.requires_grad_(False)
        self.scale = nn.Parameter(1 + 0.1 * torch.randn(conv.out_channels, 1, 1))

    def forward(self, x):
        return self.base(x) * self.scale


class Magnitude(nn.Module):
    """DoRA-like: W' = m · (W + B A) / ‖W + B A‖ per output row, with raw m, A, B and a frozen W."""

    def __init__(self, linear: nn.Linear, rank: int = 2):
        super().__init__()
        self.base = linear.requires_grad_(False)
        self.A = nn.Parameter(0.3 * torch.randn(rank, linear.in_features))
        self.B = nn.Parameter(0.3 * torch.randn(linear.out_features, rank))
        self.m = nn.Parameter(linear.weight.norm(dim=1).detach().clone())

    def forward(self, x):
        w = self.base.weight + self.B @ self.A
        return nn.functional.linear(x, self.m[:, None] * w / w.norm(dim=1, keepdim=True), self.base.bias)


class RawParameterNet(nn.Module):
    """Custom adapters next to a known layer; the scaled conv runs twice (a module reused in a forward)."""

    def __init__(self):
        super().__init__()
        self.conv = ChannelScale(nn.Conv2d(3, 4, 3, padding=1))
        self.mag = Magnitude(nn.Linear(4, 5))
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        y = torch.tanh(self.conv(x)) + torch.tanh(self.conv(x.flip(-1)))
        return self.head(torch.tanh(self.mag(y.mean((2, 3)))))


@pytest.mark.parametrize("rows_per_example", [1, 2])
def test_custom_modules_with_raw_parameters_are_exact_with_no_engine_change(rows_per_example):
    torch.manual_seed(0)
    model = RawParameterNet().double()
    params = [p for p in model.parameters() if p.requires_grad]
    k, batch = rows_per_example, 3
    x = torch.randn(batch * k, 3, 6, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    clipper = BookKeepingClipper(model, params, k)
    errors = errors_against(clipper, rows_losses(model, x, k), params,
                            reference_for_rows(model, params, x, k, batch), batch)
    assert max(errors.values()) <= TOL, errors
    paths = clipper.weight_paths
    assert paths["conv"] == paths["mag"] == "instantiate" and set(paths) == {"conv", "mag", "head"}  # two units


class OutOfModule(nn.Module):
    """The issue's reproduction: a known layer's weight also used outside the layer's own call."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x) + nn.functional.linear(x, self.lin.weight)


def test_a_parameter_used_outside_its_module_is_refused_and_the_way_out_is_exact():
    torch.manual_seed(0)
    model = nn.Sequential(OutOfModule(), nn.Tanh(), nn.Linear(3, 2)).double()
    params = list(model.parameters())
    x = torch.randn(3, 4, dtype=torch.float64)
    clipper = BookKeepingClipper(model, params, 1)
    with pytest.raises(UserError, match=r"parameter 0\.lin\.weight: .*path the engine did not see"):
        clipper.weighted_sum(rows_losses(model, x, 1), lambda n: torch.ones_like(n))
    clipper.remove()
    model[0].dpbench_per_example_unit = True  # the way out the error names: one unit for every use
    clipper = BookKeepingClipper(model, params, 1)
    errors = errors_against(clipper, rows_losses(model, x, 1), params, reference_for_rows(model, params, x, 1, 3), 3)
    assert max(errors.values()) <= TOL, errors


def test_the_out_of_module_error_comes_from_the_unseen_path_not_the_tolerance():
    """Without the second use the same model passes the check (the refusal above is not a false alarm)."""
    torch.manual_seed(0)
    inner = OutOfModule()
    inner.forward = lambda x: inner.lin(x)
    model = nn.Sequential(inner, nn.Tanh(), nn.Linear(3, 2)).double()
    params = list(model.parameters())
    x = torch.randn(3, 4, dtype=torch.float64)
    errors = errors_against(BookKeepingClipper(model, params, 1), rows_losses(model, x, 1), params,
                            reference_for_rows(model, params, x, 1, 3), 3)
    assert max(errors.values()) <= TOL, errors
