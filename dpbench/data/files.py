"""User data: an image folder tree (``imagefolder``) or one ``.npz`` file (``npz``).

This is how users bring datasets dpbench does not ship a loader for (e.g. ImageNet32 or a private set):

* ``imagefolder``: ``<path>/train/<class>/*.png`` and ``<path>/test/<class>/*.png`` (any image format
  torchvision's ImageFolder reads). ``path`` is ``options.path``, else ``<data root>/imagefolder``.
  Classes are the sorted folder names of ``train/``; the test split uses the same class indices.
* ``npz``: ``options.path`` names a ``.npz`` with arrays ``x_train, y_train, x_test, y_test``; x is uint8
  ``[N, H, W]``, ``[N, H, W, C]`` or ``[N, C, H, W]`` (C = 1, 3, or 4 with alpha dropped) or float in
  [0, 1]; labels are integers in [0, options.num_classes) — the number of classes is declared, never read off the private labels.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from dpbench.data.base import ArrayDataset
from dpbench.errors import UserError


class ImageFolderData(ArrayDataset):
    name = "imagefolder"
    num_classes = 0  # known from the folder: use num_classes_for(root, options)
    nominal_train_size = 0
    description = "your images in <path>/{train,test}/<class>/ (torchvision ImageFolder; options: path)"
    options_allowed = ("path",)
    root_mode = "optional"

    def folder(self, root: str | None, options: dict) -> str:
        path = options.get("path")
        if path:
            path = os.path.expanduser(str(path))
            if not os.path.isabs(path) and root is not None:
                path = os.path.join(root, path)  # relative paths are relative to the data root
            return os.path.abspath(path)
        if root is None:
            raise UserError(
                "dataset 'imagefolder' needs a folder: set data options path: <folder with train/ and test/>, "
                "or set data.root / --data-root / $DPBENCH_DATA to a root containing imagefolder/"
            )
        return os.path.join(root, "imagefolder")

    def _split_dir(self, root, split, options) -> str:
        path = os.path.join(self.folder(root, options), split)
        if not os.path.isdir(path):
            raise self.missing_error(
                path, f"create {path}/<class name>/<images> (one sub-folder per class), or set data options path"
            )
        return path

    def _classes(self, root, options) -> dict[str, int]:
        from torchvision.datasets.folder import find_classes

        train_dir = self._split_dir(root, "train", options)
        try:
            return find_classes(train_dir)[1]
        except FileNotFoundError:
            raise self.missing_error(train_dir, f"put one sub-folder per class with images in {train_dir}") from None

    def _samples(self, root, split, options) -> list[tuple[str, int]]:
        from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

        class_to_idx = self._classes(root, options)
        split_dir = self._split_dir(root, split, options)
        extra = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and e.name not in class_to_idx)
        if extra:
            raise UserError(
                f"dataset 'imagefolder': class folder {os.path.join(split_dir, extra[0])} has no counterpart in "
                f"{self._split_dir(root, 'train', options)} — train/ and test/ need the same class folders"
            )
        samples = make_dataset(split_dir, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        if not samples:
            raise self.missing_error(split_dir, f"no images ({', '.join(IMG_EXTENSIONS)}) found under {split_dir}")
        return samples

    def _load_raw(self, root, split, download, options, image_size):
        from PIL import Image

        samples = self._samples(root, split, options)
        images = []
        for path, _ in samples:
            with Image.open(path) as img:
                arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
            x = torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0)
            if x.shape[-2:] != (image_size, image_size):  # images may differ in size: resize each one
                x = F.interpolate(
                    x.float(), size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
                )
                x = x.round_().clamp_(0, 255).to(torch.uint8)  # keep uint8: 4x less memory for large folders
            images.append(x)
        labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
        return torch.cat(images), labels

    def _present_train_size(self, root, options):
        return len(self._samples(_abs(root), "train", options))

    def num_classes_for(self, root, options=None):
        return len(self._classes(_abs(root), self.check_options(options)))


_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


class NpzData(ArrayDataset):
    name = "npz"
    num_classes = 0  # known from the file: use num_classes_for(root, options)
    nominal_train_size = 0
    description = "your arrays x_train, y_train, x_test, y_test in one .npz file (options: path, num_classes)"
    options_allowed = ("path", "num_classes")
    root_mode = "optional"

    def file(self, root: str | None, options: dict) -> str:
        path = options.get("path")
        if not path:
            raise UserError("dataset 'npz' needs options path: <file.npz> with arrays x_train, y_train, x_test, y_test")
        path = os.path.expanduser(str(path))
        if not os.path.isabs(path) and root is not None:
            path = os.path.join(root, path)  # relative paths are relative to the data root
        return os.path.abspath(path)

    def _arrays(self, root, options, keys=_NPZ_KEYS) -> dict[str, np.ndarray]:
        path = self.file(root, options)
        if not os.path.isfile(path):
            raise self.missing_error(path, f"write a .npz with arrays {', '.join(_NPZ_KEYS)} to {path}")
        try:
            with np.load(path, allow_pickle=False) as f:
                missing = [k for k in _NPZ_KEYS if k not in f.files]
                if missing:
                    raise UserError(
                        f"dataset 'npz': {path} lacks array {missing[0]!r} (has: {', '.join(f.files) or 'none'}) "
                        f"— save x_train, y_train, x_test, y_test"
                    )
                return {k: f[k] for k in keys}
        except UserError:
            raise
        except Exception as err:
            raise UserError(f"dataset 'npz': cannot read {path} ({type(err).__name__}: {err}) — save it with numpy.savez") from None

    def _labels(self, root, options) -> tuple[np.ndarray, np.ndarray]:
        arrays = self._arrays(root, options, keys=("y_train", "y_test"))
        out = []
        for key in ("y_train", "y_test"):
            y = np.asarray(arrays[key]).reshape(-1)
            if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0):
                if np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)) and y.min() >= 0:
                    y = y.astype(np.int64)
                else:
                    raise UserError(f"dataset 'npz': {key} in {self.file(root, options)} must hold integer labels >= 0")
            out.append(y.astype(np.int64))
        declared = options.get("num_classes")
        if isinstance(declared, int) and any(y.size and y.max() >= declared for y in out):
            raise UserError(f"dataset 'npz': {self.file(root, options)} has labels ≥ options.num_classes={declared} "
                            "— declare the right number of classes")
        return out[0], out[1]

    def _load_raw(self, root, split, download, options, image_size):
        path = self.file(root, options)
        x = np.asarray(self._arrays(root, options, keys=(f"x_{split}",))[f"x_{split}"])
        y = self._labels(root, options)[0 if split == "train" else 1]
        if len(x) != len(y):
            raise UserError(f"dataset 'npz': {path} has {len(x)} x_{split} images but {len(y)} y_{split} labels")
        return torch.from_numpy(np.ascontiguousarray(_to_nchw(x, f"x_{split}", path))), torch.from_numpy(y)

    def _present_train_size(self, root, options):
        return len(self._labels(_abs(root), options)[0])

    def num_classes_for(self, root, options=None):
        """Declared, never read off the labels: the private label histogram is private data."""
        options = self.check_options(options)
        declared = options.get("num_classes")
        if not isinstance(declared, int) or isinstance(declared, bool) or declared < 1:
            raise UserError(f"dataset 'npz': options.num_classes must be declared as a positive integer (got "
                            f"{declared!r}) — the number of classes is not read from the (private) labels")
        return declared


def _to_nchw(x: np.ndarray, key: str, path: str) -> np.ndarray:
    """uint8 or float-in-[0,1] images [N,H,W] / [N,H,W,C] / [N,C,H,W] -> [N,C,H,W], C in {1, 3}."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        last, second = x.shape[-1], x.shape[1]
        if last in (1, 3, 4) and second not in (1, 3, 4):
            x = x.transpose(0, 3, 1, 2)
        elif second not in (1, 3, 4):
            raise UserError(
                f"dataset 'npz': {key} in {path} has shape {x.shape}; use [N,H,W], [N,H,W,C] or [N,C,H,W] with C in 1, 3, 4"
            )
        if x.shape[1] == 4:
            x = x[:, :3]  # drop alpha
    else:
        raise UserError(f"dataset 'npz': {key} in {path} has shape {x.shape}; use [N,H,W], [N,H,W,C] or [N,C,H,W]")
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        if x.size and (np.nanmin(x) < 0.0 or np.nanmax(x) > 1.0 or np.isnan(x).any()):
            raise UserError(
                f"dataset 'npz': float {key} in {path} must lie in [0, 1] (got [{np.nanmin(x):g}, {np.nanmax(x):g}]); "
                "save uint8 0..255 or floats in [0, 1]"
            )
        return x.astype(np.float32)
    raise UserError(f"dataset 'npz': {key} in {path} has dtype {x.dtype}; save uint8 0..255 or floats in [0, 1]")


def _abs(root):
    from dpbench.data.base import _expand

    return _expand(root)
