"""LoHa (peft): Hadamard product of two rank-4 factorisations as the weight update; ResNet convs + attention [tiny: 47,232 trainable]"""

from __future__ import annotations

from dpbench.methods.peft import PeftMethod


class LoHa(PeftMethod):
    name = "loha"
    TUNER = "loha"
    DEFAULTS = {"target": "all", "r": 4, "alpha": 4}


METHOD = LoHa
