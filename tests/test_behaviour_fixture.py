"""Issue 21: a redesign must not change what a run computes. A small suite (five methods, ε = 5 and ∞,
reproducible noise and sampling) is run, and every number its ``result.json`` derives from the
computation, plus a hash of the trained weights, is compared exactly with a fixture written by the
code before the redesign (``tests/data/behaviour_fixture.json``).

Timings, measured memory, dates and versions are left out: they describe the machine, not the
computation. To rewrite the fixture after an intended change of behaviour, run
``DPBENCH_WRITE_BEHAVIOUR_FIXTURE=1 python -m pytest tests/test_behaviour_fixture.py`` and say why in
the commit."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import yaml
from threadpoolctl import threadpool_limits

from dpbench.cli import main

from test_runner import MICRO

FIXTURE = Path(__file__).parent / "data" / "behaviour_fixture.json"

# What a run computes (fields of result.json). Everything else is the machine, the clock or the version.
COMPUTED = ("epsilon", "epsilon_spent", "noise_multiplier", "sample_rate", "steps", "expected_batch_size",
            "physical_batch_size", "lr", "noise_multiplicity", "clipping", "clipping_diagnostics",
            "downstream_accuracies", "downstream_accuracy", "downstream_accuracy_std", "per_class_accuracy",
            "precision", "recall", "fid", "fid_num_samples", "fid_reference", "trainable_params",
            "total_params", "memory_breakdown", "method", "method_options", "status", "noise_source",
            "sampling_source", "run_id", "seed")


def _suite() -> dict:
    suite = json.loads(json.dumps(MICRO))
    suite["name"] = "behaviour"
    suite["privacy"]["reproducible"] = True
    suite["methods"] = [{"name": "loda", "options": {"hidden": 4, "target": "conv"}}, {"name": "bias", "lr": 0.01},
                        {"name": "lora", "options": {"rank": 2, "target": "conv"}}, {"name": "full", "lr": 0.001},
                        {"name": "ia3"}]
    return suite


def _computed(results_dir: Path) -> dict:
    out = {}
    for run_dir in sorted((results_dir / "behaviour" / "runs").iterdir()):
        result = json.loads((run_dir / "result.json").read_text())
        weights = hashlib.sha256((run_dir / "trainable.safetensors").read_bytes()).hexdigest()
        out[run_dir.name] = {**{k: result.get(k) for k in COMPUTED}, "trainable_sha256": weights}
    return out


def test_a_small_suite_computes_what_it_computed_before_the_redesign(tmp_path):
    # Float sums depend on how many threads split them (torch's and the BLAS under numpy's FID): one
    # thread, whatever the machine has.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            _check(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _check(tmp_path) -> None:
    path = tmp_path / "behaviour.yaml"
    path.write_text(yaml.safe_dump(_suite()))
    # Its own model cache: a tiny model pretrained earlier in the session under other thread counts would
    # differ in the last bits.
    assert main(["run", str(path), "--results-dir", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache"),
                 "--no-progress"]) == 0
    got = _computed(tmp_path / "results")
    if os.environ.get("DPBENCH_WRITE_BEHAVIOUR_FIXTURE") == "1":
        FIXTURE.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    expected = json.loads(FIXTURE.read_text())
    assert sorted(got) == sorted(expected)
    for run_id in expected:
        for key in expected[run_id]:
            assert got[run_id][key] == expected[run_id][key], f"{run_id}: {key} changed"
