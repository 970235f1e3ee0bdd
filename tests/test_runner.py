"""`dpbench run` end to end on real (tiny) data: results, staleness, privacy of what is written, files,
failures, a real kill -9 and resume."""

from __future__ import annotations

import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from dpbench.cli import main
from dpbench.results import RunResult, load_results

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
    "methods": [{"name": "loda", "options": {"hidden": 4, "target": "conv"}}, {"name": "bias", "lr": 0.01}],
    "training": {"ema_decay": 0.9, "checkpoint_seconds": 0},
    "sampling": {"steps": 4, "num_samples": 60, "batch_size": 60, "grid_per_class": 2},
    "evaluation": {"classifier_seeds": [0], "classifier_epochs": 1, "fid_max_reference": 200},
}
RUN_IDS = ["bias-eps5-seed0", "bias-epsinf-seed0", "loda-eps5-seed0", "loda-epsinf-seed0"]


def _write_suite(tmp_path, name="micro.yaml", **changes) -> Path:
    suite = json.loads(json.dumps(MICRO))
    suite.update(changes)
    path = tmp_path / name
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


def _trainable(results_dir: Path, run_id: str) -> dict:
    from safetensors.torch import load_file

    return load_file(results_dir / "runs" / run_id / "trainable.safetensors")


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    """One real run of the micro suite (module-scoped: several tests read what it wrote)."""
    root = tmp_path_factory.mktemp("micro")
    suite_path = _write_suite(root, privacy={**MICRO["privacy"], "epsilons": [5, 8, "inf"]})
    old_umask = os.umask(0o022)
    try:
        assert main(["run", str(suite_path), "--no-progress", "--results-dir", str(root / "out")]) == 0
    finally:
        os.umask(old_umask)
    return root, suite_path, root / "out" / "micro"


def test_run_end_to_end(micro_run):
    root, _, results_dir = micro_run
    records = load_results(results_dir)
    assert sorted(r.run_id for r in records) == sorted(RUN_IDS + ["bias-eps8-seed0", "loda-eps8-seed0"])
    for r in records:
        assert r.status == "ok" and 0 <= r.downstream_accuracy <= 1 and r.fid > 0
        assert len(r.per_class_accuracy) == 10
        assert r.total_peak_memory_bytes > r.peak_memory_bytes > 0 and r.throughput_examples_per_s > 0
        assert r.memory_breakdown["parameters"] > 0 and r.config_hash
        assert r.lr == (0.01 if r.method == "bias" else 1e-3)
        assert r.method_options == ({"hidden": 4, "target": "conv"} if r.method == "loda" else {})
        folder = results_dir / "runs" / r.run_id
        assert (folder / "samples.png").is_file() and (folder / "run.log").is_file()
        assert not (folder / "checkpoint.pt").exists()
        if math.isfinite(r.epsilon):
            assert 0 < r.epsilon_spent <= r.epsilon and r.noise_source == r.sampling_source == "os_entropy"
            assert r.clipping.mode == "fixed" and r.clipping_diagnostics.source == "public_data"
        else:
            assert r.epsilon_spent is None and r.noise_multiplier == 0 and r.noise_source == "none"
    for eps in (5, 8):
        sigmas = {r.noise_multiplier for r in records if r.epsilon == eps}
        assert len(sigmas) == 1, "one σ per ε cell, shared by every method"
    base = json.loads((results_dir / "baselines.json").read_text())
    assert base["pretrained_fid"] > 0 and base["real_data_accuracy"] > 0.5
    assert len((results_dir / "results.csv").read_text().splitlines()) == 1 + len(records)
    assert (results_dir / "report" / "index.html").is_file(), "the report goes under --results-dir"
    assert not (root / "reports").exists() and not Path("reports", "micro").exists()
    assert not list(results_dir.rglob("*.tmp"))


def test_nothing_private_leaves_a_private_run(micro_run):
    """No statistic of private data outside the mechanism in what a private run writes: no training
    loss in result.json, results.csv or the run's log (ε = ∞ runs may keep theirs)."""
    _, _, results_dir = micro_run
    for r in load_results(results_dir):
        raw = json.loads((results_dir / "runs" / r.run_id / "result.json").read_text())
        log = (results_dir / "runs" / r.run_id / "run.log").read_text()
        assert len(raw["curves"]["step_time_s"]) == r.steps
        if math.isfinite(r.epsilon):
            assert raw["final_loss"] is None and "loss" not in log.lower() and "loss" not in raw["curves"]
        else:
            assert raw["final_loss"] is not None and len(raw["curves"]["loss"]) == r.steps
    header = (results_dir / "results.csv").read_text().splitlines()[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in (results_dir / "results.csv").read_text().splitlines()[1:]]
    assert all(row["final_loss"] == "" for row in rows if row["epsilon"] != "inf")


def test_one_memory_measurement_per_method_and_batch(micro_run):
    """The ε of a DP run does not change its memory: one probe per (method, physical batch, mode)."""
    _, _, results_dir = micro_run
    records = {r.run_id: r for r in load_results(results_dir)}
    for method in ("bias", "loda"):
        a, b = records[f"{method}-eps5-seed0"], records[f"{method}-eps8-seed0"]
        assert (a.total_peak_memory_bytes, a.peak_memory_bytes) == (b.total_peak_memory_bytes, b.peak_memory_bytes)


def test_result_files_honour_the_umask(micro_run):
    _, _, results_dir = micro_run
    for path in [results_dir / "baselines.json", *results_dir.glob("runs/*/result.json"), results_dir / "results.csv"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_unchanged_rerun_skips_and_changed_suite_is_refused(micro_run, capsys):
    root, suite_path, results_dir = micro_run
    stamp = {r.run_id: r.created_at for r in load_results(results_dir)}
    out = ["--no-progress", "--no-report", "--results-dir", str(root / "out")]
    assert main(["run", str(suite_path), *out]) == 0
    assert {r.run_id: r.created_at for r in load_results(results_dir)} == stamp, "finished runs are skipped"

    changed = _write_suite(root, "micro-changed.yaml", privacy={**MICRO["privacy"], "epsilons": [5, 8, "inf"]},
                           methods=[MICRO["methods"][0], {"name": "bias", "lr": 0.02}])
    capsys.readouterr()
    assert main(["run", str(changed), *out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bias-eps5-seed0" in err and "bias-eps8-seed0" in err and "loda" not in err
    assert "--rerun-changed" in err and "--results-dir" in err
    assert {r.run_id: r.created_at for r in load_results(results_dir)} == stamp, "nothing was touched"

    assert main(["run", str(changed), *out, "--only", "epsilon=5", "--rerun-changed"]) == 0
    after = {r.run_id: r for r in load_results(results_dir)}
    assert after["bias-eps5-seed0"].created_at != stamp["bias-eps5-seed0"] and after["bias-eps5-seed0"].lr == 0.02
    assert after["loda-eps5-seed0"].created_at == stamp["loda-eps5-seed0"]


def test_same_seed_gives_different_weights_unless_noise_is_reproducible(tmp_path, capsys):
    """Issue 8: the DP noise must not be a function of the published seed."""
    only = ["--only", "method=bias", "--only", "epsilon=5", "--no-progress"]
    suite_path = _write_suite(tmp_path)
    for name in ("a", "b"):
        assert main(["run", str(suite_path), *only, "--no-report", "--results-dir", str(tmp_path / name)]) == 0
    a, b = (_trainable(tmp_path / n / "micro", "bias-eps5-seed0") for n in ("a", "b"))
    assert any(not (a[k] == b[k]).all() for k in a)

    seeded = _write_suite(tmp_path, "seeded.yaml", privacy={**MICRO["privacy"], "reproducible": True})
    for name in ("c", "d"):
        assert main(["run", str(seeded), *only, "--results-dir", str(tmp_path / name)]) == 0
    c, d = (_trainable(tmp_path / n / "micro", "bias-eps5-seed0") for n in ("c", "d"))
    assert all((c[k] == d[k]).all() for k in c)
    record = load_results(tmp_path / "c" / "micro")[0]
    assert record.noise_source == record.sampling_source == "seeded"
    report = (tmp_path / "c" / "micro" / "report" / "index.html").read_text()
    assert "not a DP release" in report


def test_path_like_names_never_become_paths(tmp_path, capsys):
    for suite_name, label in (("../../escape", "bias"), ("ok", "../../x"), ("ok", "/tmp/x")):
        raw = json.loads(json.dumps(MICRO))
        raw["name"] = suite_name
        raw["methods"] = [{"name": "bias", "label": label}]
        path = tmp_path / "traversal.yaml"
        path.write_text(yaml.safe_dump(raw))
        assert main(["run", str(path), "--results-dir", str(tmp_path / "out")]) == 2
        assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "escape").exists()


def test_a_failing_run_is_recorded_and_the_grid_goes_on(tmp_path, monkeypatch, capsys):
    """A plug-in method that raises: its runs fail with status, error and phase; the other runs finish;
    the grid exits 1 and lists the failures; a re-run retries only the failed ones."""
    from dpbench.methods.base import Method
    from dpbench.registry import METHODS

    class Broken(Method):
        name = "broken"

        def prepare(self, model):
            raise RuntimeError("this adapter cannot be attached")

    METHODS.add("broken", Broken, "a method that fails (test plug-in)")
    try:
        suite_path = _write_suite(tmp_path, methods=[{"name": "broken"}, {"name": "bias"}])
        args = ["run", str(suite_path), "--no-progress", "--no-report", "--results-dir", str(tmp_path / "out")]
        assert main(args) == 1
        err = capsys.readouterr().err
        assert "failed: broken-eps5-seed0" in err and "cannot be attached" in err
        records = {r.run_id: r for r in load_results(tmp_path / "out" / "micro")}
        assert records["broken-eps5-seed0"].status == "failed" and records["broken-eps5-seed0"].phase == "train"
        assert records["bias-eps5-seed0"].status == "ok" and records["bias-epsinf-seed0"].status == "ok"
        stamp = records["bias-eps5-seed0"].created_at
        assert main(args) == 1
        again = {r.run_id: r for r in load_results(tmp_path / "out" / "micro")}
        assert again["bias-eps5-seed0"].created_at == stamp and again["broken-eps5-seed0"].created_at != records["broken-eps5-seed0"].created_at
    finally:
        METHODS._entries.pop("broken"), METHODS._loaded.pop("broken")


def test_dry_run_prints_the_grid_with_estimates(tmp_path, capsys):
    suite_path = _write_suite(tmp_path)
    assert main(["run", str(suite_path), "--dry-run", "--results-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    for run_id in RUN_IDS:
        assert run_id in out
    assert "estimate" in out and "MiB" in out and not (tmp_path / "out").exists()


def test_dry_run_json_has_per_run_and_total_estimates(tmp_path, capsys):
    suite_path = _write_suite(tmp_path)
    assert main(["run", str(suite_path), "--dry-run", "--json", "--cache-dir", str(tmp_path / "cache")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["time_estimated"] and plan["num_examples_source"] == "data" and plan["num_examples"] == 1437
    assert [r["run_id"] for r in plan["runs"]] == sorted(RUN_IDS, key=[r["run_id"] for r in plan["runs"]].index)
    assert {r["run_id"] for r in plan["runs"]} == set(RUN_IDS)
    for r in plan["runs"]:
        phases = r["estimated_phase_seconds"]
        assert all(v > 0 for v in phases.values()) and r["estimated_seconds"] == pytest.approx(sum(phases.values()))
        assert r["estimated_memory_bytes"] > 0
    assert plan["pretrain_estimated_seconds"] > 0, "nothing cached: pretraining is part of the cost"
    assert plan["total_estimated_seconds"] == pytest.approx(
        sum(r["estimated_seconds"] for r in plan["runs"]) + plan["pretrain_estimated_seconds"]
        + plan["baselines_estimated_seconds"])
    # DP per-example gradients cost memory that a non-private step does not hold
    memory = {r["run_id"]: r["estimated_memory_bytes"] for r in plan["runs"]}
    assert memory["loda-eps5-seed0"] > memory["loda-epsinf-seed0"]


def test_a_gpu_suite_dry_runs_on_a_cpu_machine(capsys):
    """Issue 18: `dpbench run cifar10 --dry-run` on a CPU machine was exit 2. Now: the grid, σ/q/T, analytic
    memory, and a plain statement that time is not estimated here."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the suite can be timed here")
    assert main(["run", "cifar10", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["time_estimated"] is False and plan["total_estimated_seconds"] is None
    assert any("time not estimated" in n and "CUDA" in n for n in plan["notes"])
    assert len(plan["runs"]) == 60 and all(r["estimated_memory_bytes"] > 0 for r in plan["runs"])
    full = next(r for r in plan["runs"] if r["label"] == "full" and r["epsilon"] == "10")
    bias = next(r for r in plan["runs"] if r["label"] == "bias" and r["epsilon"] == "10")
    assert full["estimated_memory_bytes"] > 20 * bias["estimated_memory_bytes"]


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
    for path in runs.glob("*/result.json"):  # a killed process leaves no half-written result
        RunResult.model_validate_json(path.read_text())
    again = _dpbench("run", str(suite_path), "--no-report", cwd=tmp_path, env=env)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert "resumed from step" in err
    assert sorted(p.parent.name for p in runs.glob("*/result.json")) == RUN_IDS
    records = {r.run_id: r for r in load_results(runs.parent)}
    # privacy is accounted for every step of the released model: the same ε as an uninterrupted run
    from dpbench.privacy.accounting import epsilon_spent

    for run_id in interrupted:
        r = records[run_id]
        if math.isfinite(r.epsilon):
            full = epsilon_spent("rdp", [(r.noise_multiplier, r.sample_rate, r.steps)], r.delta)
            assert r.epsilon_spent == pytest.approx(full, rel=1e-12)
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
