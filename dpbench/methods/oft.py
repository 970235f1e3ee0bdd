"""OFT (peft): block-diagonal orthogonal rotation of the weight (blocks of 4); ResNet convs + attention [tiny: 7,464 trainable]"""

from __future__ import annotations

from dpbench.methods.peft import PeftMethod


class OFT(PeftMethod):
    name = "oft"
    TUNER = "oft"
    DEFAULTS = {"target": "all", "r": 0, "oft_block_size": 4}


METHOD = OFT
