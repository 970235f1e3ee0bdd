"""Suite files: the shipped suites validate; malformed ones fail with one line, exit 2, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dpbench.cli import main
from dpbench.config.suite import expand_runs, load_suite, suite_from_mapping

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = yaml.safe_load((REPO / "suites" / "quickstart.yaml").read_text())


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "suites").glob("*.yaml")))
def test_shipped_suites_validate(name, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["validate", "--json", f"suites/{name}.yaml"]) == 0
    text = (REPO / "suites" / f"{name}.yaml").read_text()
    assert "learning rate" in text.lower() or "Learning rates" in text, "every suite says where its lrs come from"
    rows = json.loads(capsys.readouterr().out)
    suite = load_suite(REPO / "suites" / f"{name}.yaml")
    per_budget = sum(len(suite.seeds_at(float(e))) for e in suite.privacy.epsilons)
    assert len(rows) == len(expand_runs(suite)) == per_budget * len(suite.methods)
    for key in ("run_id", "dataset", "method", "epsilon", "seed", "noise_multiplier", "sample_rate", "steps",
                "max_grad_norm", "noise_multiplicity"):
        assert all(key in r for r in rows)
    # the matched budget: one σ per ε, shared by every method; q and T identical everywhere
    by_eps = {}
    for r in rows:
        by_eps.setdefault(str(r["epsilon"]), set()).add(r["noise_multiplier"])
    assert all(len(sigmas) == 1 for sigmas in by_eps.values())
    assert len({(r["sample_rate"], r["steps"]) for r in rows}) == 1
    assert by_eps["inf"] == {0.0}
    finite = sorted((float(e), next(iter(s))) for e, s in by_eps.items() if e != "inf")
    assert all(a[1] > b[1] for a, b in zip(finite, finite[1:])), "σ must fall as ε grows"


def test_validate_text_lists_one_line_per_run(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["validate", "suites/quickstart.yaml"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 12 and lines[0].startswith("full-eps2-seed0") and "digits" in lines[0]


def _mutate(path: str, value):
    raw = json.loads(json.dumps(QUICKSTART))
    node = raw
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return yaml.safe_dump(raw)


_DELETE = object()

# (suite text, substrings the one-line error must contain)
BAD_SUITES = {
    "yaml_syntax": ("name: x\nprivacy: [1, 2\n", ["YAML syntax error", "line"]),
    "not_a_mapping": ("- just\n- a list\n", ["mapping"]),
    "unknown_top_key": (_mutate("colour", "blue"), ["colour", "unknown key"]),
    "unknown_nested_key": (_mutate("privacy.clip_norm", 1.0), ["privacy.clip_norm", "unknown key"]),
    "unknown_method": (_mutate("methods.3.name", "lodaa"), ["methods[3].name", "lodaa", "did you mean 'loda'"]),
    "unknown_dataset": (_mutate("data.private.name", "mnistt"), ["data.private.name", "mnistt", "did you mean 'mnist'"]),
    "unknown_preset": (_mutate("model.preset", "tinny"), ["model.preset", "did you mean 'tiny'"]),
    "epsilon_zero": (_mutate("privacy.epsilons", [0, 10]), ["privacy.epsilons", "> 0"]),
    "epsilon_negative": (_mutate("privacy.epsilons", [-1]), ["privacy.epsilons", "> 0"]),
    "delta_too_big_for_n": (_mutate("privacy.delta", 0.01), ["privacy.delta", "1/N", "1437"]),
    "delta_ge_one": (_mutate("privacy.delta", 1.5), ["privacy.delta", "must be < 1", "give a value < 1"]),
    "batch_larger_than_data": (_mutate("privacy.expected_batch_size", 5000), ["privacy.expected_batch_size", "1437"]),
    "missing_field": (_mutate("privacy.max_grad_norm", _DELETE), ["privacy.max_grad_norm", "missing"]),
    "missing_section": (_mutate("methods", _DELETE), ["methods", "missing"]),
    "wrong_type": (_mutate("privacy.physical_batch_size", "lots"), ["privacy.physical_batch_size", "integer"]),
    "epochs_and_steps": (_mutate("privacy.steps", 10), ["epochs", "steps"]),
    "bad_method_option": (_mutate("methods.2.options", {"rnak": 4}), ["methods[lora].options.rnak", "allowed options", "rank"]),
    "duplicate_method": (_mutate("methods.1", {"name": "full"}), ["full", "twice", "label"]),
    "unreachable_epsilon": (_mutate("privacy.epsilons", [1e-6]), ["privacy.epsilons", "unreachable"]),
    "image_size_mismatch": (_mutate("data.public.image_size", 28), ["data.public", "image_size"]),
    # issue 18: each of these was a traceback, a hang or a silent acceptance
    "epochs_100000": (_mutate("privacy.epochs", 100000), ["privacy.epochs", "T=", "100000", "lower privacy.epochs"]),
    "epochs_1e300": (_mutate("privacy.epochs", 1e300), ["privacy.epochs", "must be ≤"]),
    "repeated_seeds": (_mutate("seeds", [0, 0]), ["seeds", "listed twice", "list each seed once"]),
    "epsilon_seeds_unknown_budget": (_mutate("epsilon_seeds", {7: [0, 1]}),
                                     ["epsilon_seeds", "ε 7", "not in privacy.epsilons", "key it by one of them"]),
    "epsilon_seeds_not_a_budget": (_mutate("epsilon_seeds", {"ten": [0]}), ["epsilon_seeds", "'ten'", "not an ε"]),
    "epsilon_seeds_repeated_seed": (_mutate("epsilon_seeds", {10: [3, 3]}), ["epsilon_seeds", "seed 3", "listed twice"]),
    "missing_imagefolder": (_mutate("data.private", {"name": "imagefolder", "image_size": 8, "channels": 1,
                                                     "options": {"path": "/no/such/folder"}}),
                            ["data.private", "/no/such/folder", "not found"]),
    "duplicate_key": (_mutate("name", "quickstart") + "name: again\n", ["duplicate key", "'name'", "give each key once"]),
    "epsilon_1e300": (_mutate("privacy.epsilons", [1e300]), ["privacy.epsilons", "unreachable", "≤ 100"]),
}


@pytest.mark.parametrize("case", sorted(BAD_SUITES))
def test_bad_suite_is_one_line_exit_2(case, tmp_path, capsys):
    text, expected = BAD_SUITES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"dpbench: error: {path}")
    for piece in expected:
        assert piece in err, (piece, err)
    assert "Traceback" not in err


def test_not_utf8_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes((_mutate("description", "x") + "# written in Latin-1: café\n").encode("latin-1"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not UTF-8" in err and "save the suite as UTF-8" in err


def test_validate_marks_numbers_computed_from_an_assumed_n(tmp_path, capsys):
    """Issue 18: without the data, σ, q and T assume the dataset's nominal N — said on every line and in --json."""
    assert main(["validate", "mnist10k-cpu", "--data-root", str(tmp_path / "nothing-here")]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines and all("ASSUMED N=60000" in line for line in lines)
    assert "NOT FOUND" in err and str(tmp_path / "nothing-here") in err
    assert main(["validate", "mnist10k-cpu", "--json", "--data-root", str(tmp_path / "nothing-here")]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["num_examples"], r["num_examples_source"]) for r in rows} == {(60000, "nominal")}
    assert rows[0]["data_root"] == str(tmp_path / "nothing-here")


def test_quickstart_rows_say_their_n_is_real(capsys):
    assert main(["validate", "quickstart", "--json"]) == 0
    assert {(r["num_examples"], r["num_examples_source"]) for r in json.loads(capsys.readouterr().out)} == {(1437, "data")}


def test_relative_data_root_is_relative_to_the_suite_file(tmp_path, monkeypatch):
    """One rule wherever the command runs: a relative root written in a suite is relative to the suite's folder;
    one typed on the command line is relative to the working directory."""
    folder = tmp_path / "project" / "suites"
    folder.mkdir(parents=True)
    raw = yaml.safe_load(_mutate("data", {"root": "../data", "private": {"name": "digits", "image_size": 8, "channels": 1},
                                          "public": {"name": "shapes", "image_size": 8, "channels": 1}}))
    (folder / "s.yaml").write_text(yaml.safe_dump(raw))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    suite = load_suite(folder / "s.yaml")
    assert suite.data_root(suite.data.private) == str(tmp_path / "project" / "data")
    assert suite.data_root(suite.data.private, "cli-data") == str(elsewhere / "cli-data")
    # a copy written elsewhere (the tuned suite in the results folder) keeps reading the same data
    from dpbench.config.suite import with_absolute_data_roots

    copied = with_absolute_data_roots(yaml.safe_load((folder / "s.yaml").read_text()), folder)
    (elsewhere / "copy.yaml").write_text(yaml.safe_dump(copied))
    moved = load_suite(elsewhere / "copy.yaml")
    assert moved.data_root(moved.data.private) == str(tmp_path / "project" / "data")


def test_missing_suite_file(capsys):
    assert main(["validate", "does/not/exist.yaml"]) == 2
    assert "not found" in capsys.readouterr().err


def test_real_process_exit_code_and_no_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_SUITES["unknown_method"][0])
    proc = subprocess.run([sys.executable, "-m", "dpbench", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_ls_lists_registries(capsys):
    assert main(["ls", "datasets"]) == 0
    names = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert {"mnist", "fashion_mnist", "emnist", "cifar10", "svhn", "digits", "imagefolder", "npz"} <= names
    assert main(["ls", "methods"]) == 0
    names = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert {"full", "lora", "loda", "bias", "attention"} <= names


def test_ls_does_not_import_torch():
    code = "import sys; from dpbench.cli import main; main(['ls', 'methods']); main(['ls', 'datasets']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_only_filter_selects_runs():
    from dpbench.runner.plan import apply_filters
    from dpbench.errors import UserError

    runs = expand_runs(load_suite(REPO / "suites" / "quickstart.yaml"))
    picked = apply_filters(runs, ["method=loda", "epsilon=10"])
    assert [r.run_id for r in picked] == ["loda-eps10-seed0"]
    assert len(apply_filters(runs, ["epsilon=inf"])) == 4
    with pytest.raises(UserError):
        apply_filters(runs, ["method=nope"])


# ---------------------------------------------------------------------------------- hardening (issue 8)
MORE_BAD_SUITES = {
    "public_is_private": (_mutate("data.public", {"name": "digits", "image_size": 8, "channels": 1}),
                          ["data.public is the private dataset"]),
    "traversal_suite_name": (_mutate("name", "../../escape"), ["name", "not a usable name", "only letters, digits"]),
    "traversal_method_label": (_mutate("methods.0", {"name": "full", "label": "../../x"}), ["methods[0].label"]),
    "absolute_method_label": (_mutate("methods.0", {"name": "full", "label": "/tmp/x"}), ["methods[0].label"]),
    "fid_against_private_train": (_mutate("evaluation", {"fid_reference_split": "train"}),
                                  ["fid_reference_split", "use test"]),
    "bad_quantile": (_mutate("privacy.max_grad_norm", {"quantile": 1.5}), ["privacy.max_grad_norm.quantile", "must be < 1"]),
    "negative_clip": (_mutate("privacy.max_grad_norm", -1.0), ["privacy.max_grad_norm", "> 0"]),
}


@pytest.mark.parametrize("case", sorted(MORE_BAD_SUITES))
def test_unsafe_suites_are_rejected(case, tmp_path, capsys):
    text, expected = MORE_BAD_SUITES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for piece in expected:
        assert piece in err, (piece, err)


def test_every_problem_is_reported_at_once(tmp_path, capsys):
    raw = yaml.safe_load(_mutate("privacy.max_grad_nrom", 1.0))
    del raw["privacy"]["max_grad_norm"]
    raw["methods"][0]["name"] = "fulll"
    raw["privacy"]["delta"] = 5
    path = tmp_path / "many.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert any("privacy.max_grad_nrom: unknown key 'max_grad_nrom' — did you mean 'max_grad_norm'?" in line for line in lines)
    assert not any("Field required" in line for line in lines), "the misspelling is not reported as a missing key"
    assert any("privacy.delta" in line for line in lines)
    assert all(line.startswith(f"dpbench: error: {path}") for line in lines) and len(lines) == 2


def test_registry_names_are_all_reported(tmp_path, capsys):
    raw = json.loads(json.dumps(QUICKSTART))
    raw["methods"][0]["name"] = "fulll"
    raw["model"]["preset"] = "tinny"
    path = tmp_path / "names.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and any("did you mean 'tiny'" in l for l in lines) and any("did you mean 'full'" in l for l in lines)


def test_epsilon_seeds_give_one_budget_more_seeds():
    raw = {**QUICKSTART, "seeds": [0], "epsilon_seeds": {10: [0, 1, 2], "inf": [5]}}
    suite = suite_from_mapping(raw, "quickstart.yaml")
    runs = expand_runs(suite)
    seeds = {(r.epsilon, r.seed) for r in runs}
    finite = sorted(float(e) for e in suite.privacy.epsilons if e != "inf")
    assert {s for e, s in seeds if e == 10} == {0, 1, 2}
    assert {s for e, s in seeds if e == float("inf")} == {5}
    assert all({s for e, s in seeds if e == eps} == {0} for eps in finite if eps != 10)
    assert len(runs) == len(seeds) * len(suite.methods) == len({r.run_id for r in runs})
    assert [r.seed for r in runs] == sorted(r.seed for r in runs), "seed by seed, so whole seeds finish first"
    # the same ε spelled as in privacy.epsilons or not is one key
    assert suite_from_mapping({**raw, "epsilon_seeds": {"10.0": [0, 1]}}, "q.yaml").seeds_at(10.0) == [0, 1]


def test_distinct_epsilons_never_share_a_run_id():
    from dpbench.config.suite import parse_suite

    raw = json.loads(json.dumps(QUICKSTART))
    raw["privacy"]["epsilons"] = [1.0000001, 1.0000002, 10, "inf"]
    ids = [r.run_id for r in expand_runs(parse_suite(raw))]
    assert len(ids) == len(set(ids))
    assert "full-eps1.0000001-seed0" in ids and "full-eps10-seed0" in ids and "full-epsinf-seed0" in ids


def test_clipping_modes_validate_and_plan(capsys, tmp_path):
    raw = json.loads(json.dumps(QUICKSTART))
    raw["privacy"]["max_grad_norm"] = {"quantile": 0.5}
    raw["methods"][1]["max_grad_norm"] = "auto"
    path = tmp_path / "clip.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", "--json", str(path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    modes = {(r["method"], r["clipping"]) for r in rows if r["epsilon"] != "inf"}
    assert ("bias", "auto") in modes and ("full", "quantile") in modes
    quantile = next(r for r in rows if r["clipping"] == "quantile")
    assert quantile["gradient_noise_multiplier"] > quantile["noise_multiplier"], "σ recalibrated for the count query"


def test_builtin_suites_by_name_and_outside_the_repository(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["ls", "suites"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert {"quickstart", "mnist10k-cpu", "mnist", "cifar10"} <= listed
    assert main(["validate", "quickstart"]) == 0
    capsys.readouterr()
    assert main(["validate", "quickstrat"]) == 2
    assert "did you mean 'quickstart'" in capsys.readouterr().err


def test_version_and_device_syntax(capsys):
    import dpbench

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and dpbench.__version__ in capsys.readouterr().out
    from dpbench.errors import UserError
    from dpbench.runner.devices import resolve_device

    assert str(resolve_device("cpu")) == "cpu"
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="cuda:1: CUDA is not available"):
            resolve_device("cuda:1")
    with pytest.raises(UserError, match="not a device"):
        resolve_device("tpu:0")


def test_npz_classes_are_declared_not_read_from_private_labels(tmp_path):
    import numpy as np

    from dpbench.data.base import dataset_num_classes
    from dpbench.errors import UserError

    from dpbench.config.suite import DatasetRef

    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 255, (20, 8, 8), dtype=np.uint8), y_train=np.arange(20) % 3,
             x_test=rng.integers(0, 255, (6, 8, 8), dtype=np.uint8), y_test=np.arange(6) % 3)
    ref = DatasetRef(name="npz", image_size=8, channels=1, options={"path": str(path), "num_classes": 5})
    assert dataset_num_classes(ref, None) == 5, "the declaration, not max label + 1 = 3"
    with pytest.raises(UserError, match="num_classes must be declared"):
        dataset_num_classes(DatasetRef(name="npz", image_size=8, channels=1, options={"path": str(path)}), None)
