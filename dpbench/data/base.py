"""The dataset interface, shared conversion to the model's range and the runner-facing helpers.

Every registered dataset is an :class:`ImageDataset`: ``load`` returns ``(images, labels)`` with images
float32 ``[N, C, H, W]`` in ``[-1, 1]`` at the requested square size and channel count, and labels int64
``[N]`` in ``0..num_classes-1``. The runner goes through :func:`load_dataset`,
:func:`dataset_num_classes` and :func:`dataset_train_size`, which take a suite's ``DatasetRef``.

Loaded tensors are cached per process (a small LRU keyed by dataset, root, split, size, channels and
options), because the runner loads the same split for every run of a suite. The cached tensors are
returned as they are, not copied: treat them as read-only and ``.clone()`` before modifying in place.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from dpbench.errors import UserError
from dpbench.registry import DATASETS

if TYPE_CHECKING:
    from dpbench.config.suite import DatasetRef

SPLITS = ("train", "test")
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's convert("L")
_CACHE: "OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]]" = OrderedDict()
CACHE_SIZE = 8
# Every dataset accepts options.train_subset: the first n training examples of a fixed-seed shuffle — a
# choice that looks at no example, so it is as public as the dataset's name.
TRAIN_SUBSET = "train_subset"
ROOT_HINT = "set data.root in the suite, pass --data-root, or set $DPBENCH_DATA"


class ImageDataset(ABC):
    """One image-classification dataset. Subclasses set the four class attributes and implement ``load``."""

    name: str = ""
    num_classes: int = 0
    nominal_train_size: int = 0  # the official training-set size (0 = unknown until the data is present)
    description: str = ""
    options_allowed: tuple[str, ...] = ()  # keys accepted in DatasetRef.options

    @abstractmethod
    def load(
        self,
        root: str | None,
        split: str,
        image_size: int,
        channels: int,
        download: bool = False,
        options: dict | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """images float32 [N,C,H,W] in [-1,1] at image_size x image_size with `channels` channels
        (grayscale->RGB by repeating, RGB->gray by luminance), labels int64 [N] in 0..num_classes-1.
        split is 'train' or 'test'."""

    def train_size(self, root: str | None, options: dict | None = None) -> tuple[int, bool]:
        """(number of training examples, exact?) — the real count if the data is present at root, else
        (nominal_train_size, False). Never downloads. ``options.train_subset`` caps it."""
        options = self.check_options(options)
        try:
            n = self._present_train_size(_expand(root), options)
        except UserError:
            if not self.nominal_train_size:
                raise  # user data has no nominal size: say where it was looked for, not "0 examples"
            n = None
        n, exact = (int(n), True) if n is not None else (self.nominal_train_size, False)
        subset = options.get(TRAIN_SUBSET)
        return (min(n, subset), exact) if subset else (n, exact)

    def num_classes_for(self, root: str | None, options: dict | None = None) -> int:
        """The number of classes; for user data (imagefolder, npz) it is read from the data at root."""
        return self.num_classes

    # -- helpers for subclasses ----------------------------------------------------------------------

    def _present_train_size(self, root: str | None, options: dict) -> int | None:
        """The exact training-set size if the data is present (no download), else None or a UserError."""
        return None

    def check_options(self, options: dict | None) -> dict:
        options = dict(options or {})
        allowed = (*self.options_allowed, TRAIN_SUBSET)
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise UserError(f"dataset {self.name!r}: unknown option {unknown[0]!r} in data options — use one of: "
                            f"{', '.join(allowed)}")
        subset = options.get(TRAIN_SUBSET)
        if subset is not None and (not isinstance(subset, int) or isinstance(subset, bool) or subset < 1):
            raise UserError(f"dataset {self.name!r}: options.{TRAIN_SUBSET} must be a positive integer (got {subset!r})")
        return options

    def require_root(self, root: str | None) -> str:
        if root is None or str(root).strip() == "":
            raise UserError(f"dataset {self.name!r} needs a data folder: {ROOT_HINT}")
        return _expand(root)

    def missing_error(self, path: str, how: str | None = None) -> UserError:
        how = how or (
            "set data.download: true in the suite to fetch it with torchvision, "
            f"or place the raw files under {path}"
        )
        return UserError(f"dataset {self.name!r} not found at {path} — {how} (data root: {ROOT_HINT})")

    def download_error(self, path: str, err: BaseException) -> UserError:
        detail = " ".join(str(err).split())
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        return UserError(
            f"dataset {self.name!r}: download to {path} failed ({type(err).__name__}: {detail}) — check the "
            f"network connection, or place the raw files under {path} by hand and set data.download: false"
        )


class ArrayDataset(ImageDataset):
    """An ImageDataset whose subclasses return native arrays from ``_load_raw``; ``load`` converts and caches.

    ``_load_raw`` returns ``(x, y)``: x uint8 in 0..255 or float in [0, 1], shape ``[N, C, H, W]`` with
    C in {1, 3}; y int64 ``[N]``. ``image_size`` is passed as a hint (for procedurally rendered data).
    """

    root_mode: str = "required"  # "required" (torchvision data), "optional" (user files) or "unused"

    @abstractmethod
    def _load_raw(
        self, root: str | None, split: str, download: bool, options: dict, image_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def load(self, root, split, image_size, channels, download=False, options=None):
        options = self.check_options(options)
        _check_args(split, image_size, channels)
        root = {"required": self.require_root, "optional": _expand}.get(self.root_mode, lambda r: None)(root)
        key = _cache_key(self, root, split, image_size, channels, options)
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        x, y = self._load_raw(root, split, download, options, image_size)
        if split == "train" and options.get(TRAIN_SUBSET):
            keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[: options[TRAIN_SUBSET]]
            x, y = x[keep], torch.as_tensor(y)[keep]
        out = (to_model_range(x, image_size, channels), torch.as_tensor(y, dtype=torch.int64).reshape(-1))
        if out[0].shape[0] != out[1].shape[0]:
            raise UserError(f"dataset {self.name!r}: {out[0].shape[0]} images but {out[1].shape[0]} labels")
        _cache_put(key, out)
        return out


def to_model_range(x: torch.Tensor, image_size: int, channels: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 (0..255) or float ([0, 1]) images [N, C, H, W], C in {1, 3} -> float32 [-1, 1] at
    image_size x image_size with `channels` channels. Resizes (bilinear, antialiased) only when needed."""
    x = torch.as_tensor(x)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, C, H, W] with C in (1, 3), got shape {tuple(x.shape)}")
    n = x.shape[0]
    out = torch.empty((n, channels, image_size, image_size), dtype=torch.float32)
    luma = torch.tensor(_LUMA, dtype=torch.float32).view(1, 3, 1, 1)
    for i in range(0, n, chunk):
        b = x[i : i + chunk]
        b = b.float() / 255.0 if b.dtype == torch.uint8 else b.float()
        if b.shape[1] == 3 and channels == 1:
            b = (b * luma).sum(1, keepdim=True)
        if b.shape[-2:] != (image_size, image_size):
            b = F.interpolate(b, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
        if b.shape[1] == 1 and channels == 3:
            b = b.expand(-1, 3, -1, -1)
        out[i : i + chunk] = b.clamp(0.0, 1.0) * 2.0 - 1.0
    return out


# -- registry-facing helpers ----------------------------------------------------------------------------

_INSTANCES: dict[str, ImageDataset] = {}


def get_dataset(name: str) -> ImageDataset:
    """The ImageDataset registered as `name` (a UserError with a suggestion if unknown)."""
    if name not in _INSTANCES:
        obj = DATASETS.get(name)
        ds = obj if isinstance(obj, ImageDataset) else obj()
        if not isinstance(ds, ImageDataset):
            raise TypeError(f"dataset {name!r} resolves to {type(ds).__name__}, not an ImageDataset")
        _INSTANCES[name] = ds
    return _INSTANCES[name]


def load_dataset(
    ref: "DatasetRef", root: str | None, split: str, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of a suite's dataset reference (cached per process; treat the tensors as read-only).

    `root` is the data root as :meth:`dpbench.config.suite.Suite.data_root` resolved it (the one place
    that applies --data-root, the dataset's root, data.root and $DPBENCH_DATA).
    """
    ds = get_dataset(ref.name)
    options = dict(ref.options)
    if isinstance(ds, ArrayDataset):  # caches itself
        return ds.load(root, split, ref.image_size, ref.channels, download=download, options=options)
    key = _cache_key(ds, _expand(root), split, ref.image_size, ref.channels, options)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    out = ds.load(root, split, ref.image_size, ref.channels, download=download, options=options)
    _cache_put(key, out)
    return out


def dataset_num_classes(ref: "DatasetRef", root: str | None) -> int:
    """Number of classes of a suite's dataset (read from the data for imagefolder / npz)."""
    return get_dataset(ref.name).num_classes_for(root, dict(ref.options))


def dataset_train_size(ref: "DatasetRef", root: str | None) -> tuple[int, bool]:
    """(training-set size, exact?) of a suite's dataset, without downloading or fully loading it."""
    return get_dataset(ref.name).train_size(root, dict(ref.options))


def clear_cache() -> None:
    """Drop the per-process cache of loaded tensors."""
    _CACHE.clear()


# -- internals ------------------------------------------------------------------------------------------


def _expand(root: Any) -> str | None:
    if root is None or str(root).strip() == "":
        return None
    return os.path.abspath(os.path.expanduser(str(root)))


def _check_args(split: str, image_size: int, channels: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if int(image_size) <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")


def _cache_key(ds: ImageDataset, root, split, image_size, channels, options) -> tuple:
    opts = json.dumps(options, sort_keys=True, default=str)
    return (type(ds).__module__, type(ds).__qualname__, ds.name, root, split, int(image_size), int(channels), opts)


def _cache_put(key: tuple, value) -> None:
    _CACHE[key] = value
    _CACHE.move_to_end(key)
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
