"""scikit-learn's bundled handwritten digits (UCI optdigits test set): 1,797 images of 8x8, 10 classes.

It ships with scikit-learn, so it needs no data root and no download: the quickstart's private data.
There is no official split; a deterministic stratified 80/20 split with a FIXED seed (independent of the
run seed, so every run and every method sees the same private training set) gives 1,437 train / 360 test.
"""

from __future__ import annotations

import numpy as np
import torch

from dpbench.data.base import ArrayDataset

SPLIT_SEED = 0
TEST_FRACTION = 0.2


def _split_indices() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.images.astype(np.float32) / 16.0  # values 0..16 -> [0, 1]
    y = bunch.target.astype(np.int64)
    idx = np.arange(len(y))
    train_idx, test_idx = train_test_split(idx, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED)
    return x, y, np.sort(train_idx), np.sort(test_idx)


class Digits(ArrayDataset):
    name = "digits"
    num_classes = 10
    nominal_train_size = 1437
    description = "scikit-learn's 8x8 handwritten digits, 10 classes, fixed stratified 80/20 split (no download)"
    root_mode = "unused"

    def _load_raw(self, root, split, download, options, image_size):
        x, y, train_idx, test_idx = _split_indices()
        idx = train_idx if split == "train" else test_idx
        return torch.from_numpy(x[idx]).unsqueeze(1), torch.from_numpy(y[idx])

    def _present_train_size(self, root, options):
        return self.nominal_train_size

    @staticmethod
    def split_indices() -> tuple[np.ndarray, np.ndarray]:
        """Indices into ``sklearn.datasets.load_digits()`` of the train and test splits."""
        _, _, train_idx, test_idx = _split_indices()
        return train_idx, test_idx
