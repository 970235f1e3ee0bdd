"""OFT (peft): block-diagonal orthogonal rotation of the weight (blocks of 4); attention projections (convs: target all) [tiny: 768 trainable]"""

from __future__ import annotations

from dpbench.methods.peft import PeftMethod


class OFT(PeftMethod):
    name = "oft"
    TUNER = "oft"
    DEFAULTS = {"target": "attention", "r": 0, "oft_block_size": 4}


METHOD = OFT
