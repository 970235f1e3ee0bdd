"""Shared test fixtures. Tests run serially on CPU; heavy imports are shared per process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """No test writes into the user's ~/.cache: one pretrained-model cache per test session."""
    monkeypatch.setenv("DPBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "dpbench-cache"))


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST/Fashion-MNIST not found at {SHARED_DATA} (see ../shared/data/README.md: the offline MNIST-10k and Fashion-MNIST files)")
    return SHARED_DATA
