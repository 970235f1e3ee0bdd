"""Feature backbones for FID / precision / recall, and the one entry point :func:`extract_features`.

Two backbones are built in (registered in :mod:`dpbench.evaluation` as ``FID_BACKBONES``):

``random_cnn``
    A fixed-architecture CNN whose weights are drawn from a fixed seed by its own ``torch.Generator``
    (independent of the global RNG state and of the run seed). Works everywhere, offline, in well under a
    second per thousand images on CPU. **Its FID numbers are comparable only to other numbers computed by
    dpbench with this same backbone — never to FID values in the literature**, which use Inception-v3.

``inception``
    The standard FID Inception-v3 (pool3, 2048-d), via ``torch-fidelity``'s ``FeatureExtractorInceptionV3``
    (``pip install 'dpbench[fid]'``). Weights come from ``$DPBENCH_INCEPTION_WEIGHTS``, else the torch hub
    cache (``<torch hub dir>/checkpoints/weights-inception-2015-12-05-6726825d.pth``, where torch-fidelity
    downloads them; pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``, the same TF graph in the same
    layout, is accepted too), else torch-fidelity downloads them (unless ``$DPBENCH_OFFLINE`` is set).

A backbone entry is a factory ``factory(device) -> fn`` where ``fn(images)`` maps a float32 batch in
[-1, 1], ``[B, C, H, W]`` on ``device``, to a ``[B, D]`` tensor. Plug-ins can be added with
``FID_BACKBONES.add(name, factory, description)``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch
import torch.nn.functional as F

from dpbench.errors import UserError

__all__ = [
    "extract_features",
    "RandomCNN",
    "load_random_cnn",
    "load_inception",
    "inception_weights_path",
    "images_to_uint8",
    "RANDOM_CNN_SEED",
    "INCEPTION_WEIGHTS_ENV",
]

Backbone = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------------------
# Common entry point
# --------------------------------------------------------------------------------------------------------

def extract_features(
    backbone: str,
    images: Union[torch.Tensor, np.ndarray],
    device: Union[str, torch.device] = "cpu",
    batch_size: int = 256,
) -> np.ndarray:
    """Features of ``images`` (float, in [-1, 1], ``[N, C, H, W]`` with C in {1, 3}) as float64 ``[N, D]``.

    ``backbone`` is a name registered in ``dpbench.registry.FID_BACKBONES`` (``random_cnn``, ``inception``).
    Images may live on any device; they are moved batch by batch to ``device``.
    """
    from dpbench.registry import FID_BACKBONES

    factory = FID_BACKBONES.get(backbone)
    images = _check_images(images)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = torch.device(device)
    fn = factory(device)
    out = []
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device=device, dtype=torch.float32)
            feats = fn(batch)
            if feats.dim() != 2 or feats.shape[0] != batch.shape[0]:
                raise RuntimeError(f"FID backbone {backbone!r} returned shape {tuple(feats.shape)}, expected [B, D]")
            out.append(feats.detach().to("cpu", torch.float64).numpy())
    return np.concatenate(out, axis=0)


def _check_images(images: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor or numpy array, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, C, H, W] with C in (1, 3), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("no images to extract features from")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [-1, 1], got dtype {images.dtype}")
    return images


def _to_rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


# --------------------------------------------------------------------------------------------------------
# random_cnn
# --------------------------------------------------------------------------------------------------------

RANDOM_CNN_SEED = 20_240_601
"""Seed of the ``random_cnn`` weights. Changing it (or the architecture) changes every random_cnn FID."""

# (out_channels, stride) of the 3x3 conv layers; 32x32 input -> 32, 16, 8, 4.
_RANDOM_CNN_LAYERS = ((32, 1), (64, 2), (128, 2), (192, 2))
_RANDOM_CNN_POOLED = (2, 3)  # layers whose activations are average- and max-pooled into the features
RANDOM_CNN_SIZE = 32


class RandomCNN:
    """A fixed random CNN feature extractor (``random_cnn``): 640 features (avg + max pooling of 2 layers).

    Images are resized to 32x32 (bilinear, antialiased) and made 3-channel; four 3x3 conv + ReLU layers
    (32, 64, 128, 192 channels, strides 1, 2, 2, 2) with He-normal weights drawn on CPU from
    ``torch.Generator().manual_seed(RANDOM_CNN_SEED)``; features are the global average and global max of
    the last two layers' activations. The weights never depend on the global RNG or on the run seed, so the
    features are identical across processes and runs (on the same device / thread count; across devices
    they agree to float32 rounding).

    FID computed with these features is only comparable to other dpbench numbers computed with
    ``random_cnn`` — never to FID values in the literature (which use Inception-v3).
    """

    def __init__(self, device: Union[str, torch.device] = "cpu"):
        g = torch.Generator(device="cpu").manual_seed(RANDOM_CNN_SEED)
        self.weights: list[tuple[torch.Tensor, torch.Tensor, int]] = []
        in_ch = 3
        for out_ch, stride in _RANDOM_CNN_LAYERS:
            fan_in = in_ch * 9
            w = torch.randn(out_ch, in_ch, 3, 3, generator=g, dtype=torch.float32) * (2.0 / fan_in) ** 0.5
            b = (torch.rand(out_ch, generator=g, dtype=torch.float32) - 0.5) * 0.2
            self.weights.append((w.to(device), b.to(device), stride))
            in_ch = out_ch
        self.device = torch.device(device)
        self.dim = 2 * sum(_RANDOM_CNN_LAYERS[i][0] for i in _RANDOM_CNN_POOLED)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = _to_rgb(images.to(self.device, torch.float32))
        if x.shape[-2:] != (RANDOM_CNN_SIZE, RANDOM_CNN_SIZE):
            x = F.interpolate(x, size=(RANDOM_CNN_SIZE, RANDOM_CNN_SIZE), mode="bilinear", align_corners=False, antialias=True)
        feats = []
        for i, (w, b, stride) in enumerate(self.weights):
            x = F.relu(F.conv2d(x, w, b, stride=stride, padding=1))
            if i in _RANDOM_CNN_POOLED:
                feats.append(x.mean(dim=(2, 3)))
                feats.append(x.amax(dim=(2, 3)))
        return torch.cat(feats, dim=1)


_RANDOM_CNN_CACHE: dict[str, RandomCNN] = {}


def load_random_cnn(device: Union[str, torch.device] = "cpu") -> RandomCNN:
    """The ``random_cnn`` backbone on ``device`` (cached per device)."""
    key = str(torch.device(device))
    if key not in _RANDOM_CNN_CACHE:
        _RANDOM_CNN_CACHE[key] = RandomCNN(device)
    return _RANDOM_CNN_CACHE[key]


# --------------------------------------------------------------------------------------------------------
# inception (torch-fidelity)
# --------------------------------------------------------------------------------------------------------

INCEPTION_WEIGHTS_ENV = "DPBENCH_INCEPTION_WEIGHTS"
OFFLINE_ENV = "DPBENCH_OFFLINE"
# torch-fidelity's file name (torch.hub names the cached file after the URL's basename).
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
# pytorch-fid's conversion of the same TF graph; same state-dict layout (strictly checked on load).
PYTORCH_FID_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL_FALLBACK = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)


def _import_torch_fidelity():
    try:
        from torch_fidelity import feature_extractor_inceptionv3 as tf_inception
    except ImportError as err:
        raise UserError(
            "the 'inception' FID backbone needs torch-fidelity: pip install 'dpbench[fid]' "
            f"(or use evaluation.fid_backbone: random_cnn) [{err}]"
        ) from None
    return tf_inception


def _inception_url() -> str:
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        return URL_INCEPTION_V3
    except ImportError:
        return INCEPTION_URL_FALLBACK


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def inception_weights_path(allow_download: bool | None = None) -> Path:
    """Path of the FID Inception-v3 weights, downloading them with torch-fidelity's URL if allowed.

    Order: ``$DPBENCH_INCEPTION_WEIGHTS`` (must exist if set), the torch hub cache
    (``torch.hub.get_dir()/checkpoints/`` — torch-fidelity's file, then pytorch-fid's), then a download into
    that cache (``allow_download=None`` means "unless ``$DPBENCH_OFFLINE`` is set"). Raises
    :class:`UserError` naming the expected path, the URL and the environment variable otherwise.
    """
    env = os.environ.get(INCEPTION_WEIGHTS_ENV, "").strip()
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise UserError(
                f"${INCEPTION_WEIGHTS_ENV} points to {path}, which does not exist; download "
                f"{_inception_url()} there, or unset {INCEPTION_WEIGHTS_ENV} to use the torch hub cache"
            )
        return path

    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    expected = checkpoints / INCEPTION_FILE
    for candidate in (expected, checkpoints / PYTORCH_FID_INCEPTION_FILE):
        if candidate.is_file():
            return candidate

    url = _inception_url()
    hint = (
        f"FID Inception weights not found at {expected}; download {url} to that path "
        f"(or set {INCEPTION_WEIGHTS_ENV}=/path/to/{INCEPTION_FILE}), or use evaluation.fid_backbone: random_cnn"
    )
    if allow_download is None:
        allow_download = not _env_flag(OFFLINE_ENV)
    if not allow_download:
        raise UserError(f"{hint} (downloads are off: ${OFFLINE_ENV} is set)")
    try:
        checkpoints.mkdir(parents=True, exist_ok=True)
        with contextlib.redirect_stdout(sys.stderr):
            # torch-fidelity's own download: its URL, into the torch hub cache, under the URL's file name.
            torch.hub.download_url_to_file(url, str(expected), progress=False)
    except Exception as err:  # no network, proxy, permissions... — all user-fixable
        with contextlib.suppress(OSError):
            if expected.exists() and expected.stat().st_size == 0:
                expected.unlink()
        raise UserError(f"{hint} (download failed: {type(err).__name__}: {err})") from None
    return expected


def images_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float ``[B, C, H, W]`` (C in 1, 3) -> uint8 [0, 255] ``[B, 3, H, W]`` as torch-fidelity expects."""
    x = _to_rgb(images)
    return ((x.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


class InceptionV3:
    """The ``inception`` backbone: torch-fidelity's FID Inception-v3, pool3 features (2048-d).

    Inputs in [-1, 1] are converted to uint8 [0, 255] 3-channel images at their native resolution;
    torch-fidelity's extractor then resizes them to 299x299 with its TensorFlow-1.x-compatible bilinear
    interpolation (exactly what ``torch_fidelity.calculate_metrics`` does with uint8 datasets), so the
    numbers match torch-fidelity / the reference TF implementation.
    """

    dim = 2048

    def __init__(self, device: Union[str, torch.device] = "cpu", weights: Union[str, Path, None] = None):
        tf_inception = _import_torch_fidelity()
        path = Path(weights) if weights is not None else inception_weights_path()
        try:
            model = tf_inception.FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
            )
        except Exception as err:  # corrupt / truncated / wrong file
            raise UserError(
                f"could not load FID Inception weights from {path} ({type(err).__name__}: {str(err)[:200]}); "
                f"delete it and download {_inception_url()} again, or point {INCEPTION_WEIGHTS_ENV} at a good copy"
            ) from None
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.weights_path = path

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images_to_uint8(images.to(self.device))
        (feats,) = self.model(x)
        return feats


_INCEPTION_CACHE: dict[tuple[str, str], InceptionV3] = {}


def load_inception(device: Union[str, torch.device] = "cpu") -> InceptionV3:
    """The ``inception`` backbone on ``device`` (cached per device and weights file)."""
    _import_torch_fidelity()
    path = inception_weights_path()
    key = (str(torch.device(device)), str(path.resolve()))
    if key not in _INCEPTION_CACHE:
        _INCEPTION_CACHE[key] = InceptionV3(device, weights=path)
    return _INCEPTION_CACHE[key]
