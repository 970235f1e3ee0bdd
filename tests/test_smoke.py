"""`--smoke`: every cell of a suite end to end at 2 steps, in its own results folder, marked smoke; and
`--set` on a real run (its values in the results, in suite.yaml and in the config hash)."""

from __future__ import annotations

import json

import yaml

from dpbench.cli import main
from dpbench.config.smoke import smoke_overrides
from dpbench.config.suite import load_suite, read_suite_yaml, resolve_suite_path
from dpbench.results import load_results

try:
    from tests.test_runner import RUN_IDS, _write_suite
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from test_runner import RUN_IDS, _write_suite


def test_smoke_settings_of_a_built_in_suite():
    path = resolve_suite_path("mnist10k-cpu")
    suite = load_suite(path, smoke_overrides(read_suite_yaml(path), path.stem))
    original = load_suite(path)
    assert suite.name == "mnist10k-cpu-smoke" and suite.privacy.steps == 2 and suite.privacy.epochs is None
    assert suite.sampling.steps == 2 and suite.evaluation.classifier_seeds == [0]
    assert suite.privacy.expected_batch_size <= 64
    # every cell is still there: the same methods, ε and seeds
    assert [m.method_label for m in suite.methods] == [m.method_label for m in original.methods]
    assert suite.privacy.epsilons == original.privacy.epsilons and suite.seeds == original.seeds


def test_smoke_run_goes_to_its_own_folder_marked_smoke(tmp_path, capsys):
    suite_path = _write_suite(tmp_path)
    out = tmp_path / "out"
    assert main(["run", str(suite_path), "--smoke", "--no-progress", "--results-dir", str(out),
                 "--set", "methods[bias].lr=0.0123"]) == 0
    assert not (out / "micro").exists()
    folder = out / "micro-smoke"
    results = {r.run_id: r for r in load_results(folder)}
    assert sorted(results) == RUN_IDS  # every cell
    assert all(r.smoke and r.steps == 2 and r.status == "ok" and r.suite == "micro-smoke" for r in results.values())
    assert results["bias-eps5-seed0"].lr == 0.0123  # the user's --set, kept under --smoke
    for run in results.values():  # the curves --report-to logs: step times always, the loss of ε = ∞ only
        assert len(run.curves["step_time_s"]) == 2 and ("loss" in run.curves) == (run.epsilon == float("inf"))
    recorded = (folder / "suite.yaml").read_text()
    assert "#   --set methods[bias].lr=0.0123" in recorded and "#   --set privacy.steps=2" in recorded
    assert yaml.safe_load(recorded)["methods"][1]["lr"] == 0.0123
    html = (folder / "report" / "index.html").read_text()
    assert "Smoke test (dpbench run --smoke)" in html
    printed = capsys.readouterr().out
    assert "WARNING: Smoke test" in printed
    # the same command again: the override is part of the config hash, so nothing is stale and all is skipped
    assert main(["run", str(suite_path), "--smoke", "--no-progress", "--no-report", "--results-dir", str(out),
                 "--set", "methods[bias].lr=0.0123"]) == 0
    # a different override makes exactly the bias runs stale
    assert main(["run", str(suite_path), "--smoke", "--no-progress", "--no-report", "--results-dir", str(out),
                 "--set", "methods[bias].lr=0.02"]) == 2
    err = capsys.readouterr().err
    assert "2 finished run(s) were made with other settings" in err and "bias-eps5-seed0" in err
    assert "loda-" not in err.split("other settings")[1].split("—")[0]
    hashes = {r.run_id: r.config_hash for r in load_results(folder)}
    assert json.loads(json.dumps(hashes)) == {k: results[k].config_hash for k in RUN_IDS}
