"""Full fine-tuning: every UNet parameter trains (plain DP-SGD; the memory-hungriest baseline) [tiny: 176,849 trainable]"""

from __future__ import annotations

import torch.nn as nn

from dpbench.methods.base import Method, set_trainable


class Full(Method):
    name = "full"

    def prepare(self, model: nn.Module) -> nn.Module:
        set_trainable(model.parameters())
        return model


METHOD = Full
