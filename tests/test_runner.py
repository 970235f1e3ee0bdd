"""`dpbench run` end to end on real (tiny) data, including a real kill -9 and resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dpbench.results import check_result, load_results

REPO = Path(__file__).resolve().parents[1]

MICRO = {
    "name": "micro",
    "seeds": [0],
    "data": {"private": {"name": "digits", "image_size": 8, "channels": 1},
             "public": {"name": "shapes", "image_size": 8, "channels": 1, "options": {"size": 400}},
             "label": "sklearn-digits"},
    "model": {"preset": "tiny"},
    "pretrain": {"steps": 30, "batch_size": 32, "lr": 0.003},
    "privacy": {"epsilons": [5, "inf"], "delta": 1e-4, "accountant": "rdp", "expected_batch_size": 64, "steps": 4,
                "max_grad_norm": 1.0, "noise_multiplicity": 2, "physical_batch_size": 64},
    "methods": [{"name": "loda", "options": {"hidden": 4, "target": "conv"}}, {"name": "bias"}],
    "training": {"ema_decay": 0.9, "checkpoint_seconds": 0},
    "sampling": {"steps": 4, "num_samples": 60, "batch_size": 60, "grid_per_class": 2},
    "evaluation": {"classifier_seeds": [0], "classifier_epochs": 1, "fid_max_reference": 200},
}


def _write_suite(tmp_path, **changes) -> Path:
    suite = json.loads(json.dumps(MICRO))
    suite.update(changes)
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def _default_sigint() -> None:
    # A shell without job control starts background jobs with SIGINT ignored, and children inherit
    # that; a user's terminal delivers Ctrl-C with the default disposition, so restore it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _dpbench(*args, cwd, env=None, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "2", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "dpbench", *args, "--no-progress"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint, **kw)


def _wait_until(proc, condition, timeout: float = 300) -> None:
    """Poll (while the process lives) until condition() holds; the caller then sends its signal."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not condition():
        time.sleep(0.05)


def test_run_end_to_end_then_skip(tmp_path):
    from dpbench.cli import main

    suite_path = _write_suite(tmp_path)
    os.chdir(tmp_path)
    assert main(["run", str(suite_path), "--no-progress"]) == 0
    results_dir = tmp_path / "results" / "micro"
    records = load_results(results_dir)
    assert sorted(r["run_id"] for r in records) == ["bias-eps5-seed0", "bias-epsinf-seed0", "loda-eps5-seed0", "loda-epsinf-seed0"]
    for r in records:
        assert check_result(r) == [], "every schema key is present"
        assert r["status"] == "ok" and 0 <= r["downstream_accuracy"] <= 1 and r["fid"] > 0
        assert r["peak_memory_bytes"] is not None and r["throughput_examples_per_s"] > 0
        assert (results_dir / "runs" / r["run_id"] / "samples.png").is_file()
        assert not (results_dir / "runs" / r["run_id"] / "checkpoint.pt").exists()
        if math.isfinite(r["epsilon"]):
            assert 0 < r["epsilon_spent"] <= r["epsilon"]
        else:
            assert r["epsilon_spent"] is None and r["noise_multiplier"] == 0
    sigmas = {r["noise_multiplier"] for r in records if math.isfinite(r["epsilon"])}
    assert len(sigmas) == 1, "one σ per ε cell, shared by every method"
    base = json.loads((results_dir / "baselines.json").read_text())
    assert base["pretrained_fid"] > 0 and base["real_data_accuracy"] > 0.5
    csv = (results_dir / "results.csv").read_text().splitlines()
    assert len(csv) == 1 + len(records)
    assert (tmp_path / "reports" / "micro" / "index.html").is_file()
    assert not list(results_dir.rglob("*.tmp"))
    # a second run skips every finished run
    stamp = {r["run_id"]: r["created_at"] for r in records}
    assert main(["run", str(suite_path), "--no-progress", "--no-report"]) == 0
    assert {r["run_id"]: r["created_at"] for r in load_results(results_dir)} == stamp


def test_kill_and_rerun_finishes_every_run_exactly_once(tmp_path):
    """SIGKILL at an arbitrary moment (here: once a training checkpoint exists), then re-run."""
    suite_path = _write_suite(tmp_path, privacy={**MICRO["privacy"], "steps": 12})
    env = {"DPBENCH_CACHE": str(tmp_path / "cache")}
    proc = _dpbench("run", str(suite_path), "--no-report", cwd=tmp_path, env=env)
    runs = tmp_path / "results" / "micro" / "runs"
    _wait_until(proc, lambda: list(runs.glob("*/checkpoint.pt")) and list(runs.glob("*/result.json")))
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted = [p.parent.name for p in runs.glob("*/checkpoint.pt")]
    assert interrupted, "a run was in progress"
    # a killed process leaves no half-written result
    for path in runs.glob("*/result.json"):
        json.loads(path.read_text())
    again = _dpbench("run", str(suite_path), "--no-report", cwd=tmp_path, env=env)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert "resumed from step" in err
    ids = sorted(p.parent.name for p in runs.glob("*/result.json"))
    assert ids == ["bias-eps5-seed0", "bias-epsinf-seed0", "loda-eps5-seed0", "loda-epsinf-seed0"]
    records = {r["run_id"]: r for r in load_results(runs.parent)}
    # privacy is accounted for every step of the released model: the same ε as an uninterrupted run
    from dpbench.privacy.accounting import epsilon_spent

    for run_id in interrupted:
        r = records[run_id]
        if math.isfinite(r["epsilon"]):
            full = epsilon_spent("rdp", [(r["noise_multiplier"], r["sample_rate"], r["steps"])], r["delta"])
            assert r["epsilon_spent"] == pytest.approx(full, rel=1e-12)
    assert not list(runs.rglob("*.tmp")) and not list(runs.glob("*/checkpoint.pt"))


def test_ctrl_c_exits_130_and_keeps_finished_runs(tmp_path):
    suite_path = _write_suite(tmp_path, privacy={**MICRO["privacy"], "steps": 30})
    env = {"DPBENCH_CACHE": str(tmp_path / "cache")}
    proc = _dpbench("run", str(suite_path), "--no-report", cwd=tmp_path, env=env)
    runs = tmp_path / "results" / "micro" / "runs"
    _wait_until(proc, lambda: list(runs.glob("*/checkpoint.pt")))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err


def test_missing_dataset_is_one_line_exit_2(tmp_path):
    suite_path = _write_suite(tmp_path, data={**MICRO["data"], "private": {"name": "cifar10", "image_size": 8, "channels": 3},
                                              "public": {"name": "shapes", "image_size": 8, "channels": 3}})
    proc = _dpbench("run", str(suite_path), "--data-root", str(tmp_path / "empty"), cwd=tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert err.count("\n") == 1 and "cifar10" in err and str(tmp_path / "empty") in err and "Traceback" not in err
