"""`--report-to tensorboard|mlflow`, against the real libraries: TensorBoard event files read back with
TensorBoard's own reader, and an MLflow file store read back with MLflow's client."""

from __future__ import annotations

import math
import sys

import pytest

from dpbench.cli import main
from dpbench.results import load_results

try:
    from tests._result_fixtures import make_results_dir, run_id_of, update_run
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from _result_fixtures import make_results_dir, run_id_of, update_run

PRIVATE, REFERENCE = run_id_of("loda", 1.0, 0), run_id_of("loda", math.inf, 0)


@pytest.fixture()
def results(tmp_path):
    root = make_results_dir(tmp_path / "results" / "tiny", methods=("full", "loda"), epsilons=(1.0, math.inf),
                            seeds=(0,), samples=False)
    for run in load_results(root):
        curves = {"step_time_s": [0.1 + 0.01 * i for i in range(5)]}
        if math.isinf(run.epsilon):
            curves["loss"] = [1.0 / (1 + i) for i in range(5)]
        update_run(root, run.run_id, curves=curves)
    # a private run whose file carries a loss curve (a hand-edited or foreign file): it must never be logged
    update_run(root, PRIVATE, curves={"step_time_s": [0.2, 0.3], "max_grad_norm": [1.0, 0.8, 0.7],
                                      "loss": [9.0, 9.0]}, clipping={"mode": "quantile", "max_grad_norm": 1.0})
    return root


def test_tensorboard_event_files_hold_metrics_curves_and_settings(results, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["report", str(results), "--report-to", "tensorboard"]) == 0
    assert f"tensorboard: {results / 'tensorboard'}" in capsys.readouterr().out
    runs = {r.run_id: r for r in load_results(results)}

    def read(run_id):
        events = EventAccumulator(str(results / "tensorboard" / run_id), size_guidance={"scalars": 0, "tensors": 0})
        events.Reload()
        return events

    private = read(PRIVATE)
    scalars = private.Tags()["scalars"]
    assert [e.value for e in private.Scalars("metrics/downstream_accuracy")] == pytest.approx(
        [runs[PRIVATE].downstream_accuracy])
    assert [(e.step, e.value) for e in private.Scalars("curves/max_grad_norm")] == [
        (0, pytest.approx(1.0)), (1, pytest.approx(0.8)), (2, pytest.approx(0.7))]
    assert "curves/loss" not in scalars  # a private run's loss never leaves it
    reference = read(REFERENCE)
    assert [e.value for e in reference.Scalars("curves/loss")] == pytest.approx([1.0, 0.5, 1 / 3, 0.25, 0.2])
    assert len(reference.Scalars("curves/step_time_s")) == 5
    settings = reference.Tensors("settings/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "method: loda" in settings and "epsilon: inf" in settings
    # logging again replaces a run's events instead of doubling them
    assert main(["report", str(results), "--report-to", "tensorboard"]) == 0
    assert len(read(REFERENCE).Scalars("curves/loss")) == 5
    assert not list((results / "tensorboard").glob(".*.tmp"))


def test_mlflow_file_store_holds_params_metrics_and_curves(results, tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert main(["report", str(results), "--report-to", "mlflow"]) == 0
    uri = (results / "mlruns").resolve().as_uri()
    assert f"mlflow: {uri}" in capsys.readouterr().out
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny-mnist")
    logged = {r.data.tags["dpbench.run_id"]: r for r in client.search_runs([experiment.experiment_id])}
    runs = {r.run_id: r for r in load_results(results)}
    assert sorted(logged) == sorted(runs)
    private = logged[PRIVATE]
    assert private.data.params["method"] == "loda" and private.data.params["epsilon"] == "1"
    assert private.data.params["option.hidden"] == "16" and private.data.params["clipping"] == "quantile"
    assert private.data.metrics["downstream_accuracy"] == pytest.approx(runs[PRIVATE].downstream_accuracy)
    history = client.get_metric_history(private.info.run_id, "curve.max_grad_norm")
    assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (1, 0.8), (2, 0.7)]
    assert not client.get_metric_history(private.info.run_id, "curve.loss")
    losses = client.get_metric_history(logged[REFERENCE].info.run_id, "curve.loss")
    assert [m.value for m in sorted(losses, key=lambda m: m.step)] == pytest.approx([1.0, 0.5, 1 / 3, 0.25, 0.2])
    assert private.info.status == "FINISHED"
    # logging again adds nothing: runs with the same config hash are already there
    assert main(["report", str(results), "--report-to", "mlflow"]) == 0
    assert len(client.search_runs([experiment.experiment_id])) == len(runs)


@pytest.mark.parametrize("target, module", [("tensorboard", "torch.utils.tensorboard"),
                                            ("mlflow", "mlflow.tracking")])
def test_a_missing_extra_is_a_one_line_error_before_any_work(target, module, results, tmp_path, monkeypatch,
                                                              capsys):
    monkeypatch.setitem(sys.modules, module, None)  # what an environment without the extra looks like
    expected = (f"dpbench: error: --report-to {target} needs the {target} package, which is not installed: "
                f"pip install 'dpbench[{target}]'")
    assert main(["run", "quickstart", "--report-to", target]) == 2  # before the grid, not after hours of runs
    assert capsys.readouterr().err.strip().splitlines() == [expected]
    assert main(["report", str(results), "--report-to", target]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [expected]
