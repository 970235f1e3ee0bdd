"""Evaluation: FID backbones, Fréchet distance, precision/recall, downstream classifiers.

Real small computations on real data (scikit-learn's 8x8 digits upsampled to 16x16; the real MNIST files in
/work/shared/data when present). Run with OMP_NUM_THREADS=1; the whole file takes well under a minute.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from dpbench.errors import UserError
from dpbench.evaluation.classifiers import ClassifierTraining, train_and_evaluate, wrn16_4
from dpbench.evaluation.features import (
    INCEPTION_FILE,
    INCEPTION_WEIGHTS_ENV,
    extract_features,
    images_to_uint8,
)
from dpbench.evaluation.metrics import frechet_distance, frechet_distance_from_stats, precision_recall
from dpbench.registry import CLASSIFIERS, FID_BACKBONES

from conftest import REPO, SHARED_DATA  # noqa: E402


# ------------------------------------------------------------------------------------------------ data

def _digits_16() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0 * 2.0 - 1.0  # [-1, 1]
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).clamp(-1, 1)
    return x, torch.tensor(d.target, dtype=torch.long)


@pytest.fixture(scope="module")
def digits():
    x, y = _digits_16()
    perm = np.random.default_rng(0).permutation(len(x))
    tr, te = perm[:1200], perm[1200:]
    return x[tr], y[tr], x[te], y[te]


@pytest.fixture(scope="module")
def digit_features(digits):
    xtr, _, xte, _ = digits
    return extract_features("random_cnn", xtr), extract_features("random_cnn", xte)


def _balanced_and_imbalanced(labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Two index sets of equal size: all 10 classes equally, and only classes 0, 1, 2."""
    balanced = np.concatenate([np.flatnonzero(labels == c)[: size // 10] for c in range(10)])
    imbalanced = np.concatenate([np.flatnonzero(labels == c)[: size // 3] for c in range(3)])
    n = min(len(balanced), len(imbalanced))
    return balanced[:n], imbalanced[:n]


# ------------------------------------------------------------------------------------------------ registry

def test_registered_names():
    assert {"random_cnn", "inception"} <= set(FID_BACKBONES.names())
    assert {"cnn", "wrn16_4"} <= set(CLASSIFIERS.names())
    with pytest.raises(UserError, match="random_cnn"):
        extract_features("random_cn", torch.zeros(2, 1, 8, 8))
    with pytest.raises(UserError, match="wrn16_4"):
        train_and_evaluate(ClassifierTraining("wrn16-4", [0], 1, 2, 1e-3), torch.zeros(2, 1, 8, 8), torch.zeros(2),
                           torch.zeros(2, 1, 8, 8), torch.zeros(2), 2)


# ------------------------------------------------------------------------------------------------ Fréchet distance

def test_frechet_identical_sets_is_zero():
    a = np.random.default_rng(0).normal(size=(500, 16))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_from_stats_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(1)
    d = 12
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
    # For diagonal covariances (sigma1 sigma2)^{1/2} = diag(sqrt(v1 v2)).
    closed = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2.0 * np.sqrt(v1 * v2))
    assert frechet_distance_from_stats(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(closed, rel=1e-10)


def test_frechet_from_stats_matches_scipy_sqrtm_for_full_covariances():
    rng = np.random.default_rng(2)
    d = 10
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-8)


def test_frechet_on_samples_approaches_closed_form():
    rng = np.random.default_rng(3)
    d, n = 4, 40_000
    mu1, mu2 = np.zeros(d), np.array([1.0, -0.5, 0.0, 2.0])
    v1, v2 = np.array([1.0, 2.0, 0.5, 1.0]), np.array([0.25, 2.0, 4.0, 1.0])
    a = mu1 + rng.normal(size=(n, d)) * np.sqrt(v1)
    b = mu2 + rng.normal(size=(n, d)) * np.sqrt(v2)
    closed = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2.0 * np.sqrt(v1 * v2))
    assert frechet_distance(a, b) == pytest.approx(closed, rel=0.03)


def test_frechet_symmetric_and_grows_with_shift():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(300, 8)) * 1.5 + 0.2
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-8)
    shifts = [0.0, 0.25, 0.5, 1.0, 2.0]
    fds = [frechet_distance(a, a + s) for s in shifts]
    assert all(x < y for x, y in zip(fds, fds[1:]))
    # a pure mean shift leaves the covariance term at 0: FD = |delta|^2 = 8 s^2
    assert fds[-1] == pytest.approx(8 * 2.0**2, rel=1e-6)


def test_frechet_singular_covariances_fewer_samples_than_dims():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(10, 50)), rng.normal(size=(12, 50)) + 1.0
    fd = frechet_distance(a, b)
    assert np.isfinite(fd) and fd > 0
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------------------------ random_cnn FID

def test_random_cnn_fid_orders_real_noise_and_imbalance(digits, digit_features):
    _, _, xte, yte = digits
    ftr, fte = digit_features
    noise = torch.rand(xte.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fnoise = extract_features("random_cnn", noise)
    assert ftr.dtype == np.float64 and ftr.shape == (1200, fte.shape[1])
    real_vs_real = frechet_distance(ftr, fte)
    real_vs_noise = frechet_distance(ftr, fnoise)
    assert real_vs_noise > 20 * real_vs_real

    balanced, imbalanced = _balanced_and_imbalanced(yte.numpy(), 300)
    fd_bal, fd_imb = frechet_distance(ftr, fte[balanced]), frechet_distance(ftr, fte[imbalanced])
    assert fd_imb > 1.5 * fd_bal


def test_random_cnn_does_not_touch_global_rng_and_handles_rgb():
    state = torch.get_rng_state()
    x = torch.rand(4, 3, 20, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
    f = extract_features("random_cnn", x, batch_size=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert f.shape[0] == 4 and np.isfinite(f).all()
    # grayscale == the same image replicated to 3 channels
    g = x[:, :1]
    assert np.allclose(extract_features("random_cnn", g), extract_features("random_cnn", g.repeat(1, 3, 1, 1)))


_SUBPROCESS_FEATURES = textwrap.dedent(
    """
    import sys, numpy as np, torch
    torch.manual_seed(int(sys.argv[2])); torch.rand(100)  # a different global RNG state in each process
    from dpbench.evaluation.features import extract_features
    x = torch.rand(64, 1, 16, 16, generator=torch.Generator().manual_seed(7)) * 2 - 1
    np.save(sys.argv[1], extract_features("random_cnn", x))
    """
)


def test_random_cnn_features_identical_across_fresh_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    outputs = []
    for i, seed in enumerate((0, 12345)):
        out = tmp_path / f"f{i}.npy"
        subprocess.run([sys.executable, "-c", _SUBPROCESS_FEATURES, str(out), str(seed)], env=env, check=True, timeout=120)
        outputs.append(np.load(out))
    assert outputs[0].shape[0] == 64
    assert np.array_equal(outputs[0], outputs[1])


# ------------------------------------------------------------------------------------------------ precision / recall

def test_precision_recall_identical_sets(digit_features):
    ftr, _ = digit_features
    assert precision_recall(ftr, ftr, k=3) == (1.0, 1.0)


def test_precision_recall_noise_and_single_class(digits, digit_features):
    _, _, xte, yte = digits
    ftr, fte = digit_features
    fnoise = extract_features("random_cnn", torch.rand(xte.shape, generator=torch.Generator().manual_seed(2)) * 2 - 1)
    precision, _ = precision_recall(ftr, fnoise, k=3)
    assert precision < 0.05

    one_class = fte[yte.numpy() == 0]
    precision, recall = precision_recall(ftr, one_class, k=3)
    assert precision > 0.7 and recall < 0.3


def test_precision_recall_chunking_does_not_change_result(digit_features):
    ftr, fte = digit_features
    assert precision_recall(ftr[:300], fte[:250], k=5) == precision_recall(ftr[:300], fte[:250], k=5, chunk_size=7)


@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason=f"real MNIST not found under {SHARED_DATA}")
def test_random_cnn_on_real_mnist():
    from torchvision.datasets import MNIST

    def load(train: bool, n: int) -> torch.Tensor:
        ds = MNIST(str(SHARED_DATA), train=train, download=False)
        return ds.data[:n, None].float() / 127.5 - 1.0

    real_a, real_b = load(True, 500), load(False, 500)
    noise = torch.rand(real_b.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1
    fa, fb, fn = (extract_features("random_cnn", x) for x in (real_a, real_b, noise))
    assert frechet_distance(fa, fn) > 20 * frechet_distance(fa, fb)
    p_real, r_real = precision_recall(fa, fb)
    p_noise, _ = precision_recall(fa, fn)
    assert p_real > 0.5 and r_real > 0.5 and p_noise < 0.05


# ------------------------------------------------------------------------------------------------ classifiers

def test_cnn_classifier_learns_digits_deterministically(digits):
    xtr, ytr, xte, yte = digits
    torch.manual_seed(0)
    r1 = train_and_evaluate(ClassifierTraining("cnn", seeds=[0], epochs=3, batch_size=64, lr=3e-3), xtr, ytr, xte, yte,
                            num_classes=10)
    assert r1["classifier"] == "cnn"
    assert r1["accuracy"] > 0.8
    assert r1["accuracy_std"] == 0.0 and len(r1["accuracies"]) == 1
    state = torch.get_rng_state()
    torch.manual_seed(999)  # the global RNG must not matter
    r2 = train_and_evaluate(ClassifierTraining("cnn", seeds=[0], epochs=3, batch_size=64, lr=3e-3), xtr, ytr, xte, yte,
                            num_classes=10)
    assert r2["accuracies"] == r1["accuracies"]
    torch.set_rng_state(state)


def test_cnn_classifier_with_shuffled_labels_is_near_chance(digits):
    xtr, ytr, xte, yte = digits
    shuffled = ytr[torch.randperm(len(ytr), generator=torch.Generator().manual_seed(1))]
    r = train_and_evaluate(ClassifierTraining("cnn", seeds=[0, 1], epochs=2, batch_size=64, lr=3e-3), xtr[:600],
                           shuffled[:600], xte, yte, num_classes=10)
    assert len(r["accuracies"]) == 2 and r["accuracy"] < 0.25
    assert r["accuracy"] == pytest.approx(np.mean(r["accuracies"]))
    assert r["accuracy_std"] == pytest.approx(np.std(r["accuracies"]))


def test_wrn16_4_shapes_and_runs():
    assert sum(p.numel() for p in wrn16_4(3, 10).parameters()) > 2_500_000
    for size in (16, 32):
        assert wrn16_4(1, 7)(torch.zeros(2, 1, size, size)).shape == (2, 7)
    x, y = _digits_16()
    r = train_and_evaluate(ClassifierTraining("wrn16_4", [0], epochs=1, batch_size=32, lr=1e-3, augment=True), x[:64],
                           y[:64], x[64:128], y[64:128], 10)
    assert 0.0 <= r["accuracy"] <= 1.0 and r["classifier"] == "wrn16_4"


# ------------------------------------------------------------------------------------------------ inception

def test_images_to_uint8():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 2, 2)
    u = images_to_uint8(x)
    assert u.dtype == torch.uint8 and u.shape == (1, 3, 2, 2)
    assert u[0, 0].flatten().tolist() == [0, 128, 255, 255]


def test_inception_without_torch_fidelity_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # makes `import torch_fidelity` fail
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    with pytest.raises(UserError, match=r"pip install 'dpbench\[fid\]'"):
        extract_features("inception", torch.zeros(2, 1, 16, 16))


def _needs_torch_fidelity():
    pytest.importorskip("torch_fidelity", reason="torch-fidelity not installed (pip install 'dpbench[fid]')")


def test_inception_missing_weights_env_path(monkeypatch, tmp_path):
    _needs_torch_fidelity()
    missing = tmp_path / "nowhere" / INCEPTION_FILE
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(missing))
    with pytest.raises(UserError) as err:
        extract_features("inception", torch.zeros(2, 1, 16, 16))
    assert str(missing) in str(err.value)


def test_inception_missing_weights_offline_cache(monkeypatch, tmp_path):
    _needs_torch_fidelity()
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("DPBENCH_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        extract_features("inception", torch.zeros(2, 1, 16, 16))
    message = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / INCEPTION_FILE) in message
    assert "https://" in message and INCEPTION_WEIGHTS_ENV in message


def test_inception_pipeline_with_a_weights_file(monkeypatch, tmp_path):
    """Plumbing only: a correctly shaped (randomly initialised, torchvision-layout) state dict goes through
    torch-fidelity's strict loader and yields 2048-d float64 features. Real FID needs the real weights."""
    _needs_torch_fidelity()
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False).state_dict()
    path = tmp_path / INCEPTION_FILE
    torch.save(state, path)
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(path))
    feats = extract_features("inception", torch.rand(2, 1, 16, 16) * 2 - 1)
    assert feats.shape == (2, 2048) and feats.dtype == np.float64 and np.isfinite(feats).all()
