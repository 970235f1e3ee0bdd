"""`executor: ray` on a local Ray cluster (``ray.init(num_cpus=2)``, runs on CPU): the same results as
`executor: local`, a worker killed mid-run is retried and resumes, a failing run does not stop the others."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from dpbench.cli import main
from dpbench.results import load_results

try:
    from tests.test_runner import MICRO, _write_suite
except ImportError:
    from test_runner import MICRO, _write_suite

ray = pytest.importorskip("ray")
# Starting Ray and its worker processes, then pretraining and running small grids: minutes on 2 CPU cores.
pytestmark = pytest.mark.slow

RAY_ON_CPU = {"name": "ray", "gpus_per_run": 0, "cpus_per_run": 1, "max_retries": 2}
REPRODUCIBLE = {**MICRO["privacy"], "reproducible": True}


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _run(suite, results: str, *extra) -> int:
    return main(["run", str(suite), "--no-progress", "--no-report", "--results-dir", results, *extra])


def _trainable(results_dir, run_id):
    from safetensors.torch import load_file

    return load_file(results_dir / "runs" / run_id / "trainable.safetensors")


def test_ray_grid_gives_the_results_of_the_local_executor(tmp_path, ray_cluster):
    local = _write_suite(tmp_path, "local.yaml", privacy=REPRODUCIBLE, methods=[{"name": "bias", "lr": 0.01}])
    on_ray = _write_suite(tmp_path, "ray.yaml", privacy=REPRODUCIBLE, methods=[{"name": "bias", "lr": 0.01}],
                          executor=RAY_ON_CPU)
    threads = torch.get_num_threads()
    # As each Ray run (cpus_per_run 1): sums in the same order, the same weights. The pretrained model is
    # the local run's for both (the cache is shared), though Ray's pretraining task would have 2 threads.
    torch.set_num_threads(1)
    try:
        assert _run(local, str(tmp_path / "local")) == 0
    finally:
        torch.set_num_threads(threads)
    assert _run(on_ray, str(tmp_path / "ray")) == 0
    a = {r.run_id: r for r in load_results(tmp_path / "local" / "micro")}
    b = {r.run_id: r for r in load_results(tmp_path / "ray" / "micro")}
    assert sorted(a) == sorted(b) == ["bias-eps5-seed0", "bias-epsinf-seed0"]
    for run_id in a:
        assert b[run_id].status == "ok" and b[run_id].epsilon_spent == a[run_id].epsilon_spent
        assert b[run_id].downstream_accuracy == pytest.approx(a[run_id].downstream_accuracy, abs=1e-9)
        assert b[run_id].fid == pytest.approx(a[run_id].fid, rel=1e-6)
        wa, wb = _trainable(tmp_path / "local" / "micro", run_id), _trainable(tmp_path / "ray" / "micro", run_id)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), run_id
    assert (tmp_path / "ray" / "micro" / "baselines.json").is_file()
    # the pretraining/baselines task has the node's 2 CPUs (nothing else runs yet), each run cpus_per_run
    baselines = json.loads((tmp_path / "ray" / "micro" / "baselines.json").read_text())
    assert baselines["device"].endswith("x2 threads"), baselines["device"]
    assert all(r.device.endswith("x1 threads") for r in b.values()), [r.device for r in b.values()]
    assert len((tmp_path / "ray" / "micro" / "results.csv").read_text().splitlines()) == 1 + len(b)


def _run_task_workers() -> list:
    """This test's own Ray worker processes that are executing a run (Ray titles them ray::run_task)."""
    import psutil

    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.cmdline() and child.cmdline()[0].startswith("ray::run_task"):
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


def _run_killing_one_worker(suite, results: str, *extra) -> tuple[int, list[str]]:
    """Run the grid; meanwhile SIGKILL the worker of the first run that has checkpointed (the suite runs one
    run at a time: 2 CPUs per run). Returns the exit code and the run whose worker was killed."""
    runs = Path(results) / "micro" / "runs"
    killed = []

    def kill_once_a_checkpoint_exists():
        deadline = time.time() + 600
        while time.time() < deadline and not killed:
            checkpoints = list(runs.glob("*/checkpoint.pt"))
            workers = _run_task_workers()
            if checkpoints and len(workers) == 1:
                killed.append(checkpoints[0].parent.name)
                os.kill(workers[0].pid, signal.SIGKILL)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_once_a_checkpoint_exists, daemon=True)
    killer.start()
    code = _run(suite, results, *extra)
    killer.join(timeout=5)
    assert killed, "no worker was caught mid-run"
    return code, killed


def test_a_killed_worker_is_retried_and_resumes_from_its_checkpoint(tmp_path, ray_cluster):
    """Ray retries the task of a killed worker, which resumes; every run finishes exactly once with the ε of
    an uninterrupted run."""
    from dpbench.privacy.accounting import epsilon_spent

    suite = _write_suite(tmp_path, privacy={**MICRO["privacy"], "steps": 12}, methods=[{"name": "bias"}],
                         executor={**RAY_ON_CPU, "cpus_per_run": 2})
    runs = tmp_path / "out" / "micro" / "runs"
    code, killed = _run_killing_one_worker(suite, str(tmp_path / "out"))
    assert code == 0
    records = {r.run_id: r for r in load_results(runs.parent)}
    assert sorted(records) == ["bias-eps5-seed0", "bias-epsinf-seed0"]
    assert all(r.status == "ok" for r in records.values())
    assert "resumed from step" in (runs / killed[0] / "run.log").read_text()
    assert len((runs.parent / "results.csv").read_text().splitlines()) == 1 + len(records), "each run appears once"
    r = records[killed[0]]
    if math.isfinite(r.epsilon):
        assert r.epsilon_spent == pytest.approx(epsilon_spent("rdp", [(r.noise_multiplier, r.sample_rate, r.steps)],
                                                              r.delta), rel=1e-12)
    assert not list(runs.glob("*/checkpoint.pt"))


def test_a_run_whose_every_try_died_is_recorded_as_failed(tmp_path, ray_cluster, capsys):
    suite = _write_suite(tmp_path, privacy={**MICRO["privacy"], "steps": 12}, methods=[{"name": "bias"}],
                         executor={**RAY_ON_CPU, "cpus_per_run": 2, "max_retries": 0})
    code, killed = _run_killing_one_worker(suite, str(tmp_path / "out"), "--only", "epsilon=5")
    assert code == 1 and f"failed: {killed[0]} (worker)" in capsys.readouterr().err
    (record,) = load_results(tmp_path / "out" / "micro")
    assert record.status == "failed" and record.phase == "worker" and record.device is None
    assert (tmp_path / "out" / "micro" / "runs" / killed[0] / "checkpoint.pt").is_file(), "kept: a re-run resumes"


def test_a_failing_run_does_not_stop_the_others(tmp_path, ray_cluster, capsys):
    """A plug-in method registered in the driver travels to the workers; its runs fail and are recorded,
    the others finish, the grid exits 1 listing the failures."""
    from dpbench.methods.base import Method
    from dpbench.registry import METHODS

    class Broken(Method):
        name = "broken"

        def prepare(self, model):
            raise RuntimeError("this adapter cannot be attached")

    METHODS.add("broken", Broken, "a method that fails (test plug-in)")
    try:
        suite = _write_suite(tmp_path, methods=[{"name": "broken"}, {"name": "bias"}], executor=RAY_ON_CPU)
        assert _run(suite, str(tmp_path / "out"), "--only", "epsilon=5") == 1
        assert "failed: broken-eps5-seed0" in capsys.readouterr().err
        records = {r.run_id: r for r in load_results(tmp_path / "out" / "micro")}
        assert records["broken-eps5-seed0"].status == "failed" and records["broken-eps5-seed0"].phase == "train"
        assert "cannot be attached" in records["broken-eps5-seed0"].error
        assert records["bias-eps5-seed0"].status == "ok"
    finally:
        METHODS._entries.pop("broken"), METHODS._loaded.pop("broken")
