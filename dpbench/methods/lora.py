"""LoRA (peft): frozen weights plus a trainable low-rank update B·A on attention projections (default) and/or ResNet convs [tiny: 4,096 trainable]"""

from __future__ import annotations

from typing import Literal

import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from dpbench.methods.base import Method, select_layers, set_trainable


class LoRAOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: int = Field(default=4, gt=0)
    alpha: float | None = Field(default=None, gt=0, description="scaling = alpha / rank; default alpha = rank")
    target: Literal["attention", "conv", "all"] = "attention"


class LoRA(Method):
    name = "lora"
    Options = LoRAOptions

    def prepare(self, model: nn.Module) -> nn.Module:
        from peft import LoraConfig, inject_adapter_in_model

        opts = self.options
        config = LoraConfig(
            r=opts.rank,
            lora_alpha=opts.alpha if opts.alpha is not None else opts.rank,
            lora_dropout=0.0,
            target_modules=select_layers(model, opts.target),
            bias="none",
        )
        # The model is already on its device (see Method.prepare): the adapters are created there.
        model = inject_adapter_in_model(config, model)
        set_trainable(p for n, p in model.named_parameters() if "lora_" in n)
        return model


METHOD = LoRA
