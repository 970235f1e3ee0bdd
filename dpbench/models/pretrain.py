"""Public pretraining and its cache; loading user-supplied pretrained models.

``dpbench pretrain SUITE`` trains the suite's preset non-privately on the suite's *public* dataset
and saves it with ``save_pretrained`` (safetensors) under ``<cache>/pretrained/<key>/``, where the
key hashes everything that determines the weights (preset, image size, channels, public dataset and
its options, noise schedule, pretraining settings). Every run of a suite, and every later suite with
the same settings, reuses it. ``model.pretrained:`` loads a diffusers directory or hub id instead.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dpbench.config.suite import Suite, stable_hash
from dpbench.errors import UserError
from dpbench.models.diffusion import build_unet, denoising_loss_rows, make_noise_scheduler, quiet_diffusers

PRETRAIN_FORMAT = 1
PUBLIC_LABEL_DROPOUT = 0.1  # trains the null-class row, so guidance and unconditional sampling work


def cache_root(override: str | None = None) -> Path:
    return Path(override or os.environ.get("DPBENCH_CACHE") or Path.home() / ".cache" / "dpbench").expanduser()


@dataclass
class PretrainedModel:
    model: torch.nn.Module
    source: str  # "cache:<key>", "trained:<key>" or "pretrained:<path or id>"
    path: str
    cache_hit: bool
    seconds: float


def pretrain_spec(suite: Suite, public_num_classes: int) -> dict:
    from dpbench.registry import PRESETS

    public = suite.data.public
    return {
        "format": PRETRAIN_FORMAT,
        "preset": PRESETS.get(suite.model.preset).as_dict(),
        "image_size": public.image_size,
        "channels": public.channels,
        "public": {"name": public.name, "options": public.options, "num_classes": public_num_classes},
        "schedule": {"num_train_timesteps": suite.model.num_train_timesteps, "beta_schedule": suite.model.beta_schedule},
        "pretrain": suite.pretrain.model_dump(),
        "label_dropout": PUBLIC_LABEL_DROPOUT,
    }


def load_pretrained(suite: Suite, *, data_root: str | None = None, cache_dir: str | None = None,
                    device: str = "cpu", progress: bool = True, force: bool = False) -> PretrainedModel:
    """The suite's pretrained model: from ``model.pretrained``, from the cache, or trained now."""
    quiet_diffusers()
    if suite.model.pretrained:
        return _from_user(suite)
    from dpbench.data.base import dataset_num_classes, load_dataset

    public = suite.data.public
    root = suite.data_root(public, data_root)
    num_classes = dataset_num_classes(public, root)
    return pretrain_cached(suite, pretrain_spec(suite, num_classes),
                           lambda: load_dataset(public, root, "train", download=suite.data.download), num_classes,
                           cache_dir=cache_dir, device=device, progress=progress, force=force)


def pretrain_cached(suite: Suite, spec: dict, load_images, num_classes: int, *, cache_dir: str | None = None,
                    device: str = "cpu", progress: bool = True, force: bool = False) -> PretrainedModel:
    """The model pretrained on ``load_images()`` with the suite's settings, cached under the hash of ``spec``
    (which must name everything that determines the weights, the data included)."""
    key = stable_hash(spec)
    path = cache_root(cache_dir) / "pretrained" / key
    if path.is_dir() and not force:
        from diffusers import UNet2DModel

        start = time.perf_counter()
        model = UNet2DModel.from_pretrained(str(path))
        return PretrainedModel(model, f"cache:{key}", str(path), True, time.perf_counter() - start)
    images, labels = load_images()
    start = time.perf_counter()
    model, final_loss = pretrain(suite, images, labels, num_classes, device=device, progress=progress)
    seconds = time.perf_counter() - start
    _save_atomic(model, path, {**spec, "final_loss": final_loss, "seconds": seconds, "num_examples": len(images)})
    model = model.cpu()
    return PretrainedModel(model, f"trained:{key}", str(path), False, seconds)


def pretrain(suite: Suite, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
             device: str = "cpu", progress: bool = True) -> tuple[torch.nn.Module, float]:
    """Plain (non-private) class-conditional DDPM training on public data."""
    from tqdm.auto import tqdm

    settings = suite.pretrain
    torch.manual_seed(settings.seed)
    model = build_unet(suite.model.preset, images.shape[-1], images.shape[1], num_classes).to(device)
    scheduler = make_noise_scheduler(suite.model.num_train_timesteps, suite.model.beta_schedule)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr)
    # warm-up over 5% of the steps (at least 2: OneCycleLR divides by the warm-up length)
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr, total_steps=settings.steps,
                                                      pct_start=min(0.5, max(0.05, 2.0 / settings.steps)))
    gen = torch.Generator().manual_seed(settings.seed)
    images, labels = images.to(device), labels.to(device)
    model.train()
    losses = []
    bar = tqdm(range(settings.steps), desc=f"pretrain {suite.model.preset} on {suite.data.public.name}",
               unit="step", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        idx = torch.randint(0, len(images), (settings.batch_size,), generator=gen).to(device)
        x, y = images[idx], labels[idx].clone()
        y[torch.rand(len(y), generator=gen).to(device) < PUBLIC_LABEL_DROPOUT] = num_classes  # null class
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x),), generator=gen).to(device)
        noise = torch.randn(x.shape, generator=gen).to(device)
        loss = denoising_loss_rows(model, scheduler, x, y, t, noise).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        losses.append(loss.item())
        if len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / 20:.4f}")
    model.eval()
    tail = losses[-max(1, len(losses) // 10):]
    return model, sum(tail) / len(tail)


def _save_atomic(model, path: Path, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / "dpbench_pretrain.json").write_text(json.dumps(meta, indent=2, default=str))
        if path.exists():  # --force: replace the old entry
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _from_user(suite: Suite) -> PretrainedModel:
    from diffusers import UNet2DModel

    source = suite.model.pretrained
    start = time.perf_counter()
    errors = []
    for subfolder in (None, "unet"):
        try:
            model = UNet2DModel.from_pretrained(source, subfolder=subfolder)
            break
        except Exception as err:  # diffusers raises OSError/EnvironmentError/HTTP errors
            errors.append(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    else:
        raise UserError(
            f"model.pretrained: could not load {source!r} with UNet2DModel.from_pretrained ({errors[0]}) — give a "
            f"local diffusers directory (with config.json and diffusion_pytorch_model.safetensors, at its root or "
            f"under unet/), or, on a machine with internet, download the hub id first "
            f"(`huggingface-cli download {source} --local-dir DIR`) and set model.pretrained: DIR"
        )
    cfg = model.config
    private = suite.data.private
    if cfg.sample_size not in (private.image_size, [private.image_size] * 2) or cfg.in_channels != private.channels:
        raise UserError(
            f"model.pretrained: {source!r} is for {cfg.sample_size}px, {cfg.in_channels} channels but data.private is "
            f"{private.image_size}px, {private.channels} channels — set data.private.image_size/channels to match"
        )
    return PretrainedModel(model, f"pretrained:{source}", str(source), True, time.perf_counter() - start)
