"""Consistent command-line flags: a description and examples in every --help, --only wherever runs or
methods are selected, --json for ls and dry-run, `ls suites` wrapped at word boundaries."""

from __future__ import annotations

import json

import pytest

from dpbench.cli import EXAMPLES, build_parser, main
from dpbench.config.suite import builtin_suites

try:
    from tests.test_runner import _write_suite
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from test_runner import _write_suite

COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_has_a_description_and_examples(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    usage, description = text.split("\n\n")[:2]
    assert usage.startswith(f"usage: dpbench {command}") and len(description.split()) >= 4
    examples = text[text.index("examples:"):].splitlines()[1:]
    assert examples and all(line.strip().startswith(f"dpbench {command}") for line in examples)
    assert set(EXAMPLES) == set(COMMANDS)


@pytest.mark.parametrize("columns", ["60", "200"])
def test_ls_suites_wraps_without_cutting_words(columns, monkeypatch, capsys):
    import yaml

    monkeypatch.setenv("COLUMNS", columns)
    assert main(["ls", "suites"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for name, path in builtin_suites().items():
        description = " ".join(str(yaml.safe_load(path.read_text()).get("description", "")).split())
        assert f"{name} {description}" in text  # every word, whole, in order


def test_ls_json(capsys):
    assert main(["ls", "methods", "--json"]) == 0
    listed = {entry["name"]: entry["description"] for entry in json.loads(capsys.readouterr().out)}
    assert {"full", "bias", "lora", "loda", "attention"} <= set(listed) and all(listed.values())
    assert main(["ls", "suites", "--json"]) == 0
    assert {e["name"] for e in json.loads(capsys.readouterr().out)} == set(builtin_suites())


def test_dry_run_json(tmp_path, capsys):
    suite = _write_suite(tmp_path)
    assert main(["run", str(suite), "--dry-run", "--json", "--only", "method=bias",
                 "--results-dir", str(tmp_path / "out")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in plan["runs"]] == ["bias-eps5-seed0", "bias-epsinf-seed0"]
    for run in plan["runs"]:
        assert run["estimated_phase_seconds"]["train"] > 0 and run["estimated_memory_bytes"] > 0 and run["steps"] == 4
    assert plan["num_examples"] == 1437 and plan["total_estimated_seconds"] > 0
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_selfcheck_selects_with_only(capsys):
    assert main(["selfcheck", "--only", "method=bias", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [m["method"] for m in report["methods"]] == ["bias"] and report["passed"]


@pytest.mark.parametrize("command, message", [
    (["selfcheck", "--only", "epsilon=1"], "selfcheck selects by method="),
    (["profile", "--only", "seed=0"], "profile selects by method=, label="),
    (["tune", "quickstart", "--only", "seed=1"], "tune selects by method=, label=, epsilon="),
    (["tune", "quickstart", "--only", "epsilon=2", "--only", "epsilon=10"], "tune chooses learning rates at one ε"),
])
def test_only_outside_what_a_command_selects_is_one_line_exit_2(command, message, capsys):
    assert main(command) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_report_takes_the_reports_dir_of_run(tmp_path, capsys):
    try:
        from tests._result_fixtures import make_results_dir
    except ImportError:
        from _result_fixtures import make_results_dir
    results = make_results_dir(tmp_path / "results" / "tiny", methods=("lora",), epsilons=(1.0,), seeds=(0,),
                               samples=False, baselines=False)
    assert main(["report", str(results), "--reports-dir", str(tmp_path / "reports")]) == 0
    assert (tmp_path / "reports" / "tiny" / "index.html").is_file()
    assert main(["report", str(results), "--reports-dir", "a", "--out", "b"]) == 2


def test_json_without_dry_run_is_refused(capsys):
    assert main(["run", "quickstart", "--json"]) == 2
    assert "add --dry-run" in capsys.readouterr().err
