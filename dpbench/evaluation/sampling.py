"""Class-conditional sampling: a manual DDPM/DDIM loop (diffusers' pipelines take no class labels).

Labels are balanced over the classes (``i mod C``), never drawn from the private class histogram:
the histogram is private data, and sampling from it would release it without noise.
"""

from __future__ import annotations

import torch


def balanced_labels(num_samples: int, num_classes: int) -> torch.Tensor:
    return torch.arange(num_samples) % num_classes


def make_sampling_scheduler(kind: str, num_train_timesteps: int, beta_schedule: str):
    from diffusers import DDIMScheduler, DDPMScheduler

    cls = DDIMScheduler if kind == "ddim" else DDPMScheduler
    return cls(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, clip_sample=True)


@torch.no_grad()
def sample_images(model, labels: torch.Tensor, *, scheduler: str = "ddim", steps: int = 50, guidance_scale: float = 0.0,
                  batch_size: int = 250, seed: int = 0, device: str = "cpu", num_train_timesteps: int = 1000,
                  beta_schedule: str = "linear", progress: bool = False) -> torch.Tensor:
    """Images in [-1, 1], one per label. Guidance: ε = (1 + w)·ε(x, y) − w·ε(x, ∅), ∅ = the null class."""
    from tqdm.auto import tqdm

    model.eval()
    cfg = model.config
    shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size) if isinstance(cfg.sample_size, int) else (cfg.in_channels, *cfg.sample_size)
    null = model.class_embedding.num_embeddings - 1
    dtype = next(model.parameters()).dtype
    gen = torch.Generator(device).manual_seed(seed)
    out = []
    batches = labels.split(batch_size)
    bar = tqdm(total=len(batches) * steps, desc="  sample", unit="step", disable=not progress, leave=False, dynamic_ncols=True)
    for y in batches:
        sched = make_sampling_scheduler(scheduler, num_train_timesteps, beta_schedule)
        sched.set_timesteps(steps)
        y = y.to(device)
        x = torch.randn((len(y), *shape), generator=gen, device=device, dtype=dtype)
        for t in sched.timesteps:
            if guidance_scale > 0:
                both = model(torch.cat([x, x]), t, class_labels=torch.cat([y, torch.full_like(y, null)])).sample
                cond, uncond = both.chunk(2)
                eps = (1 + guidance_scale) * cond - guidance_scale * uncond
            else:
                eps = model(x, t, class_labels=y).sample
            x = sched.step(eps, t, x, generator=gen).prev_sample
            bar.update(1)
        out.append(x.clamp(-1, 1).float().cpu())
    bar.close()
    return torch.cat(out)


def save_grid(images: torch.Tensor, labels: torch.Tensor, path, per_class: int = 8) -> None:
    """A PNG grid, one row per class (first ``per_class`` samples of each), written atomically."""
    import io

    from PIL import Image
    from torchvision.utils import make_grid

    from dpbench.results import write_bytes_atomic

    rows = []
    for c in sorted(labels.unique().tolist()):
        picked = images[labels == c][:per_class]
        if len(picked) < per_class:
            picked = torch.cat([picked, -torch.ones(per_class - len(picked), *images.shape[1:])])
        rows.append(picked)
    grid = make_grid(torch.cat(rows), nrow=per_class, padding=1, pad_value=1.0, normalize=True, value_range=(-1, 1))
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    if array.shape[2] == 1:
        array = array[:, :, 0]
    image = Image.fromarray(array)
    scale = max(1, 256 // image.width)
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())
