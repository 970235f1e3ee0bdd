"""The CUDA paths, on a GPU machine: `pytest -m gpu tests/test_gpu.py` (skipped without CUDA).

The selfcheck on CUDA with bf16 autocast, memory telemetry (PyTorch's allocator and NVML by PCI bus id,
energy per phase), a real out-of-memory error and the largest-batch search, a two-step suite with
``physical_batch_size: auto``, torchrun on two GPUs (NCCL) and the Ray executor with one GPU per run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

try:
    from tests.test_runner import MICRO, _write_suite
except ImportError:
    from test_runner import MICRO, _write_suite


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_selfcheck_on_cuda_including_bf16():
    from dpbench.engine.selfcheck import format_selfcheck, run_selfcheck

    report = run_selfcheck(device="cuda")
    assert report.passed, format_selfcheck(report)
    assert report.device.startswith("cuda:")
    for method in report.methods:
        assert method.mixed_precision_max_ratio <= 1 + 1e-6, method.method


def test_memory_telemetry_on_cuda():
    """The allocator's peak sees a 256 MiB tensor; NVML is the same GPU as CUDA's (by PCI bus id) and its
    energy counter moves during a phase of work."""
    import pynvml

    from dpbench.engine.memory import PeakMemory
    from dpbench.engine.telemetry import GpuTelemetry, nvml_handle

    device = torch.device("cuda", torch.cuda.current_device())
    with PeakMemory(device) as mem:
        block = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
        del block
    assert mem.peak_bytes >= 256 * 2**20 and mem.kind == "cuda_max_allocated"
    handle = nvml_handle(device)
    if handle is None:
        pytest.skip("NVML is not available to this process")
    props = torch.cuda.get_device_properties(device)
    uuid = pynvml.nvmlDeviceGetUUID(handle)
    assert str(props.uuid) in (uuid.decode() if isinstance(uuid, bytes) else uuid), "NVML found another GPU"
    assert mem.nvml_peak_bytes is not None and mem.nvml_peak_bytes >= 256 * 2**20

    telemetry = GpuTelemetry(device)
    x = torch.randn(4096, 4096, device=device)
    with telemetry.phase("train"):
        for _ in range(200):
            x = torch.tanh(x @ x)
    reading = telemetry.readings["train"]
    assert reading.seconds > 0 and reading.mean_utilization_percent is not None
    if reading.energy_joules is not None:  # the counter exists from Volta on
        assert reading.energy_joules > 0 and reading.mean_power_watts > 0


def test_a_real_out_of_memory_error_and_the_largest_batch_search():
    from dpbench.engine.memory import is_out_of_memory
    from dpbench.runner.batch_size import find_max_batch

    free, _ = torch.cuda.mem_get_info()
    with pytest.raises(torch.cuda.OutOfMemoryError) as err:
        torch.empty(free * 4, dtype=torch.uint8, device="cuda")
    assert is_out_of_memory(err.value)
    del err
    torch.cuda.empty_cache()
    gib = 2**30
    found = find_max_batch(lambda b: torch.empty(b * gib, dtype=torch.uint8, device="cuda"), start=1, limit=4096)
    free_gib = torch.cuda.mem_get_info()[0] / gib
    assert found is not None and free_gib * 0.9 <= found + 1 and found <= free_gib


def test_a_two_step_suite_on_cuda_with_auto_physical_batch(tmp_path):
    from dpbench.cli import main
    from dpbench.results import load_results

    suite = _write_suite(tmp_path, device="cuda",
                         privacy={**MICRO["privacy"], "steps": 2, "physical_batch_size": "auto"},
                         training={**MICRO["training"], "mixed_precision": "auto"})
    env_cache = tmp_path / "cache"
    assert main(["run", str(suite), "--no-progress", "--no-report", "--results-dir", str(tmp_path / "out"),
                 "--cache-dir", str(env_cache)]) == 0
    records = load_results(tmp_path / "out" / "micro")
    assert records and all(r.status == "ok" for r in records)
    for r in records:
        assert r.device.startswith("cuda:") and r.memory_kind == "cuda_max_allocated"
        assert r.physical_batch_size_setting == "auto" and 1 <= r.physical_batch_size <= r.expected_batch_size
        if r.gpu_phases:  # NVML available
            assert set(r.gpu_phases) == {"train", "sample", "evaluate"}
    assert list((env_cache / "physical_batch").glob("*.json")), "the auto search is cached"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_torchrun_on_two_gpus(tmp_path):
    from dpbench.results import load_results

    suite = _write_suite(tmp_path, device="cuda", privacy={**MICRO["privacy"], "reproducible": True})
    env = {**os.environ, "DPBENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(_free_port()), "-m", "dpbench", "run", str(suite), "--only", "method=bias",
                           "--no-progress", "--no-report", "--results-dir", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = load_results(tmp_path / "out" / "micro")
    assert records and all(r.status == "ok" and r.world_size == 2 for r in records)


def test_ray_executor_with_one_gpu_per_run(tmp_path):
    pytest.importorskip("ray")
    from dpbench.cli import main
    from dpbench.results import load_results

    suite = _write_suite(tmp_path, device="cuda", executor={"name": "ray", "gpus_per_run": 1},
                         methods=[{"name": "bias"}])
    assert main(["run", str(suite), "--no-progress", "--no-report", "--results-dir", str(tmp_path / "out")]) == 0
    records = load_results(tmp_path / "out" / "micro")
    assert records and all(r.status == "ok" and r.device.startswith("cuda:") for r in records)
