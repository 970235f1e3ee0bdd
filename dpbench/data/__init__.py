"""Datasets: registered loaders returning (images in [-1, 1], float32 [N, C, H, W]; labels int64 [N]).

Entries are declared here by name only (no torch/torchvision import), so `dpbench ls datasets` stays
fast. The interface and the runner-facing helpers live in :mod:`dpbench.data.base`:
``get_dataset(name)``, ``load_dataset(ref, root, split, download=False)``, ``dataset_num_classes(ref, root)``
and ``dataset_train_size(ref, root)``.
"""

from dpbench.registry import DATASETS

DATASETS.register("mnist", "dpbench.data.torchvision_sets:MNIST", "MNIST digits, 28x28 gray, 10 classes (torchvision)")
DATASETS.register(
    "fashion_mnist", "dpbench.data.torchvision_sets:FashionMNIST", "Fashion-MNIST clothing, 28x28 gray, 10 classes (torchvision)"
)
DATASETS.register("emnist", "dpbench.data.torchvision_sets:EMNISTLetters", "EMNIST letters, 28x28 gray, 26 classes (torchvision)")
DATASETS.register("cifar10", "dpbench.data.torchvision_sets:CIFAR10", "CIFAR-10, 32x32 RGB, 10 classes (torchvision)")
DATASETS.register("svhn", "dpbench.data.torchvision_sets:SVHN", "SVHN house numbers, 32x32 RGB, 10 classes (torchvision)")
DATASETS.register("digits", "dpbench.data.digits:Digits", "scikit-learn 8x8 digits, 10 classes, fixed 80/20 split; no download")
DATASETS.register(
    "shapes", "dpbench.data.shapes:Shapes", "procedural pen-stroke shapes, 10 classes; public, no download (options: seed, size)"
)
DATASETS.register(
    "imagefolder", "dpbench.data.files:ImageFolderData", "your images in <path>/{train,test}/<class>/ (options: path)"
)
DATASETS.register("npz", "dpbench.data.files:NpzData", "your x_train/y_train/x_test/y_test arrays in a .npz (options: path)")
