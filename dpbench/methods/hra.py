"""HRA (peft): product of 4 Householder reflections applied to the weight; attention projections (convs: target all) [tiny: 2,048 trainable]"""

from __future__ import annotations

from dpbench.methods.peft import PeftMethod


class HRA(PeftMethod):
    name = "hra"
    TUNER = "hra"
    DEFAULTS = {"target": "attention", "r": 4}


METHOD = HRA
