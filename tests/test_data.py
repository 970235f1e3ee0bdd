"""Dataset loaders: real MNIST / Fashion-MNIST files from ../shared/data, bundled and generated data, user files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from dpbench.config.suite import DatasetRef
from dpbench.data.base import (
    ImageDataset,
    clear_cache,
    dataset_num_classes,
    dataset_train_size,
    get_dataset,
    load_dataset,
)
from dpbench.errors import UserError
from dpbench.registry import DATASETS

from conftest import REPO, SHARED_DATA  # noqa: E402
# Class counts of the 10k MNIST training subset, as documented in ../shared/data/README.md.
MNIST10K_COUNTS = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def needs_shared(folder: str):
    return pytest.mark.skipif(
        not (SHARED_DATA / folder / "raw").is_dir(),
        reason=f"real data not found at {SHARED_DATA / folder / 'raw'} (see ../shared/data/README.md)",
    )


def ref(name: str, image_size: int, channels: int, **options) -> DatasetRef:
    return DatasetRef(name=name, image_size=image_size, channels=channels, options=options)


def assert_images(x: torch.Tensor, n: int, channels: int, size: int) -> None:
    assert x.dtype == torch.float32
    assert tuple(x.shape) == (n, channels, size, size)
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert torch.isfinite(x).all()


# -- registry ---------------------------------------------------------------------------------------------


def test_registered_names_resolve_to_image_datasets():
    expected = {"mnist", "fashion_mnist", "emnist", "cifar10", "svhn", "digits", "shapes", "imagefolder", "npz"}
    assert expected <= set(DATASETS.names())
    for name in expected:
        ds = get_dataset(name)
        assert isinstance(ds, ImageDataset)
        assert ds.name == name and ds.description
    assert get_dataset("emnist").num_classes == 26


def test_listing_datasets_does_not_import_torch():
    code = "import sys, dpbench.data; from dpbench.registry import DATASETS; DATASETS.names(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_name_and_option_are_user_errors():
    with pytest.raises(UserError, match="did you mean 'mnist'"):
        get_dataset("mnsit")
    with pytest.raises(UserError, match="unknown option 'colour'"):
        load_dataset(ref("digits", 8, 1, colour=True), None, "train")


# -- real data: MNIST-10k and Fashion-MNIST ----------------------------------------------------------------


@needs_shared("MNIST")
def test_mnist_10k_train_and_full_test():
    x, y = load_dataset(ref("mnist", 28, 1), str(SHARED_DATA), "train")
    assert_images(x, 10000, 1, 28)
    assert x.min() == -1.0 and x.max() == 1.0  # uint8 0 and 255 map to the ends of the range
    assert y.dtype == torch.int64
    assert torch.bincount(y, minlength=10).tolist() == MNIST10K_COUNTS
    assert dataset_num_classes(ref("mnist", 28, 1), str(SHARED_DATA)) == 10
    assert dataset_train_size(ref("mnist", 28, 1), str(SHARED_DATA)) == (10000, True)
    xt, yt = load_dataset(ref("mnist", 28, 1), str(SHARED_DATA), "test")
    assert_images(xt, 10000, 1, 28)
    assert set(yt.unique().tolist()) == set(range(10))
    # the per-process cache hands back the same tensors
    assert load_dataset(ref("mnist", 28, 1), str(SHARED_DATA), "train")[0] is x


@needs_shared("FashionMNIST")
def test_fashion_mnist_resize_and_rgb():
    native, y = load_dataset(ref("fashion_mnist", 28, 1), str(SHARED_DATA), "test")
    assert_images(native, 10000, 1, 28)
    assert torch.bincount(y).tolist() == [1000] * 10
    small, y16 = load_dataset(ref("fashion_mnist", 16, 3), str(SHARED_DATA), "test")
    assert_images(small, 10000, 3, 16)
    assert torch.equal(y16, y)
    assert torch.equal(small[:, 0], small[:, 1]) and torch.equal(small[:, 1], small[:, 2])  # gray repeated
    # antialiased downsampling preserves each image's mean intensity (approximately)
    gap = (small.mean(dim=(1, 2, 3)) - native.mean(dim=(1, 2, 3))).abs()
    assert gap.max() < 0.05, gap.max()
    assert get_dataset("fashion_mnist").train_size(str(SHARED_DATA)) == (60000, True)


# -- missing data --------------------------------------------------------------------------------------------


def test_missing_dataset_names_the_path(tmp_path):
    with pytest.raises(UserError) as err:
        load_dataset(ref("cifar10", 32, 3), str(tmp_path), "train")
    message = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "data.download: true" in message and "--download" not in message and "\n" not in message
    assert get_dataset("cifar10").train_size(str(tmp_path)) == (50000, False)
    with pytest.raises(UserError, match=str(tmp_path / "MNIST" / "raw")):
        load_dataset(ref("mnist", 28, 1), str(tmp_path), "test")


def test_missing_root_is_a_user_error(monkeypatch):
    monkeypatch.delenv("DPBENCH_DATA", raising=False)
    with pytest.raises(UserError, match="--data-root") as err:
        load_dataset(ref("cifar10", 32, 3), None, "train")
    assert "DPBENCH_DATA" in str(err.value)
    assert get_dataset("mnist").train_size(None) == (60000, False)


# -- digits (scikit-learn) --------------------------------------------------------------------------------


def test_digits_split_is_disjoint_stratified_and_deterministic():
    from sklearn.datasets import load_digits

    from dpbench.data.digits import Digits

    train_idx, test_idx = Digits.split_indices()
    assert len(set(train_idx) & set(test_idx)) == 0
    assert len(train_idx) + len(test_idx) == 1797
    bunch = load_digits()
    all_counts = np.bincount(bunch.target)
    test_counts = np.bincount(bunch.target[test_idx], minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * all_counts) <= 1)  # stratified 80/20

    x, y = load_dataset(ref("digits", 8, 1), None, "train")
    assert_images(x, len(train_idx), 1, 8)
    expected = torch.from_numpy(bunch.images[train_idx] / 16.0 * 2 - 1).float().unsqueeze(1)
    assert torch.allclose(x, expected, atol=1e-6)
    assert torch.equal(y, torch.from_numpy(bunch.target[train_idx]).long())
    assert dataset_train_size(ref("digits", 8, 1), None) == (len(train_idx), True)

    xt, yt = load_dataset(ref("digits", 16, 1), None, "test")
    assert_images(xt, len(test_idx), 1, 16)
    clear_cache()
    xt2, yt2 = load_dataset(ref("digits", 16, 1), None, "test")
    assert xt2 is not xt and torch.equal(xt, xt2) and torch.equal(yt, yt2)


# -- shapes (procedural, public) ---------------------------------------------------------------------------


def test_shapes_deterministic_balanced_and_learnable():
    r0 = ref("shapes", 16, 1, seed=0, size=2000)
    x, y = load_dataset(r0, None, "train")
    assert_images(x, 2000, 1, 16)
    assert torch.bincount(y, minlength=10).tolist() == [200] * 10
    assert x.max() > 0.9 and (x == -1).float().mean() > 0.3  # white strokes on a black background
    clear_cache()
    x2, y2 = load_dataset(r0, None, "train")
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x_other, _ = load_dataset(ref("shapes", 16, 1, seed=1, size=2000), None, "train")
    assert not torch.equal(x, x_other)
    xt, yt = load_dataset(r0, None, "test")
    assert_images(xt, 400, 1, 16)
    assert torch.bincount(yt, minlength=10).tolist() == [40] * 10
    assert not any(torch.equal(xt[0], xi) for xi in x)  # the test split is drawn from another seed
    assert dataset_train_size(r0, None) == (2000, True)

    # a nearest-centroid classifier on raw pixels separates the classes well above chance
    flat, flat_t = x.flatten(1), xt.flatten(1)
    centroids = torch.stack([flat[y == c].mean(0) for c in range(10)])
    accuracy = (torch.cdist(flat_t, centroids).argmin(1) == yt).float().mean().item()
    assert accuracy > 0.5, accuracy


# -- user files: npz and imagefolder ----------------------------------------------------------------------


def test_npz_round_trip_formats_and_num_classes(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, size=(12, 6, 6, 3), dtype=np.uint8)  # NHWC RGB
    x_test = rng.integers(0, 256, size=(5, 6, 6, 3), dtype=np.uint8)
    y_train = np.array([0, 1, 2] * 4)
    y_test = np.array([0, 1, 2, 4, 4])  # label 4 only appears in the test split
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)

    r = ref("npz", 6, 3, path=str(path), num_classes=5)
    x, y = load_dataset(r, None, "train")
    assert_images(x, 12, 3, 6)
    expected = torch.from_numpy(x_train.transpose(0, 3, 1, 2) / 255.0 * 2 - 1).float()
    assert torch.allclose(x, expected, atol=1e-6)
    assert torch.equal(y, torch.from_numpy(y_train).long())
    assert dataset_num_classes(r, None) == 5, "declared, never read off the (private) labels"
    assert dataset_train_size(r, None) == (12, True)
    with pytest.raises(UserError, match="labels ≥ options.num_classes=4"):
        load_dataset(ref("npz", 6, 3, path=str(path), num_classes=4), None, "test")

    gray, _ = load_dataset(ref("npz", 6, 1, path=str(path)), None, "test")  # RGB -> luminance
    expected_gray = (x_test.astype(np.float64) / 255.0 @ LUMA) * 2 - 1
    assert torch.allclose(gray[:, 0], torch.from_numpy(expected_gray).float(), atol=1e-5)

    # float [0, 1] channels-first and [N, H, W] grayscale; a path relative to the data root
    f_path = tmp_path / "float.npz"
    xf = rng.random((4, 1, 6, 6)).astype(np.float32)
    np.savez(f_path, x_train=xf, y_train=np.arange(4), x_test=(xf[:2, 0] * 255).astype(np.uint8), y_test=np.arange(2))
    xf_loaded, _ = load_dataset(ref("npz", 6, 1, path="float.npz"), str(tmp_path), "train")
    assert torch.allclose(xf_loaded, torch.from_numpy(xf * 2 - 1), atol=1e-6)
    xt_loaded, _ = load_dataset(ref("npz", 12, 3, path="float.npz"), str(tmp_path), "test")
    assert_images(xt_loaded, 2, 3, 12)

    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=xf * 255, y_train=np.arange(4), x_test=xf, y_test=np.arange(4))
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        load_dataset(ref("npz", 6, 1, path=str(bad)), None, "train")
    lacking = tmp_path / "lacking.npz"
    np.savez(lacking, x_train=xf, y_train=np.arange(4))
    with pytest.raises(UserError, match="x_test"):
        load_dataset(ref("npz", 6, 1, path=str(lacking)), None, "train")
    with pytest.raises(UserError, match=str(tmp_path / "absent.npz")):
        load_dataset(ref("npz", 6, 1, path=str(tmp_path / "absent.npz")), None, "train")


def test_imagefolder_round_trip_with_pngs(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    classes = ["ant", "bee", "cat"]
    written = {}
    for split, per_class in (("train", 3), ("test", 2)):
        for c, cls in enumerate(classes):
            (tmp_path / "imagefolder" / split / cls).mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
                file = tmp_path / "imagefolder" / split / cls / f"{i}.png"
                Image.fromarray(arr).save(file)
                written.setdefault(split, []).append((arr, c))
    folder = tmp_path / "imagefolder"

    r = ref("imagefolder", 8, 3, path=str(folder))
    x, y = load_dataset(r, None, "train")
    assert_images(x, 9, 3, 8)
    assert y.tolist() == [c for _, c in written["train"]]  # sorted by class, then file name
    expected = torch.from_numpy(np.stack([a for a, _ in written["train"]]).transpose(0, 3, 1, 2) / 255.0 * 2 - 1)
    assert torch.allclose(x, expected.float(), atol=1e-6)
    assert dataset_num_classes(r, None) == 3
    assert dataset_train_size(r, None) == (9, True)

    # no path option: falls back to <root>/imagefolder; resized and converted to gray
    xt, yt = load_dataset(ref("imagefolder", 16, 1), str(tmp_path), "test")
    assert_images(xt, 6, 1, 16)
    assert yt.tolist() == [0, 0, 1, 1, 2, 2]

    (folder / "test" / "dog").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "test" / "dog" / "0.png")
    with pytest.raises(UserError, match="dog"):
        load_dataset(ref("imagefolder", 8, 3, path=str(folder)), None, "test")
    with pytest.raises(UserError, match=str(tmp_path / "nowhere" / "train")):
        load_dataset(ref("imagefolder", 8, 3, path=str(tmp_path / "nowhere")), None, "train")


def test_train_subset_is_a_fixed_public_shuffle(shared_data):
    full, _ = load_dataset(ref("fashion_mnist", 16, 1), str(shared_data), "train")
    x, y = load_dataset(ref("fashion_mnist", 16, 1, train_subset=1000), str(shared_data), "train")
    again, _ = load_dataset(ref("fashion_mnist", 16, 1, train_subset=1000), str(shared_data), "train")
    assert len(x) == len(y) == 1000 and torch.equal(x, again)
    assert dataset_train_size(ref("fashion_mnist", 16, 1, train_subset=1000), str(shared_data)) == (1000, True)
    test_full, _ = load_dataset(ref("fashion_mnist", 16, 1, train_subset=1000), str(shared_data), "test")
    assert len(test_full) == 10000, "the test split is never subset"
    assert len(torch.unique(y)) == 10 and not torch.equal(x, full[:1000]), "a shuffle, not the file's first rows"
    with pytest.raises(UserError, match="train_subset"):
        load_dataset(ref("fashion_mnist", 16, 1, train_subset=0), str(shared_data), "train")
