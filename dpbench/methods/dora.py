"""DoRA (peft LoRA, use_dora): rank-4 B·A plus a learned per-output magnitude; ResNet convs + attention [tiny: 24,544 trainable]"""

from __future__ import annotations

from dpbench.methods.peft import PeftMethod


class DoRA(PeftMethod):
    name = "dora"
    TUNER = "lora"
    DEFAULTS = {"target": "all", "r": 4, "lora_alpha": 4, "use_dora": True}


METHOD = DoRA
