"""Class-conditional diffusion models: presets, the noise schedule, pretraining and its cache."""

from dpbench.registry import PRESETS

PRESETS.register("tiny", "dpbench.models.presets:TINY", "~70k-param UNet with one attention block; for tests and the quickstart (16x16)")
PRESETS.register("small", "dpbench.models.presets:SMALL", "~1.1M-param UNet with attention; CPU suites at 28x28")
PRESETS.register("ddpm32", "dpbench.models.presets:DDPM32", "~36M-param DDPM CIFAR-10-style UNet (attention at 16x16); GPU, paper scale")
PRESETS.register("ldm-base", "dpbench.models.presets:PAPER_BASE", "~9M-param UNet (64,128,256, attention at two scales); GPU, MNIST/CIFAR paper-scale fine-tuning")
