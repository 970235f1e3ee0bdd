"""A registered fix for Opacus' per-sample convolution gradients on channels_last-strided inputs.

Opacus 1.6 computes a Conv2d's per-sample gradient from ``unfold(activations)`` and a ``reshape`` of the
backprops. diffusers' attention blocks hand the next convolution a tensor that is logically NCHW but
has channels_last *strides* (``hidden_states.transpose(-1, -2).reshape(b, c, h, w)``); for such inputs
the per-sample weight gradients of every convolution after an attention block come out wrong while
the ordinary (summed) gradient stays right — a silent error in the DP update (17% measured on a
small UNet; relative error 1.0 per affected layer on the tiny preset).

We do not fork Opacus: we register a conv grad sampler that makes activations and backprops
contiguous and then delegates to Opacus' own implementation. ``dpbench selfcheck`` compares the result
with an explicit per-example loop, and a test shows the check fails with the workaround disabled.
"""

from __future__ import annotations

import contextlib

import torch.nn as nn
from opacus.grad_sample import conv as opacus_conv
from opacus.grad_sample.grad_sample_module import GradSampleHooks

try:  # fast-gradient-clipping hooks share the registry in Opacus >= 1.5
    from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleHooksFastGradientClipping
except ImportError:  # pragma: no cover - older Opacus
    GradSampleHooksFastGradientClipping = None

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_opacus_conv_grad_sample = opacus_conv.compute_conv_grad_sample


def contiguous_conv_grad_sample(layer, activations, backprops):
    """Opacus' conv grad sampler on contiguous copies of its inputs (see the module docstring)."""
    return _opacus_conv_grad_sample(layer, [a.contiguous() for a in activations], backprops.contiguous())


def _registries():
    yield GradSampleHooks.GRAD_SAMPLERS
    if GradSampleHooksFastGradientClipping is not None:
        yield GradSampleHooksFastGradientClipping.GRAD_SAMPLERS


def set_conv_workaround(enabled: bool) -> None:
    sampler = contiguous_conv_grad_sample if enabled else _opacus_conv_grad_sample
    for registry in _registries():
        for conv_type in _CONV_TYPES:
            registry[conv_type] = sampler


def conv_workaround_enabled() -> bool:
    return GradSampleHooks.GRAD_SAMPLERS.get(nn.Conv2d) is contiguous_conv_grad_sample


@contextlib.contextmanager
def conv_workaround(enabled: bool):
    """Temporarily enable/disable the workaround (used by the selfcheck's negative test)."""
    before = conv_workaround_enabled()
    set_conv_workaround(enabled)
    try:
        yield
    finally:
        set_conv_workaround(before)


# Installed on import: every engine that computes per-sample gradients imports this module.
set_conv_workaround(True)
