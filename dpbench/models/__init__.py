"""Class-conditional diffusion models: presets, the noise schedule, pretraining and its cache."""

from dpbench.registry import PRESETS

PRESETS.register("tiny", "dpbench.models.presets:TINY", "0.18M-param UNet (16, 32 channels) with attention; tests and the quickstart")
PRESETS.register("small", "dpbench.models.presets:SMALL", "1.2M-param UNet (32, 64, 64) with attention; CPU benchmarks at 28x28")
PRESETS.register("ddpm32", "dpbench.models.presets:DDPM32", "36M-param DDPM CIFAR-10-style UNet (attention at 16x16); GPU, paper scale")
PRESETS.register("ldm-base", "dpbench.models.presets:PAPER_BASE", "16M-param UNet (64, 128, 256, attention at two scales); GPU, MNIST paper scale")
