"""Public pretraining and its cache; loading user-supplied pretrained models.

``dpbench pretrain SUITE`` trains the suite's preset non-privately on the suite's *public* dataset
and saves it with ``save_pretrained`` (safetensors) under ``<cache>/pretrained/<key>/``, where the
key hashes everything that determines the weights (preset, image size, channels, public dataset and
its options, noise schedule, pretraining settings). Every run of a suite, and every later suite with
the same settings, reuses it. ``model.pretrained:`` loads a diffusers directory or hub id instead.

At paper scale (ImageNet32: 1.28M images) the public set stays in host memory and each batch is moved
to the device as it is drawn (the whole set as fp32 would take 15 GB of GPU memory); the forward runs
under bf16 autocast where the GPU supports it (``pretrain.mixed_precision: auto``); an optional EMA of
the weights (``pretrain.ema_decay``) is what gets saved. Like fine-tuning, pretraining checkpoints its
complete state (weights, EMA, optimiser, learning-rate schedule, random stream) atomically every
``pretrain.checkpoint_seconds`` next to the cache entry, and a killed pretraining resumes from it
bit-exactly (loaded with ``weights_only=True``); the checkpoint is deleted once the model is saved.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dpbench.config.hashing import hashed_settings, stable_hash
from dpbench.config.schema import PretrainSettings, Suite
from dpbench.errors import UserError
from dpbench.models.diffusion import build_unet, denoising_loss_rows, make_noise_scheduler, quiet_diffusers
from dpbench.results import write_bytes_atomic

log = logging.getLogger("dpbench")
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
        "pretrain": hashed_settings("pretrain", suite.pretrain.model_dump()),
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
    checkpoint = path.parent / f".{key}.checkpoint.pt"
    if force:
        checkpoint.unlink(missing_ok=True)
    model, final_loss = pretrain(suite, images, labels, num_classes, device=device, progress=progress,
                                 checkpoint=checkpoint)
    seconds = time.perf_counter() - start
    _save_atomic(model, path, {**spec, "final_loss": final_loss, "seconds": seconds, "num_examples": len(images)})
    checkpoint.unlink(missing_ok=True)
    model = model.cpu()
    return PretrainedModel(model, f"trained:{key}", str(path), False, seconds)


def _autocast_dtype(device: torch.device, mixed_precision: str) -> torch.dtype | None:
    if mixed_precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def pretrain(suite: Suite, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
             device: str = "cpu", progress: bool = True, checkpoint: Path | None = None) -> tuple[torch.nn.Module, float]:
    """Plain (non-private) class-conditional DDPM training on public data, resumable from ``checkpoint``."""
    from tqdm.auto import tqdm

    settings = suite.pretrain
    run = _Pretraining(suite, tuple(images.shape), num_classes, torch.device(device))
    if checkpoint is not None and checkpoint.is_file():
        run.resume(checkpoint)
        log.info("pretraining resumed from step %d/%d", run.step, settings.steps)
    run.model.train()
    bar = tqdm(total=settings.steps, initial=run.step, desc=f"pretrain {suite.model.preset} on {suite.data.public.name}",
               unit="step", disable=not progress, dynamic_ncols=True)
    last_checkpoint = time.monotonic()
    while run.step < settings.steps:
        run.train_step(images, labels)
        bar.update(1)
        if len(run.losses) % 20 == 0:
            bar.set_postfix(loss=f"{sum(run.losses[-20:]) / 20:.4f}")
        if checkpoint is not None and run.step < settings.steps and \
                time.monotonic() - last_checkpoint >= settings.checkpoint_seconds:
            run.save(checkpoint)
            last_checkpoint = time.monotonic()
    bar.close()
    return run.finish()


def _lr_schedule(optimizer: torch.optim.Optimizer, settings: PretrainSettings):
    """Warm-up over 5% of the steps (at least 2: OneCycleLR divides by the warm-up length, and by the rest:
    below 4 steps it has no schedule to give — a constant lr, e.g. for --smoke)."""
    if settings.steps >= 4:
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr, total_steps=settings.steps,
                                                   pct_start=min(0.5, max(0.05, 2.0 / settings.steps)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


class _Pretraining:
    """One pretraining's complete state — weights, EMA, optimiser, learning-rate schedule, random stream, losses
    and step: what a checkpoint holds and a resume restores bit-exactly — and its training step."""

    def __init__(self, suite: Suite, image_shape: tuple, num_classes: int, device: torch.device):
        settings = self.settings = suite.pretrain
        self.device, self.num_classes = device, num_classes
        torch.manual_seed(settings.seed)
        self.model = build_unet(suite.model.preset, image_shape[-1], image_shape[1], num_classes).to(device)
        self.scheduler = make_noise_scheduler(suite.model.num_train_timesteps, suite.model.beta_schedule)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=settings.lr)
        self.lr_schedule = _lr_schedule(self.optimizer, settings)
        self.gen = torch.Generator().manual_seed(settings.seed)  # on the host: the same stream on every device
        self.params = list(self.model.parameters())
        self.ema = [p.detach().clone() for p in self.params] if settings.ema_decay is not None else None
        self.autocast = _autocast_dtype(device, settings.mixed_precision)
        self.losses: list[float] = []
        self.step = 0

    def resume(self, checkpoint: Path) -> None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.gen.set_state(state["generator"])
        if self.ema is not None:
            self.ema = [e.to(self.device) for e in state["ema"]]
        self.losses, self.step = list(state["losses"]), int(state["step"])

    def save(self, checkpoint: Path) -> None:
        buffer = io.BytesIO()
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "lr_schedule": self.lr_schedule.state_dict(), "generator": self.gen.get_state(),
                    "ema": [e.cpu() for e in self.ema] if self.ema is not None else None, "losses": self.losses,
                    "step": self.step}, buffer)
        write_bytes_atomic(checkpoint, buffer.getvalue())

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        settings, device, gen = self.settings, self.device, self.gen
        idx = torch.randint(0, len(images), (settings.batch_size,), generator=gen)
        x, y = images[idx].to(device, non_blocking=True), labels[idx].clone()  # the set stays on the host
        y[torch.rand(len(y), generator=gen) < PUBLIC_LABEL_DROPOUT] = self.num_classes  # null class
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(x),), generator=gen)
        noise = torch.randn(x.shape, generator=gen)
        with torch.autocast(device.type, dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None):
            loss = denoising_loss_rows(self.model, self.scheduler, x, y.to(device), t.to(device), noise.to(device)).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.lr_schedule.step()
        if self.ema is not None:
            decay = min(settings.ema_decay, (1 + self.step) / (10 + self.step))
            with torch.no_grad():
                for e, p in zip(self.ema, self.params):
                    e.lerp_(p.detach(), 1 - decay)
        self.losses.append(loss.item())
        self.step += 1

    def finish(self) -> tuple[torch.nn.Module, float]:
        """The trained model (its EMA weights, when kept) in eval mode, and the mean loss of the last 10% of steps."""
        if self.ema is not None:
            with torch.no_grad():
                for p, e in zip(self.params, self.ema):
                    p.copy_(e)
        self.model.eval()
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return self.model, sum(tail) / len(tail)


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
