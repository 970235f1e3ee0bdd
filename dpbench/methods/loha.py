"""LoHa (peft): Hadamard product of two rank-4 factorisations as the weight update; attention projections (convs: target all) [tiny: 8,192 trainable]"""

from __future__ import annotations

from dpbench.methods.peft import PeftMethod


class LoHa(PeftMethod):
    name = "loha"
    TUNER = "loha"
    DEFAULTS = {"target": "attention", "r": 4, "alpha": 4}


METHOD = LoHa
