"""`--set key.path=value`: command-line overrides of a suite, applied to its YAML before validation."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from dpbench.cli import build_parser, main
from dpbench.config.overrides import apply_overrides, effective_suite_yaml, parse_override
from dpbench.config.suite import load_suite, read_suite_yaml, resolve_suite_path
from dpbench.errors import UserError
from dpbench.runner.plan import plan_runs

QUICKSTART = resolve_suite_path("quickstart")


def test_paths_and_values_are_parsed_as_yaml():
    assert parse_override("privacy.epsilons=[1,10]") == (["privacy", "epsilons"], [1, 10])
    assert parse_override("methods[loda].lr=0.01") == (["methods", ("loda",), "lr"], 0.01)
    assert parse_override("methods[0].options.hidden=0") == (["methods", ("0",), "options", "hidden"], 0)
    assert parse_override("privacy.epsilons=[2, .inf]")[1] == [2, math.inf]
    assert parse_override("training.mixed_precision=false")[1] is False


def test_overrides_change_the_validated_suite_like_an_edit_would():
    suite = load_suite(QUICKSTART, ["privacy.epsilons=[1,10]", "methods[loda].lr=0.01", "seeds=[0, 1]",
                                    "methods[loda].lr=0.02"])  # a later override wins
    assert [float(e) for e in suite.privacy.epsilons] == [1.0, 10.0]
    assert suite.method("loda").lr == 0.02 and suite.seeds == [0, 1]
    original = load_suite(QUICKSTART)
    assert suite.method("lora").lr == original.method("lora").lr  # nothing else moved
    raw = yaml.safe_load(QUICKSTART.read_text())
    apply_overrides(raw, ["methods[loda].lr=0.5"])
    assert raw == yaml.safe_load(QUICKSTART.read_text())  # the caller's mapping is not modified


def test_overrides_enter_the_config_hash_exactly_as_the_same_edit(tmp_path):
    by_override = {p.spec.run_id: p.config_hash
                   for p in plan_runs(load_suite(QUICKSTART, ["methods[loda].lr=0.0123"]), num_examples=1437)}
    plain = {p.spec.run_id: p.config_hash for p in plan_runs(load_suite(QUICKSTART), num_examples=1437)}
    raw = yaml.safe_load(QUICKSTART.read_text())
    next(m for m in raw["methods"] if m.get("label", m["name"]) == "loda")["lr"] = 0.0123
    edited_file = tmp_path / "quickstart.yaml"
    edited_file.write_text(yaml.safe_dump(raw))
    by_edit = {p.spec.run_id: p.config_hash for p in plan_runs(load_suite(edited_file), num_examples=1437)}
    assert by_override == by_edit
    changed = {run_id for run_id in plain if plain[run_id] != by_override[run_id]}
    assert changed == {run_id for run_id in plain if run_id.startswith("loda-")}


def test_suite_yaml_records_the_effective_suite_and_the_overrides():
    overrides = ["privacy.epsilons=[1,10]", "methods[loda].lr=0.01"]
    text = effective_suite_yaml(QUICKSTART, overrides, apply_overrides(read_suite_yaml(QUICKSTART), overrides)).decode()
    assert "#   --set privacy.epsilons=[1,10]" in text and "#   --set methods[loda].lr=0.01" in text
    recorded = yaml.safe_load(text)
    assert recorded["privacy"]["epsilons"] == [1, 10]
    assert load_suite(QUICKSTART, overrides).model_dump() == load_suite_from_text(text).model_dump()
    assert effective_suite_yaml(QUICKSTART, [], read_suite_yaml(QUICKSTART)) == QUICKSTART.read_bytes()  # no overrides: the file as it is


def load_suite_from_text(text: str):
    from dpbench.config.suite import parse_suite

    return parse_suite(yaml.safe_load(text))


@pytest.mark.parametrize("override, message", [
    ("privacy.epsilons", "expected KEY.PATH=VALUE"),
    ("methods[lodx].lr=0.01", "no entry labelled 'lodx' in methods (entries: full, bias, lora, loda)"),
    ("methods[9].lr=0.01", "methods has 4 entries, no [9]"),
    ("methods.lr=0.01", "methods is a list: select an entry first"),
    ("name.x=1", "name is a str"),
    ("privacy.epsilons=[1,", "the value is not valid YAML"),
    ("privacy..epsilons=1", "is not a key"),
    ("privacy.epsilonz=[1]", "privacy.epsilonz: unknown key 'epsilonz' — did you mean 'epsilons'?"),
    ("privacy.epsilons=[-1]", "privacy.epsilons"),
])
def test_a_bad_override_is_one_line_naming_it_exit_2(override, message, capsys):
    assert main(["validate", "quickstart", "--set", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_validate_json_shows_the_overridden_grid(capsys):
    assert main(["validate", "quickstart", "--json", "--set", "privacy.epsilons=[3]", "--set", "seeds=[0]",
                 "--set", "methods[lora].lr=0.004"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["epsilon"] for r in rows} == {"3"} and len(rows) == 4
    assert {r["lr"] for r in rows if r["method"] == "lora"} == {0.004}


@pytest.mark.parametrize("command", [["run", "quickstart", "--dry-run"], ["validate", "quickstart"],
                                     ["tune", "quickstart"], ["audit", "quickstart"]])
def test_every_suite_command_takes_set(command):
    args = build_parser().parse_args(command + ["--set", "a.b=1", "--set", "methods[loda].lr=0.01"])
    assert args.set == ["a.b=1", "methods[loda].lr=0.01"]


def test_apply_to_a_non_mapping_is_a_user_error():
    with pytest.raises(UserError, match="not a YAML mapping"):
        apply_overrides(["x"], ["a=1"])
