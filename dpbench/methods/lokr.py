"""LoKr (peft): Kronecker-product weight update (rank-4 factor); ResNet convs + attention [tiny: 8,192 trainable]"""

from __future__ import annotations

from dpbench.methods.peft import PeftMethod


class LoKr(PeftMethod):
    name = "lokr"
    TUNER = "lokr"
    DEFAULTS = {"target": "all", "r": 4, "alpha": 4}


METHOD = LoKr
