"""LoDA: low-dimensional *nonlinear* adapters, x ↦ W x + B(h + g(h)) with h = A x (contains LoRA as g ≡ 0) [tiny: 28,352 trainable]

Low-Dimensional Adaptation (Lowy et al., arXiv 2406.05257). For a frozen layer ``W`` (``nn.Linear``
or ``nn.Conv2d``)::

    y = W(x) + s · B(h + g(h)),   h = A(x),   s = alpha / rank

- ``A`` projects to ``rank`` dimensions: a bias-free linear map, or for a convolution an r-channel
  convolution with the frozen layer's kernel size, stride, padding and dilation (so ``h`` lives on
  the output grid);
- ``g`` is a small MLP *inside* the r-dimensional space (``rank → hidden → rank`` with a nonlinearity;
  1×1 convolutions for conv layers, so it acts per position on the r channels);
- ``B`` maps back (bias-free linear / 1×1 conv) and is zero-initialised, so fine-tuning starts exactly
  at the pretrained model.

With ``g ≡ 0`` (``hidden: 0``) this is exactly LoRA with the same A, B and scaling (tested against
peft). The residual ``h + g(h)`` keeps the LoRA path, so the nonlinearity can only add capacity,
at a cost of 2·r·hidden extra parameters per layer — negligible next to A and B.

Defaults and why: the paper attaches LoDA to the UNet's convolutional layers, where most of a small
UNet's capacity (and the pixel-space structure) lives, so the default ``target: all`` adapts the
ResNet convolutions (conv1, conv2) and the attention projections (to_q, to_k, to_v, to_out.0);
``rank: 4`` and ``hidden: 16`` keep the trainable count in the LoRA range; SiLU matches the UNet's own
activation.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from dpbench.errors import UserError
from dpbench.methods.base import Method, select_layers, set_trainable

ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


class LoDAOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: int = Field(default=4, gt=0)
    hidden: int = Field(default=16, ge=0, description="width of g's hidden layer; 0 = g ≡ 0 (LoRA)")
    activation: Literal["silu", "gelu", "relu", "tanh"] = "silu"
    alpha: float | None = Field(default=None, gt=0, description="scaling = alpha / rank; default alpha = rank")
    target: Literal["attention", "conv", "all"] = "all"


class LoDALayer(nn.Module):
    """A frozen ``nn.Linear``/``nn.Conv2d`` plus its LoDA update (see the module docstring)."""

    def __init__(self, base: nn.Module, rank: int, hidden: int, activation: str = "silu", alpha: float | None = None):
        super().__init__()
        self.base = base
        self.scaling = (alpha if alpha is not None else rank) / rank
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        if isinstance(base, nn.Linear):
            self.A = nn.Linear(base.in_features, rank, bias=False, **kw)
            self.B = nn.Linear(rank, base.out_features, bias=False, **kw)
            inner = lambda i, o: nn.Linear(i, o, **kw)  # noqa: E731
        elif isinstance(base, nn.Conv2d):
            if base.groups != 1:
                raise UserError("methods[loda]: grouped convolutions are not supported — target other layers")
            self.A = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding,
                               base.dilation, bias=False, padding_mode=base.padding_mode, **kw)
            self.B = nn.Conv2d(rank, base.out_channels, 1, bias=False, **kw)
            inner = lambda i, o: nn.Conv2d(i, o, 1, **kw)  # noqa: E731
        else:
            raise TypeError(f"LoDA adapts nn.Linear and nn.Conv2d, not {type(base).__name__}")
        self.g = nn.Sequential(inner(rank, hidden), ACTIVATIONS[activation](), inner(hidden, rank)) if hidden else None
        nn.init.zeros_(self.B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.A(x)
        if self.g is not None:
            h = h + self.g(h)
        # Not in-place: an in-place add on the output of a hooked module breaks per-sample gradients.
        return self.base(x) + self.B(h) * self.scaling


class LoDA(Method):
    name = "loda"
    Options = LoDAOptions

    def prepare(self, model: nn.Module) -> nn.Module:
        opts = self.options
        for name in select_layers(model, opts.target):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            layer = LoDALayer(getattr(parent, child), opts.rank, opts.hidden, opts.activation, opts.alpha)
            setattr(parent, child, layer)
            set_trainable(p for n, p in layer.named_parameters() if not n.startswith("base."))
        return model


METHOD = LoDA
