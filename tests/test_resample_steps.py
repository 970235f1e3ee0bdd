"""benchmarks/resample_steps.py: a finished suite's runs re-sampled at other step counts, paired over seeds."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import yaml

from dpbench.cli import main

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "resample_steps.py"
SUITE = {
    "name": "resampled",
    "seeds": [0, 1],
    "data": {"private": {"name": "digits", "image_size": 8, "channels": 1},
             "public": {"name": "shapes", "image_size": 8, "channels": 1, "options": {"size": 640}}},
    "model": {"preset": "tiny"},
    "pretrain": {"steps": 10, "batch_size": 32, "lr": 0.003},
    "privacy": {"epsilons": [8], "delta": 1e-4, "accountant": "rdp", "expected_batch_size": 64, "steps": 2,
                "max_grad_norm": "auto", "physical_batch_size": 64},
    "methods": [{"name": "bias", "lr": 0.01}],
    "training": {"ema_decay": None},
    "sampling": {"steps": 3, "num_samples": 40, "batch_size": 40, "grid_per_class": 1},
    "evaluation": {"classifier_seeds": [0], "classifier_epochs": 1, "fid_max_reference": 100},
}


def _script():
    spec = importlib.util.spec_from_file_location("resample_steps", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_run_is_rebuilt_and_the_step_counts_are_paired_over_its_seeds(tmp_path, capsys):
    """At the suite's own count the rebuilt runs reproduce their recorded accuracy exactly (same process, same
    threads), another count samples other images, and the difference is paired seed by seed."""
    path = tmp_path / "resampled.yaml"
    path.write_text(yaml.safe_dump(SUITE))
    out = tmp_path / "out"
    assert main(["run", str(path), "--no-progress", "--no-report", "--results-dir", str(out)]) == 0
    record = tmp_path / "resample.json"
    args = argparse.Namespace(suite=str(path), results_dir=str(out), cache_dir=None, data_root=None, steps="2",
                              out=str(record))
    assert _script().resample(args) == 0
    written = json.loads(record.read_text())
    runs = written["runs"]
    assert sorted(runs) == ["bias-eps8-seed0", "bias-eps8-seed1"]
    for run_id, run in runs.items():
        recorded = json.loads((out / "resampled" / "runs" / run_id / "result.json").read_text())
        assert run["3"]["downstream_accuracy"] == recorded["downstream_accuracy"] == run["recorded_accuracy"]
        assert run["3"]["fid"] == recorded["fid"], run_id
        assert run["2"]["fid"] != run["3"]["fid"], "another step count samples other images"
    (difference,) = written["differences"]
    per_seed = [runs[r]["2"]["downstream_accuracy"] - runs[r]["3"]["downstream_accuracy"] for r in sorted(runs)]
    assert (difference["steps"], difference["suite_steps"], difference["n"]) == (2, 3, 2)
    assert abs(difference["mean"] - sum(per_seed) / 2) < 1e-12
    assert "2 − 3 steps" in capsys.readouterr().out

    # A run that cannot be rebuilt is left out by name; the others are still measured and written.
    (out / "resampled" / "runs" / "bias-eps8-seed1" / "trainable.safetensors").unlink()
    assert _script().resample(argparse.Namespace(**{**vars(args), "out": str(tmp_path / "again.json")})) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert sorted(again["runs"]) == ["bias-eps8-seed0"] and again["differences"] == []
    assert "bias-eps8-seed1 left out" in capsys.readouterr().err


def test_bad_step_counts_and_an_empty_results_folder_are_one_line_errors(tmp_path, monkeypatch, capsys):
    path = tmp_path / "resampled.yaml"
    path.write_text(yaml.safe_dump(SUITE))
    script = _script()
    for steps, results, message in [("0", tmp_path, "--steps 0: give sampling step counts from 1 to"),
                                    ("x", tmp_path, "--steps 'x': give comma-separated whole numbers"),
                                    ("", tmp_path, "--steps : give sampling step counts from 1 to"),
                                    ("2", tmp_path / "none", "--results-dir")]:
        monkeypatch.setattr(sys, "argv", ["resample_steps.py", str(path), "--steps", steps,
                                          "--results-dir", str(results)])
        assert script.main() == 2
        captured = capsys.readouterr()
        assert message in captured.err and len(captured.err.strip().splitlines()) == 1, (steps, captured.err)
