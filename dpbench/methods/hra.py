"""HRA (peft): product of 4 Householder reflections applied to the weight; ResNet convs + attention [tiny: 19,904 trainable]"""

from __future__ import annotations

from dpbench.methods.peft import PeftMethod


class HRA(PeftMethod):
    name = "hra"
    TUNER = "hra"
    DEFAULTS = {"target": "all", "r": 4}


METHOD = HRA
