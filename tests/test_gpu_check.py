"""benchmarks/gpu_check.sh on CPU: its argument handling, its time budget and the JSON it assembles.

The measurements it makes are the GPU's (nothing here says they are right on one); what runs on CPU is
its plumbing: every part at toy size with ``--device cpu --dry-run`` (the tiny preset, 8×8, a few steps;
two methods in the profile, the selfcheck of one).
"""

from __future__ import annotations

import importlib.metadata

import json
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=900)


def test_dry_run_on_cpu_writes_one_json_with_every_part(tmp_path):
    out = tmp_path / "check.json"
    done = run_check("--device", "cpu", "--dry-run", "--methods", "full,bias", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    check = json.loads(out.read_text())
    assert check["kind"] == "dpbench-gpu-check" and check["dry_run"] and check["passed"]
    assert set(check["parts"]) == {"selfcheck", "pytest_gpu", "profile", "cifar10_run"}
    selfcheck = check["parts"]["selfcheck"]
    assert selfcheck["report"]["passed"] and 0 < selfcheck["bf16_clip_max_ratio"] <= 1 + 1e-6
    counts = check["parts"]["pytest_gpu"]["counts"]  # without CUDA every gpu test is collected and skipped
    assert counts["tests"] > 0 and counts["skipped"] == counts["tests"] and counts["failures"] == 0
    profile = check["parts"]["profile"]
    assert set(profile["methods"]) == {"full", "bias"}
    for method, entry in profile["methods"].items():
        dp, nonprivate = entry["entries"]["dp"], entry["entries"]["nonprivate"]
        assert entry["step_time_ratio"] == pytest.approx(dp["step_time_s"] / nonprivate["step_time_s"])
        assert entry["total_memory_ratio"] == pytest.approx(
            dp["total_peak_memory_bytes"] / nonprivate["total_peak_memory_bytes"])
        assert entry["energy_ratio"] is None  # no NVML on CPU: no number, not a made-up one
        assert dp["physical_batch_size"] == entry["physical_batch_size"] == 4
    cell = check["parts"]["cifar10_run"]
    assert cell["suite"] == "cifar10" and cell["method"] == "loda" and cell["noise_multiplicity"] == 4
    assert cell["steps"] == 3 and cell["median_step_time_s"] > 0 and cell["total_peak_memory_bytes"] > 0
    assert check["versions"]["torch"] == importlib.metadata.version("torch")


def test_a_part_over_the_budget_is_recorded_as_skipped_and_fails_the_check(tmp_path):
    out = tmp_path / "check.json"
    done = run_check("--device", "cpu", "--dry-run", "--budget-s", "0", "--only", "pytest_gpu", "--out", str(out))
    assert done.returncode == 1 and "FAILED: pytest_gpu" in done.stdout
    check = json.loads(out.read_text())
    assert not check["passed"] and "time budget" in check["parts"]["pytest_gpu"]["skipped"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("args,says", [((), "CUDA is not available"), (("--device", "cpu"), "only with --dry-run")])
def test_a_device_that_cannot_run_it_is_one_line_and_exit_2(tmp_path, args, says):
    out = tmp_path / "check.json"
    done = run_check(*args, "--out", str(out))
    assert done.returncode == 2 and says in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()
