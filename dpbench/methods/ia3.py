"""IA3 (peft): one learned scale per output channel; ResNet convs + attention [tiny: 928 trainable]"""

from __future__ import annotations

from dpbench.methods.peft import PeftMethod


class IA3(PeftMethod):
    name = "ia3"
    TUNER = "ia3"
    DEFAULTS = {"target": "all", "feedforward_modules": []}


METHOD = IA3
