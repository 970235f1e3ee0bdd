"""The class-conditional DDPM pieces every stage shares: model construction, noise schedule, loss."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dpbench.errors import UserError


def quiet_diffusers() -> None:
    """diffusers logs a float32-casting notice on every ``.to(dtype)``; keep warnings and errors only."""
    from diffusers.utils import logging

    logging.set_verbosity_error()


def build_unet(preset_name: str, image_size: int, channels: int, num_classes: int):
    from diffusers import UNet2DModel

    from dpbench.registry import PRESETS

    quiet_diffusers()

    preset = PRESETS.get(preset_name)
    if image_size % (2 ** (len(preset.block_out_channels) - 1)):
        raise UserError(
            f"data.private.image_size: {image_size} is not divisible by {2 ** (len(preset.block_out_channels) - 1)}, "
            f"which preset {preset_name!r} needs — pick another image size or preset"
        )
    return UNet2DModel(**preset.unet_config(image_size, channels, num_classes))


def make_noise_scheduler(num_train_timesteps: int = 1000, beta_schedule: str = "linear"):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule)


def num_label_rows(model: nn.Module) -> int:
    """Rows of the class embedding = classes + 1 (the last row is the null class used for guidance)."""
    return model.class_embedding.num_embeddings


def denoising_loss_rows(model: nn.Module, scheduler, x0: torch.Tensor, labels: torch.Tensor,
                        timesteps: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Per-row ε-prediction MSE, shape [rows]; every input has the same leading dimension."""
    noisy = scheduler.add_noise(x0, noise, timesteps)
    pred = model(noisy, timesteps, class_labels=labels).sample
    dtype = torch.promote_types(pred.dtype, torch.float32)  # bf16 autocast -> fp32 loss; fp64 stays fp64
    return F.mse_loss(pred.to(dtype), noise.to(dtype), reduction="none").flatten(1).mean(1)


def reset_class_embedding(model: nn.Module, num_classes: int) -> None:
    """A fresh class embedding for the private label set (``num_classes`` rows + the null row).

    Initialised from *public* information only: private class ``i`` starts at the pretrained row of
    public class ``i mod P`` — distinct rows the model already maps to distinct public shapes, so
    fine-tuning morphs shapes into private classes instead of having to break the symmetry of
    identical rows under DP noise — and the null row at the pretrained null row. A model pretrained
    without classes gets zeros (= its unconditional behaviour). No private statistic is used.
    """
    old = model.class_embedding
    dim = model.time_embedding.linear_2.out_features
    ref = next(model.parameters())
    new = nn.Embedding(num_classes + 1, dim, device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        if isinstance(old, nn.Embedding) and old.weight.shape[1] == dim and old.num_embeddings > 1:
            public = old.weight[:-1]
            new.weight[:-1] = public[torch.arange(num_classes, device=public.device) % len(public)]
            new.weight[-1] = old.weight[-1]
        else:
            new.weight.zero_()
    model.class_embedding = new
    model.register_to_config(num_class_embeds=num_classes + 1, class_embed_type=None)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
