"""FourierFT (peft): 64 trained spectral coefficients per layer, inverse-FFT to the update; attention projections [tiny: 1,024 trainable]"""

from __future__ import annotations

from dpbench.methods.peft import PeftMethod


class FourierFT(PeftMethod):
    name = "fourierft"
    TUNER = "fourierft"
    DEFAULTS = {"target": "attention", "n_frequency": 64}


METHOD = FourierFT
