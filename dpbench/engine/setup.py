"""The one way a model is made ready to train: the method looked up, the model prepared, the trainer built.

A run, the audit, the memory/time probe and the selfcheck all start training the same way — a fresh copy
of a pretrained model prepared for one method (:func:`dpbench.engine.trainer.prepare_model`, in the
order that is safe for peft + Opacus), under a fixed torch seed, then a :class:`DPTrainer` (or one of
the deliberately broken loops of dpbench/engine/faults.py) over it. A :class:`ModelRecipe` is that
start written once: what to prepare (:meth:`ModelRecipe.prepare`) and how to train it
(:meth:`ModelRecipe.trainer`). Nothing here is a run's privacy setting: the DP step, the budget and
the seed travel in a :class:`TrainerSetup`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn

from dpbench.engine.trainer import DPTrainer, TrainerSetup, prepare_model


@dataclass(frozen=True)
class ModelRecipe:
    """A pretrained model, the method that fine-tunes it, the number of classes, the device, the dtype,
    and the noise scheduler its trainers use (``None``: the default DDPM scheduler)."""

    pretrained: nn.Module
    method: Any  # a dpbench.methods.base.Method
    num_classes: int
    device: torch.device
    scheduler: Any = None
    dtype: torch.dtype = torch.float32

    def __post_init__(self):
        object.__setattr__(self, "device", torch.device(self.device))

    @classmethod
    def of(cls, pretrained: nn.Module, method_name: str, options: Optional[dict], num_classes: int, device,
           dtype: torch.dtype = torch.float32, scheduler=None) -> "ModelRecipe":
        """The recipe for the registered method ``method_name`` with ``options`` (validated here)."""
        from dpbench.registry import METHODS

        return cls(pretrained, METHODS.get(method_name)(options), num_classes, device, scheduler, dtype)

    def prepare(self, seed: Optional[int] = None) -> nn.Module:
        """A fresh copy of the pretrained model set up for the method; ``seed`` (if given) seeds torch
        first, so the method's new parameters start the same in every process that prepares it."""
        if seed is not None:
            torch.manual_seed(seed)
        return prepare_model(self.pretrained, self.method, self.num_classes, self.device, self.dtype)

    def trainer(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, setup: TrainerSetup, *,
                fault: Optional[str] = None, canaries=None, distributed=None) -> DPTrainer:
        """A trainer of ``model`` (from :meth:`prepare`) on ``images``/``labels``; ``fault`` names a broken
        loop of dpbench/engine/faults.py (the negative controls), ``None`` the real one."""
        from dpbench.engine.faults import trainer_class

        return trainer_class(fault)(model, self.noise_scheduler(), images, labels, setup, self.device,
                                    canaries=canaries, distributed=distributed)

    def noise_scheduler(self):
        from dpbench.models.diffusion import make_noise_scheduler

        return self.scheduler if self.scheduler is not None else make_noise_scheduler()
