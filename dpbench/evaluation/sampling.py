"""Class-conditional sampling: a manual DDPM/DDIM loop (diffusers' pipelines take no class labels).

Labels are balanced over the classes (``i mod C``), never drawn from the private class histogram:
the histogram is private data, and sampling from it would release it without noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def balanced_labels(num_samples: int, num_classes: int) -> torch.Tensor:
    return torch.arange(num_samples) % num_classes


def make_sampling_scheduler(kind: str, num_train_timesteps: int, beta_schedule: str):
    from diffusers import DDIMScheduler, DDPMScheduler

    cls = DDIMScheduler if kind == "ddim" else DDPMScheduler
    return cls(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, clip_sample=True)


@dataclass(frozen=True)
class SamplerSettings:
    """How images are sampled: the sampling ``scheduler`` (``ddim`` or ``ddpm``) over ``steps`` steps,
    classifier-free guidance of weight ``guidance_scale`` (0: none), ``batch_size`` images at a time,
    and the training noise schedule the model was trained with."""

    scheduler: str = "ddim"
    steps: int = 50
    guidance_scale: float = 0.0
    batch_size: int = 250
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"


@torch.no_grad()
def sample_images(model, labels: torch.Tensor, settings: SamplerSettings = SamplerSettings(), *, seed: int = 0,
                  device: str = "cpu", progress: bool = False) -> torch.Tensor:
    """Images in [-1, 1], one per label. Guidance: ε = (1 + w)·ε(x, y) − w·ε(x, ∅), ∅ = the null class."""
    from tqdm.auto import tqdm

    s = settings
    steps, guidance_scale = s.steps, s.guidance_scale
    model.eval()
    cfg = model.config
    shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size) if isinstance(cfg.sample_size, int) else (cfg.in_channels, *cfg.sample_size)
    null = model.class_embedding.num_embeddings - 1
    dtype = next(model.parameters()).dtype
    gen = torch.Generator(device).manual_seed(seed)
    out = []
    batches = labels.split(s.batch_size)
    bar = tqdm(total=len(batches) * steps, desc="  sample", unit="step", disable=not progress, leave=False, dynamic_ncols=True)
    for y in batches:
        sched = make_sampling_scheduler(s.scheduler, s.num_train_timesteps, s.beta_schedule)
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


def save_grid(images: torch.Tensor, labels: torch.Tensor, path, per_class: int = 8, real: tuple | None = None,
              cell: int = 48, class_names: list[str] | None = None) -> None:
    """A PNG grid, one row per class labelled at the left (the first ``per_class`` samples of each), written
    atomically. ``real = (images, labels)`` puts two real images of each class at the start of its row,
    set apart by a gap under a "real" header, so a reader can judge the samples against the data."""
    import io

    from PIL import Image, ImageDraw

    from dpbench.results import write_bytes_atomic

    def tile(x: torch.Tensor) -> Image.Image:
        array = ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte()
        array = array.permute(1, 2, 0).numpy()
        img = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
        return img.convert("RGB").resize((cell, cell), Image.NEAREST)

    classes = sorted(labels.unique().tolist())
    real_cols = 2 if real is not None else 0
    label_w, gap, pad, head = 28, cell // 3 if real_cols else 0, 2, 16
    width = label_w + real_cols * (cell + pad) + gap + per_class * (cell + pad)
    height = head + len(classes) * (cell + pad)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x0 = label_w + real_cols * (cell + pad) + gap
    if real_cols:
        draw.text((label_w, 2), "real", fill="black")
    draw.text((x0, 2), "samples", fill="black")
    for row, c in enumerate(classes):
        y = head + row * (cell + pad)
        name = class_names[c] if class_names else str(c)
        draw.text((4, y + cell // 2 - 6), name, fill="black")
        if real_cols:
            picks = real[0][real[1] == c][:real_cols]
            for j, img in enumerate(picks):
                canvas.paste(tile(img), (label_w + j * (cell + pad), y))
        for j, img in enumerate(images[labels == c][:per_class]):
            canvas.paste(tile(img), (x0 + j * (cell + pad), y))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())
