"""Pretraining: round-trips bit-identically through save_pretrained/from_pretrained; cached by settings."""

from __future__ import annotations

import pytest
import torch

from dpbench.config.suite import parse_suite
from dpbench.errors import UserError
from dpbench.models.pretrain import load_pretrained

SUITE = {
    "name": "pretrain-test",
    "data": {"private": {"name": "digits", "image_size": 8, "channels": 1},
             "public": {"name": "shapes", "image_size": 8, "channels": 1, "options": {"size": 200}}},
    "model": {"preset": "tiny"},
    "pretrain": {"steps": 5, "batch_size": 16, "lr": 0.001},
    "privacy": {"epsilons": [1], "delta": 1e-4, "expected_batch_size": 32, "steps": 2, "max_grad_norm": 1.0,
                "physical_batch_size": 16},
    "methods": [{"name": "lora"}],
}


def test_pretrain_round_trip_and_cache(tmp_path):
    suite = parse_suite(SUITE)
    first = load_pretrained(suite, cache_dir=str(tmp_path), progress=False)
    assert not first.cache_hit and first.source.startswith("trained:")
    assert (tmp_path / "pretrained").is_dir()
    files = {p.name for p in (tmp_path / "pretrained").glob("*/*")}
    assert "diffusion_pytorch_model.safetensors" in files and "config.json" in files
    second = load_pretrained(suite, cache_dir=str(tmp_path), progress=False)
    assert second.cache_hit and second.source == "cache:" + first.source.split(":")[1]
    x = torch.randn(4, 1, 8, 8)
    t = torch.tensor([1, 100, 500, 999])
    y = torch.tensor([0, 3, 9, 10])  # shapes has 10 classes; row 10 is the null class
    with torch.no_grad():
        a = first.model(x, t, class_labels=y).sample
        b = second.model(x, t, class_labels=y).sample
    assert torch.equal(a, b), "the reloaded model gives bit-identical outputs"
    # anything that determines the weights changes the key
    changed = parse_suite({**SUITE, "pretrain": {**SUITE["pretrain"], "steps": 6}})
    third = load_pretrained(changed, cache_dir=str(tmp_path), progress=False)
    assert not third.cache_hit and third.path != first.path


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_a_few_pretraining_steps_train(tmp_path, steps):
    """OneCycleLR divides by its phase lengths: 1-3 steps crashed with ZeroDivisionError (found via --smoke)."""
    suite = parse_suite({**SUITE, "pretrain": {**SUITE["pretrain"], "steps": steps}})
    out = load_pretrained(suite, cache_dir=str(tmp_path), progress=False)
    assert not out.cache_hit and (tmp_path / "pretrained").is_dir()


def test_missing_pretrained_directory_is_a_user_error(tmp_path):
    suite = parse_suite({**SUITE, "model": {"pretrained": str(tmp_path / "nope")}})
    with pytest.raises(UserError, match="model.pretrained"):
        load_pretrained(suite)


def test_user_pretrained_directory_loads(tmp_path):
    from dpbench.models.diffusion import build_unet

    build_unet("tiny", 8, 1, 10).save_pretrained(str(tmp_path / "mine"))
    suite = parse_suite({**SUITE, "model": {"pretrained": str(tmp_path / "mine")}})
    out = load_pretrained(suite)
    assert out.source == f"pretrained:{tmp_path / 'mine'}"
    wrong = parse_suite({**SUITE, "model": {"pretrained": str(tmp_path / "mine")},
                         "data": {"private": {"name": "digits", "image_size": 16, "channels": 1}}})
    with pytest.raises(UserError, match="image_size"):
        load_pretrained(wrong)


@pytest.mark.slow
def test_killed_pretraining_resumes_bit_exactly(tmp_path):
    """SIGKILL `dpbench pretrain` once it has checkpointed, run it again: the weights (an EMA here) are those
    of an uninterrupted pretraining, and the checkpoint is gone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    raw = {**SUITE, "pretrain": {**SUITE["pretrain"], "steps": 60, "ema_decay": 0.9, "checkpoint_seconds": 0}}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "dpbench", "pretrain", str(path), "--cache-dir", str(tmp_path / "cache"),
               "--no-progress"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list((tmp_path / "cache").rglob(".*.checkpoint.pt")):
        time.sleep(0.05)
    assert proc.poll() is None, "pretraining finished before it could be killed: " + proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "pretraining resumed from step" in again.stderr
    assert not list((tmp_path / "cache").rglob("*.checkpoint.pt"))

    # The uninterrupted pretraining runs the same way (a subprocess, one thread): a different thread count
    # may reduce in a different order, and bit-exactness is only promised for the same machine settings.
    unchecked = {**raw, "pretrain": {**raw["pretrain"], "checkpoint_seconds": 600}}  # the same cache key
    unchecked_path = tmp_path / "unchecked.yaml"
    unchecked_path.write_text(yaml.safe_dump(unchecked))
    straight_run = subprocess.run([*command[:4], str(unchecked_path), "--cache-dir", str(tmp_path / "straight"),
                                   "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert straight_run.returncode == 0, straight_run.stderr[-3000:]
    assert "resumed" not in straight_run.stderr
    resumed = load_pretrained(parse_suite(raw), cache_dir=str(tmp_path / "cache"), progress=False)
    straight = load_pretrained(parse_suite(unchecked), cache_dir=str(tmp_path / "straight"), progress=False)
    assert resumed.cache_hit and straight.cache_hit
    a, b = resumed.model.state_dict(), straight.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
