"""One line that `dpbench ls methods` prints: what trains.

Copy this file to ``dpbench/methods/<name>.py`` (the file name is the method's registered name), give
it a docstring, options and a ``prepare``; nothing else in dpbench needs to change. The DP loop does
sampling, clipping, noise, accounting and measurement for you, and `dpbench selfcheck` will verify
per-sample gradients, clipping and noise for the new method automatically.
"""

from __future__ import annotations

import torch.nn as nn
from pydantic import BaseModel, ConfigDict

from dpbench.methods.base import Method, set_trainable


class TemplateOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Declare options with types and defaults; suites pass them under `methods[i].options`.
    example_option: int = 1


class TemplateMethod(Method):
    name = "template"
    Options = TemplateOptions

    def prepare(self, model: nn.Module) -> nn.Module:
        # Every parameter arrives frozen and the model is on its device. Mark what trains:
        set_trainable(p for n, p in model.named_parameters() if n.startswith("conv_out"))
        return model


METHOD = TemplateMethod
