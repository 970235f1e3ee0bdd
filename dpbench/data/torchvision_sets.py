"""Standard benchmarks read (and, with ``download``, fetched) through torchvision.

The raw arrays (``.data`` / ``.targets``) are used directly instead of per-item PIL transforms. Each
dataset lives where torchvision puts it under the data root (e.g. ``<root>/MNIST/raw``), so a root
prepared by torchvision, or by hand in the same layout, works offline.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import torch

from dpbench.data.base import ArrayDataset
from dpbench.errors import UserError

_RAW: "OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]]" = OrderedDict()
_RAW_SIZE = 4


class TorchvisionDataset(ArrayDataset):
    """Base for torchvision datasets: subclasses give ``data_path``, ``_make`` and ``_arrays``."""

    root_mode = "required"

    def data_path(self, root: str, split: str = "train") -> str:
        """The folder (or file) torchvision reads under root; named in error messages."""
        raise NotImplementedError

    def _make(self, root: str, split: str, download: bool):
        raise NotImplementedError

    def _arrays(self, ds) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [N, C, H, W] images and int64 labels from a constructed torchvision dataset."""
        raise NotImplementedError

    def _load_raw(self, root, split, download, options, image_size):
        key = (type(self).__qualname__, root, split)
        if key in _RAW:
            _RAW.move_to_end(key)
            return _RAW[key]
        path = self.data_path(root, split)
        if download:
            try:
                ds = self._make(root, split, True)
            except UserError:
                raise
            except Exception as err:  # no network, a mirror down, a bad checksum: one line, no traceback
                raise self.download_error(path, err) from None
        else:
            try:
                ds = self._make(root, split, False)
            except RuntimeError:  # torchvision: "Dataset not found or corrupted"
                raise self.missing_error(path) from None
        raw = self._arrays(ds)
        _RAW[key] = raw
        while len(_RAW) > _RAW_SIZE:
            _RAW.popitem(last=False)
        return raw

    def _present_train_size(self, root, options):
        if root is None or not os.path.exists(self.data_path(root, "train")):
            return None
        return len(self._load_raw(root, "train", False, options, 0)[1])


def _idx_count(path: str) -> int | None:
    """The item count in an IDX file's header (bytes 4..8, big-endian), or None if absent/invalid."""
    try:
        with open(path, "rb") as f:
            header = f.read(8)
    except OSError:
        return None
    return int.from_bytes(header[4:8], "big") if len(header) == 8 else None


class _MNISTLike(TorchvisionDataset):
    num_classes = 10
    nominal_train_size = 60000
    _tv_class = "MNIST"

    def data_path(self, root, split="train"):
        return os.path.join(root, self._tv_class, "raw")

    def _make(self, root, split, download):
        import torchvision.datasets as tvd

        return getattr(tvd, self._tv_class)(root, train=(split == "train"), download=download)

    def _arrays(self, ds):
        return ds.data.unsqueeze(1), torch.as_tensor(ds.targets, dtype=torch.int64)

    def _present_train_size(self, root, options):
        if root is None:
            return None
        images = _idx_count(os.path.join(self.data_path(root), "train-images-idx3-ubyte"))
        labels = _idx_count(os.path.join(self.data_path(root), "train-labels-idx1-ubyte"))
        return labels if images is not None and images == labels else None


class MNIST(_MNISTLike):
    name = "mnist"
    description = "MNIST handwritten digits, 28x28 grayscale, 10 classes (torchvision MNIST)"


class FashionMNIST(_MNISTLike):
    name = "fashion_mnist"
    description = "Fashion-MNIST clothing, 28x28 grayscale, 10 classes (torchvision FashionMNIST)"
    _tv_class = "FashionMNIST"


class EMNISTLetters(TorchvisionDataset):
    name = "emnist"
    num_classes = 26
    nominal_train_size = 124800
    description = "EMNIST letters, 28x28 grayscale, 26 classes a-z (torchvision EMNIST split='letters')"

    def data_path(self, root, split="train"):
        return os.path.join(root, "EMNIST", "raw")

    def _make(self, root, split, download):
        import torchvision.datasets as tvd

        return tvd.EMNIST(root, split="letters", train=(split == "train"), download=download)

    def _arrays(self, ds):
        # EMNIST stores images transposed (column-major); its letters labels are 1..26.
        x = ds.data.transpose(1, 2).contiguous().unsqueeze(1)
        return x, torch.as_tensor(ds.targets, dtype=torch.int64) - 1

    def _present_train_size(self, root, options):
        if root is None:
            return None
        return _idx_count(os.path.join(self.data_path(root), "emnist-letters-train-labels-idx1-ubyte"))


class CIFAR10(TorchvisionDataset):
    name = "cifar10"
    num_classes = 10
    nominal_train_size = 50000
    description = "CIFAR-10, 32x32 RGB, 10 classes (torchvision CIFAR10)"

    def data_path(self, root, split="train"):
        return os.path.join(root, "cifar-10-batches-py")

    def _make(self, root, split, download):
        import torchvision.datasets as tvd

        return tvd.CIFAR10(root, train=(split == "train"), download=download)

    def _arrays(self, ds):
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        return x, torch.as_tensor(ds.targets, dtype=torch.int64)


class SVHN(TorchvisionDataset):
    name = "svhn"
    num_classes = 10
    nominal_train_size = 73257
    description = "SVHN house-number digits, 32x32 RGB, 10 classes (torchvision SVHN, train/test without extra)"

    def data_path(self, root, split="train"):
        return os.path.join(root, f"{split}_32x32.mat")

    def _make(self, root, split, download):
        import torchvision.datasets as tvd

        try:
            return tvd.SVHN(root, split=split, download=download)
        except ImportError as err:
            raise UserError(f"dataset 'svhn' needs scipy to read .mat files ({err}) — pip install scipy") from None

    def _arrays(self, ds):
        return torch.from_numpy(np.ascontiguousarray(ds.data)), torch.as_tensor(ds.labels, dtype=torch.int64)
