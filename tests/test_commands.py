"""Each command loads its suite once (dpbench/commands/suites.py): nothing below the command layer parses
the suite file again. A counting spy wraps ``yaml.load`` (which ``yaml.safe_load`` and the suite reader
both go through) and calls through to it."""

from __future__ import annotations

import pytest
import yaml

from dpbench.cli import main

try:
    from tests.test_runner import _write_suite
except ImportError:  # tests/ is not a package: pytest put it on sys.path
    from test_runner import _write_suite


@pytest.fixture
def suite_loads(tmp_path, monkeypatch):
    """``(suite path, loads)``: ``loads()`` is how often the suite file's text has been parsed as YAML."""
    path = _write_suite(tmp_path)
    text = path.read_text()
    parsed = []
    real_load = yaml.load

    def counting_load(stream, *args, **kwargs):
        content = stream.decode() if isinstance(stream, bytes) else stream
        if content == text:
            parsed.append(1)
        return real_load(stream, *args, **kwargs)

    monkeypatch.setattr(yaml, "load", counting_load)
    return path, lambda: len(parsed)


def test_validate_loads_the_suite_once(suite_loads, capsys):
    path, loads = suite_loads
    assert main(["validate", str(path), "--json"]) == 0
    assert loads() == 1


@pytest.mark.parametrize("extra", [[], ["--set", "seeds=[0]"], ["--smoke", "--set", "seeds=[0]"]])
def test_dry_run_loads_the_suite_once(suite_loads, tmp_path, capsys, extra):
    path, loads = suite_loads
    assert main(["run", str(path), "--dry-run", "--json", "--only", "method=bias",
                 "--results-dir", str(tmp_path / "out"), *extra]) == 0
    assert loads() == 1


def test_the_spy_sees_every_load(suite_loads):
    """The count is not vacuous: loading the suite directly is seen each time."""
    from dpbench.config.suite import load_suite

    path, loads = suite_loads
    load_suite(path)
    load_suite(path, ["seeds=[0]"])
    assert loads() == 2


def test_a_run_with_overrides_loads_the_suite_once(suite_loads, tmp_path, capsys):
    """The results' suite.yaml (the effective suite) is written from the loaded mapping, not a second parse."""
    path, loads = suite_loads
    out = tmp_path / "out"
    assert main(["run", str(path), "--only", "method=bias", "--only", "epsilon=inf", "--set", "seeds=[0]",
                 "--no-report", "--no-progress", "--results-dir", str(out)]) == 0
    assert loads() == 1
    recorded = yaml.safe_load((out / "micro" / "suite.yaml").read_text())
    assert recorded["seeds"] == [0] and "--set seeds=[0]" in (out / "micro" / "suite.yaml").read_text()
