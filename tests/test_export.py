"""`dpbench export`: one row per run with every documented result field, read back with pandas."""

from __future__ import annotations

import json
import math
import sys

import pandas as pd
import pytest

from dpbench.cli import main
from dpbench.results import GpuPhase, RunResult, load_results

try:
    from tests._result_fixtures import make_results_dir, run_id_of, update_run
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from _result_fixtures import make_results_dir, run_id_of, update_run


@pytest.fixture()
def results(tmp_path):
    root = make_results_dir(tmp_path / "results" / "tiny", methods=("full", "loda"), epsilons=(1.0, math.inf),
                            seeds=(0, 1), samples=False)
    update_run(root, run_id_of("loda", 1.0, 1), status="failed", phase="train", error="CUDA out of memory",
               downstream_accuracy=None)
    update_run(root, run_id_of("full", 1.0, 0), gpu_phases={"train": GpuPhase(seconds=12.5, energy_joules=800.0)},
               curves={"step_time_s": [0.2, 0.1]})
    return root


def _covers_every_field(columns) -> None:
    for field in RunResult.model_fields:
        assert field in columns or any(c.startswith(field + ".") for c in columns), field


def test_csv_has_one_row_per_run_and_every_field(results, tmp_path, capsys):
    out = tmp_path / "runs.csv"
    assert main(["export", str(results), "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    runs = {r.run_id: r for r in load_results(results)}
    assert sorted(frame["run_id"]) == sorted(runs) and len(frame) == 8
    _covers_every_field(frame.columns)
    for column in ("clipping.mode", "clipping_diagnostics.signal_to_noise", "memory_breakdown.per_sample_gradients",
                   "gpu_phases.train.energy_joules", "versions.torch", "method_options.rank", "curves.step_time_s"):
        assert column in frame.columns
    row = frame.set_index("run_id").loc[run_id_of("loda", 1.0, 0)]
    run = runs[run_id_of("loda", 1.0, 0)]
    assert row["downstream_accuracy"] == pytest.approx(run.downstream_accuracy)
    assert row["total_peak_memory_bytes"] == run.total_peak_memory_bytes
    assert row["clipping.max_grad_norm"] == run.clipping.max_grad_norm
    assert json.loads(row["per_class_accuracy"]) == pytest.approx(run.per_class_accuracy)
    failed = frame.set_index("run_id").loc[run_id_of("loda", 1.0, 1)]
    assert (failed["status"], failed["phase"], failed["error"]) == ("failed", "train", "CUDA out of memory")
    assert math.isinf(frame.set_index("run_id").loc[run_id_of("full", math.inf, 0), "epsilon"])


def test_jsonl_to_stdout_keeps_lists_and_the_inf_convention(results, capsys):
    assert main(["export", str(results), "--format", "jsonl"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 8
    by_id = {line["run_id"]: line for line in lines}
    reference = by_id[run_id_of("full", math.inf, 1)]
    assert reference["epsilon"] == "inf" and reference["final_loss"] == pytest.approx(0.06)
    assert isinstance(by_id[run_id_of("full", 1.0, 0)]["downstream_accuracies"], list)
    _covers_every_field(lines[0].keys() | {k for line in lines for k in line})


def test_parquet_round_trips(results, tmp_path):
    pytest.importorskip("pyarrow")
    out = tmp_path / "runs.parquet"
    assert main(["export", str(results.parent), "--format", "parquet", "--out", str(out)]) == 0  # a folder of suites
    frame = pd.read_parquet(out)
    assert len(frame) == 8 and set(frame["results_dir"]) == {str(results)}
    _covers_every_field(frame.columns)
    row = frame.set_index("run_id").loc[run_id_of("full", 1.0, 1)]
    assert list(row["per_class_accuracy"]) == pytest.approx(
        {r.run_id: r for r in load_results(results)}[run_id_of("full", 1.0, 1)].per_class_accuracy)


def test_parquet_without_pyarrow_is_a_one_line_error(results, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what an environment without the extra looks like
    assert main(["export", str(results), "--format", "parquet", "--out", str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'dpbench[parquet]'" in err[0]
    assert not (tmp_path / "x.parquet").exists()


def test_bad_inputs_are_one_line_errors(results, tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing")]) == 2
    assert main(["export", str(results), "--format", "parquet"]) == 2  # binary: needs --out
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no suite results" in err[0] and "--out" in err[1]
