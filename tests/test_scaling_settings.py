"""The scaling settings on a machine without GPU or NVML: the executor schema, what `dpbench run` refuses
before any work (one line each, exit 2), and telemetry that records nothing rather than failing."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from dpbench.cli import main
from dpbench.config.suite import parse_suite, resolve_suite_path
from dpbench.errors import UserError


def _quickstart(**changes) -> dict:
    raw = yaml.safe_load(resolve_suite_path("quickstart").read_text())
    raw.update(changes)
    return raw


def test_executor_is_a_name_or_a_mapping():
    assert parse_suite(_quickstart(executor="local")).executor.name == "local"
    ray = parse_suite(_quickstart(executor={"name": "ray", "address": "auto", "gpus_per_run": 0.5})).executor
    assert (ray.name, ray.address, ray.gpus_per_run, ray.max_retries) == ("ray", "auto", 0.5, 2)
    assert parse_suite(_quickstart(executor="ray")).executor.gpus_per_run == 1
    with pytest.raises(UserError, match="executor: gpus_per_run is for the ray executor only"):
        parse_suite(_quickstart(executor={"name": "local", "gpus_per_run": 0}))
    with pytest.raises(UserError, match="executor.gpus_per_run: must be ≤ 1"):
        parse_suite(_quickstart(executor={"name": "ray", "gpus_per_run": 2}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA refuses")
@pytest.mark.parametrize("executor, device, expected", [
    ({"name": "ray"}, "auto", "executor.gpus_per_run: 1 GPU per run, but this machine has no CUDA GPU"),
    ({"name": "ray", "gpus_per_run": 0}, "cuda", "executor.gpus_per_run: 0 runs on CPU, but device is cuda"),
    ({"name": "ray", "gpus_per_run": 1, "address": "ray://head:10001"}, "cpu",
     "executor.gpus_per_run: 1 runs on GPUs, but device is cpu"),
])
def test_ray_settings_the_machine_cannot_honour_are_one_line_exit_2(tmp_path, capsys, executor, device, expected):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(_quickstart(executor=executor, device=device)))
    assert main(["run", str(path), "--results-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err
    assert not (tmp_path / "out").exists(), "refused before any work"


def test_torchrun_refuses_the_ray_executor(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(_quickstart(executor={"name": "ray", "gpus_per_run": 0}, device="cpu")))
    assert main(["run", str(path), "--results-dir", str(tmp_path / "out")]) == 2
    assert "executor: ray cannot run under torchrun" in capsys.readouterr().err


def test_telemetry_without_nvml_records_nothing_and_never_fails():
    from dpbench.engine.telemetry import GpuTelemetry, nvml_handle, pci_bus_id

    assert pci_bus_id(0, 0x3B, 0) == "00000000:3B:00.0" and pci_bus_id(1, 0xC1, 0x1F) == "00000001:C1:1F.0"
    assert nvml_handle("cpu") is None
    telemetry = GpuTelemetry("cpu")
    with telemetry.phase("train"):
        torch.zeros(8).sum()
    assert telemetry.readings == {} and telemetry.energy_joules is None and telemetry.peak_process_memory_bytes is None


def test_results_without_the_new_fields_still_load(tmp_path):
    """A result.json written before world_size, energy and the physical batch setting existed."""
    from dpbench.results import RunResult, read_model

    try:
        from tests._result_fixtures import make_results_dir
    except ImportError:
        from _result_fixtures import make_results_dir

    results_dir = make_results_dir(tmp_path)
    path = next(results_dir.glob("runs/*/result.json"))
    raw = json.loads(path.read_text())
    for key in ("world_size", "energy_joules", "gpu_phases", "nvml_process_memory_bytes", "physical_batch_size_setting"):
        raw.pop(key, None)
    path.write_text(json.dumps(raw))
    record = read_model(path, RunResult)
    assert record.world_size == 1 and record.energy_joules is None and record.gpu_phases == {}


def test_report_shows_energy_per_run_when_nvml_measured_it(tmp_path):
    from dpbench.reporting.report import build_report
    from dpbench.results import load_results

    try:
        from tests._result_fixtures import make_results_dir, update_run
    except ImportError:
        from _result_fixtures import make_results_dir, update_run

    results_dir = make_results_dir(tmp_path / "results")
    build_report(results_dir, tmp_path / "without")
    assert "GPU energy" not in (tmp_path / "without" / "report.md").read_text()
    for r in load_results(results_dir):
        update_run(results_dir, r.run_id, energy_joules=123_000.0,
                   gpu_phases={"train": {"seconds": 100.0, "energy_joules": 123_000.0, "mean_power_watts": 1230.0}})
    build_report(results_dir, tmp_path / "with")
    report = (tmp_path / "with" / "report.md").read_text()
    assert "GPU energy per run (kJ)" in report and "123" in report
