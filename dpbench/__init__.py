"""dpbench: benchmark differentially private, parameter-efficient fine-tuning of diffusion models."""

__version__ = "0.2.0"
