"""Regression checks (dpbench.reporting.regress) on results directories and profile files."""

from __future__ import annotations

import json

import pytest

from dpbench.errors import UserError
from dpbench.reporting.regress import format_regress_table, regress

try:
    from tests._result_fixtures import (METHODS, MODEL_SIZES, SEEDS, make_profile, make_results_dir, run_id_of,
                                        update_run)
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from _result_fixtures import METHODS, MODEL_SIZES, SEEDS, make_profile, make_results_dir, run_id_of, update_run

ROW_KEYS = {"method", "setting", "metric", "baseline", "current", "change", "status", "note"}


def _worse(rows, metric=None):
    return [r for r in rows if r["status"] == "worse" and (metric is None or r["metric"] == metric)]


# ------------------------------------------------------------------------------------------ results dirs

@pytest.fixture(scope="module")
def current(tmp_path_factory):
    return make_results_dir(tmp_path_factory.mktemp("current") / "suite", samples=False)


def test_results_against_itself(current):
    rows, ok = regress(current, current)
    assert ok
    assert rows and all(ROW_KEYS == set(r) for r in rows)
    assert {r["status"] for r in rows} == {"ok"}
    # total peak memory is compared when both sides recorded it
    assert {r["metric"] for r in rows} == {"total_peak_memory_bytes", "dp_step_time_ratio"}
    # 3 methods x 3 epsilons memory rows + 3 methods x 2 finite epsilons ratio rows
    assert len(rows) == 9 + 6
    assert [r["method"] for r in rows[::5]] == ["full", "lora", "loda"]  # the suite's order, not alphabetical
    table = format_regress_table(rows)
    assert "no regression" in table and "ε=∞" in table and "full" in table


def test_results_memory_regression(current, tmp_path):
    baseline = make_results_dir(tmp_path / "suite", samples=False, mem_scale=0.1)
    rows, ok = regress(current, baseline)
    assert not ok
    assert len(_worse(rows, "total_peak_memory_bytes")) == 9
    assert not _worse(rows, "dp_step_time_ratio")
    assert all(r["change"] == pytest.approx(9.0, rel=1e-3) for r in _worse(rows))
    table = format_regress_table(rows)
    assert "WORSE" in table and "REGRESSION" in table


def test_step_memory_is_compared_when_a_side_lacks_the_total(current, tmp_path):
    baseline = make_results_dir(tmp_path / "suite", samples=False, mem_scale=0.1)
    for method in METHODS:
        for seed in SEEDS:
            update_run(baseline, run_id_of(method, 1.0, seed), total_peak_memory_bytes=None)
    rows, ok = regress(current, baseline)
    assert not ok
    eps1 = [r for r in rows if r["setting"] == "ε=1" and r["metric"].endswith("memory_bytes")]
    assert {r["metric"] for r in eps1} == {"peak_memory_bytes"} and all(r["status"] == "worse" for r in eps1)
    assert {r["metric"] for r in _worse(rows) if r["setting"] != "ε=1"} == {"total_peak_memory_bytes"}


def test_results_dp_throughput_regression(current, tmp_path):
    # the baseline's DP runs were 10x faster while its non-private runs are unchanged
    baseline = make_results_dir(tmp_path / "suite", samples=False, dp_time_scale=0.1)
    rows, ok = regress(current, baseline)
    assert not ok
    worse = _worse(rows)
    assert len(worse) == 6 and {r["metric"] for r in worse} == {"dp_step_time_ratio"}
    assert all("∞" not in r["setting"] for r in worse)
    assert all(r["change"] == pytest.approx(9.0) for r in worse)


def test_results_slower_machine_is_not_a_regression(current, tmp_path):
    slower = make_results_dir(tmp_path / "suite", samples=False, dp_time_scale=2.0, np_time_scale=2.0)
    rows, ok = regress(slower, current)
    assert ok, format_regress_table(rows)
    rows, ok = regress(current, slower)  # and a faster one is not an improvement either
    assert ok and not [r for r in rows if r["status"] == "better"]


def test_results_raw_throughput_without_reference(tmp_path):
    base = make_results_dir(tmp_path / "base" / "s", samples=False, epsilons=(1.0, 10.0))
    slow = make_results_dir(tmp_path / "cur" / "s", samples=False, epsilons=(1.0, 10.0), dp_time_scale=2.0)
    rows, ok = regress(slow, base)
    assert not ok
    assert {r["metric"] for r in _worse(rows)} == {"throughput_examples_per_s"}
    assert regress(base, base)[1]


def test_missing_rows_and_failed_runs_do_not_fail(tmp_path, current):
    fewer = make_results_dir(tmp_path / "suite", samples=False, methods=("full", "lora"))
    rows, ok = regress(fewer, current)
    assert ok
    missing = [r for r in rows if r["status"] == "missing"]
    assert missing and {r["method"] for r in missing} == {"loda"}
    # a failed run is no measurement: its cell is compared on the seeds that finished
    update_run(fewer, "lora-eps1-seed2", status="failed", error="RuntimeError: boom", phase="train")
    assert regress(fewer, current)[1]


# ------------------------------------------------------------------------------------------ profiles

def test_profiles(tmp_path):
    cur = make_profile(tmp_path / "cur.json")
    assert regress(cur, cur)[1]
    rows, ok = regress(cur, make_profile(tmp_path / "mem.json", mem_scale=0.1))
    assert not ok and len(_worse(rows)) == len(_worse(rows, "total_peak_memory_bytes")) == 18
    rows, ok = regress(cur, make_profile(tmp_path / "fast.json", dp_time_scale=0.1))
    assert not ok and {r["metric"] for r in _worse(rows)} == {"dp_step_time_ratio"}
    assert all(r["setting"].startswith("dp, batch") for r in _worse(rows))
    slower = make_profile(tmp_path / "slow.json", dp_time_scale=2.0, np_time_scale=2.0)
    rows, ok = regress(slower, cur)
    assert ok, format_regress_table(rows)


def test_profiles_over_model_sizes_are_matched_per_model(tmp_path):
    cur = make_profile(tmp_path / "cur.json", model_sizes=MODEL_SIZES, batch_sizes=(32,))
    rows, ok = regress(cur, cur)
    assert ok and len(rows) == 3 * 3 * (2 + 1)  # models x methods x (2 memory rows + 1 ratio row)
    assert any(r["setting"] == "dp, batch 32, small 28px" for r in rows)


def test_folders_of_profiles_and_suites(tmp_path):
    for side, scale in (("base", 1.0), ("cur", 0.1)):
        make_results_dir(tmp_path / side / "suite-a", suite="suite-a", samples=False, methods=("loda",))
        make_results_dir(tmp_path / side / "suite-b", suite="suite-b", samples=False, methods=("lora",))
        make_profile(tmp_path / side / "profile-cpu.json", methods=("loda",), dp_time_scale=1 / scale)
    rows, ok = regress(tmp_path / "cur", tmp_path / "base")
    assert not ok
    worse = _worse(rows)
    # one profile on each side: compared whatever the files are called; suites are matched by name
    assert worse and all(r["setting"].startswith("dp, batch") for r in worse)
    assert any(r["setting"].startswith("suite-a: ") for r in rows)
    assert any(r["setting"].startswith("suite-b: ") for r in rows)
    assert regress(tmp_path / "base", tmp_path / "base")[1]


def test_bad_inputs_are_user_errors(tmp_path, current):
    with pytest.raises(UserError, match="does not exist"):
        regress(tmp_path / "nope", current)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no finished runs"):
        regress(tmp_path / "empty", current)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "something-else"}))
    with pytest.raises(UserError, match="not a dpbench profile"):
        regress(bad, current)
    with pytest.raises(UserError, match="tolerance"):
        regress(current, current, tolerance=-1)
    with pytest.raises(UserError, match="nothing to compare"):
        regress(make_profile(tmp_path / "p.json"), current)
