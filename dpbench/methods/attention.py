"""Attention-only: every parameter of the UNet's attention blocks trains (the DP-LDM recipe) [tiny: 17,152 trainable]"""

from __future__ import annotations

import torch.nn as nn

from dpbench.methods.base import Method, set_trainable


class AttentionOnly(Method):
    name = "attention"

    def prepare(self, model: nn.Module) -> nn.Module:
        from diffusers.models.attention_processor import Attention

        blocks = [m for m in model.modules() if isinstance(m, Attention)]
        if not blocks:
            from dpbench.errors import UserError

            raise UserError("methods[attention]: the model has no attention blocks — choose a preset with attention")
        for block in blocks:
            set_trainable(block.parameters())
        return model


METHOD = AttentionOnly
