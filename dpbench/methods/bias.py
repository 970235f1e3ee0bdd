"""BitFit: only bias terms train (convolutions, linear layers and normalisation shifts) [tiny: 2,097 trainable]"""

from __future__ import annotations

import torch.nn as nn

from dpbench.methods.base import Method, set_trainable


class BiasOnly(Method):
    name = "bias"

    def prepare(self, model: nn.Module) -> nn.Module:
        set_trainable(p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias")
        return model


METHOD = BiasOnly
