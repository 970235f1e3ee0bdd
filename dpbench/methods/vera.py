"""VeRA (peft): shared frozen random rank-16 projections, trained scaling vectors; attention projections [tiny: 768 trainable]"""

from __future__ import annotations

from dpbench.methods.peft import PeftMethod


class VeRA(PeftMethod):
    name = "vera"
    TUNER = "vera"
    DEFAULTS = {"target": "attention", "r": 16}


METHOD = VeRA
