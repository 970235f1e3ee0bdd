"""The terminal summary (dpbench.reporting.summary.format_summary) that `dpbench run` and `dpbench report` print."""

from __future__ import annotations

import re

import pytest

from dpbench.errors import UserError
from dpbench.reporting.summary import format_summary

try:
    from tests._result_fixtures import accuracy_of, make_results_dir, run_id_of, update_run
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from _result_fixtures import accuracy_of, make_results_dir, run_id_of, update_run

HEADERS = ("method", "ε", "seeds", "accuracy [95% CI]", "FID [95% CI]", "ε spent", "total peak memory",
           "examples/s [95% CI]", "trainable params")


def _table(text: str) -> list[list[str]]:
    """The table's rows split on runs of two or more spaces (cells themselves hold single spaces)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("method"))
    rows = []
    for line in lines[start + 2:]:
        if not line or line.startswith(("baselines", "WARNING")):
            break
        rows.append(re.split(r"\s{2,}", line))
    return rows


def test_summary_table(tmp_path):
    results = make_results_dir(tmp_path / "suite", samples=False)
    text = format_summary(results)
    assert text.splitlines()[0] == "tiny-mnist: 27 finished runs"
    header = text.splitlines()[1]
    assert [h for h in HEADERS if h in header] == list(HEADERS)
    rows = _table(text)
    assert [(r[0], r[1]) for r in rows][:3] == [("full", "1"), ("full", "10"), ("full", "∞ (non-private)")]
    assert [r[0] for r in rows[::3]] == ["full", "lora", "loda"]  # the suite's order
    full_eps1 = dict(zip(HEADERS, rows[0]))
    mean = sum(accuracy_of("full", 1.0, seed) for seed in range(3)) / 3
    assert full_eps1["accuracy [95% CI]"].startswith(f"{mean:.3g} [")
    assert full_eps1["seeds"] == "3" and full_eps1["ε spent"] == "0.98" and full_eps1["trainable params"] == "150000"
    assert full_eps1["total peak memory"].endswith("MiB")
    assert dict(zip(HEADERS, rows[2]))["ε spent"] == "—"
    assert "baselines (non-private references): pretrained model accuracy 0.45, FID 60; classifier trained on " \
           "real data 0.985" in text
    assert "WARNING" not in text


def test_single_seed_says_there_are_no_intervals(tmp_path):
    results = make_results_dir(tmp_path / "suite", seeds=(0,), samples=False, baselines=False)
    text = format_summary(results)
    assert _table(text)[0][3] == f"{accuracy_of('full', 1.0, 0):.3g} (n=1, no interval)"
    assert "WARNING: One seed per method and ε: there are no intervals" in text
    assert "baselines: none recorded" in text


def test_warnings_for_seeded_noise_failed_runs_and_mixed_devices(tmp_path):
    results = make_results_dir(tmp_path / "suite", samples=False, epsilons=(1.0,))
    update_run(results, run_id_of("lora", 1.0, 0), noise_source="seeded")
    update_run(results, run_id_of("loda", 1.0, 2), status="failed", phase="train", error="RuntimeError: boom")
    update_run(results, run_id_of("full", 1.0, 1), device="cuda:NVIDIA H200")
    text = format_summary(results)
    assert text.splitlines()[0] == "tiny-mnist: 8 finished runs, 1 failed"
    assert "WARNING: Not a DP release: the noise was derived from the seed in 1 run (lora-eps1-seed0)" in text
    assert "WARNING: failed runs (left out of every statistic): loda-eps1-seed2" in text
    assert "WARNING: this table mixes devices" in text
    assert dict(zip(HEADERS, _table(text)[2]))["seeds"] == "2"


def test_missing_results_are_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        format_summary(tmp_path / "nope")
