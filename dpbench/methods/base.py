"""The method interface: which parameters of a pretrained UNet train, and what (if anything) is added.

A method never sees data, optimisers, clipping, noise or accounting: those belong to the one DP loop
(dpbench/engine/trainer.py), so the privacy budget is enforced identically for every method. The
loop calls :meth:`Method.prepare` with the pretrained model *already on its device* and with every
parameter frozen (``requires_grad=False``); the method injects its modules (if any) and marks its
parameters trainable. Injecting after the move matters: peft adapters created before ``.to(device)``
can be silently left out of the optimizer's parameter set (opacus#820). The class embedding for the
private labels is made trainable by the loop for every method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch.nn as nn
from pydantic import BaseModel, ConfigDict, ValidationError

from dpbench.errors import UserError


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Method(ABC):
    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: dict | None = None):
        try:
            self.options = self.Options.model_validate(options or {})
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            msg = "unknown option" if first["type"] == "extra_forbidden" else first["msg"]
            allowed = ", ".join(self.Options.model_fields) or "none"
            raise UserError(f"methods[{self.name}].options.{field}: {msg} — allowed options: {allowed}") from None

    @abstractmethod
    def prepare(self, model: nn.Module) -> nn.Module:
        """Make this method's parameters trainable (injecting modules if needed); return the model."""


def set_trainable(params, flag: bool = True) -> None:
    for p in params:
        p.requires_grad_(flag)


# Layers that adapter methods (LoRA, LoDA) attach to, by the names diffusers gives them in UNet2DModel.
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
RESNET_CONVS = ("conv1", "conv2")
TARGET_GROUPS = {"attention": ATTENTION_PROJECTIONS, "conv": RESNET_CONVS, "all": ATTENTION_PROJECTIONS + RESNET_CONVS}


def select_layers(model: nn.Module, target: str) -> list[str]:
    """Full names of the nn.Linear / nn.Conv2d modules in a target group ("attention", "conv", "all")."""
    suffixes = TARGET_GROUPS[target]
    names = [
        name for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d)) and any(name == s or name.endswith("." + s) for s in suffixes)
    ]
    if not names:
        raise UserError(f"the model has no layers in target group {target!r} — choose another target")
    return names
