"""Methods from outside the package: the documented custom module runs through `dpbench run` by its import
target, and installed entry points (group ``dpbench.methods``) are discovered by name."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from dpbench.cli import main
from dpbench.errors import UserError
from dpbench.registry import METHODS, Registry
from dpbench.results import load_results

REPO = Path(__file__).resolve().parents[1]
TARGET = "zz_dpbench_plugin:ChannelScaleMethod"


def _documented_method(folder: Path) -> None:
    """The custom-module example of docs/methods.md, verbatim, as a module outside dpbench."""
    doc = (REPO / "docs" / "methods.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", doc, re.S)
    (folder / "zz_dpbench_plugin.py").write_text(code)


@pytest.fixture
def plugin_folder(tmp_path, monkeypatch):
    _documented_method(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    METHODS.names()  # declare the built-ins; what the test registers by import target goes with the copies
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))
    monkeypatch.setattr(METHODS, "_loaded", dict(METHODS._loaded))
    return tmp_path


def test_a_method_defined_outside_the_package_runs_through_dpbench_run(plugin_folder):
    from safetensors.torch import load_file

    suite = {
        "name": "plugin", "seeds": [0],
        "data": {"private": {"name": "digits", "image_size": 8, "channels": 1},
                 "public": {"name": "shapes", "image_size": 8, "channels": 1, "options": {"size": 200}},
                 "label": "sklearn-digits"},
        "model": {"preset": "tiny"},
        "pretrain": {"steps": 5, "batch_size": 32, "lr": 0.003},
        "privacy": {"epsilons": [5], "delta": 1e-4, "accountant": "rdp", "expected_batch_size": 32, "steps": 2,
                    "max_grad_norm": 1.0, "noise_multiplicity": 2, "physical_batch_size": 32},
        "methods": [{"name": TARGET, "lr": 0.05, "options": {"init": 1.0}}],
        "training": {"ema_decay": None, "checkpoint_seconds": 0},
        "sampling": {"steps": 2, "num_samples": 20, "batch_size": 20, "grid_per_class": 1},
        "evaluation": {"classifier_seeds": [0], "classifier_epochs": 1, "fid_max_reference": 50},
    }
    path = plugin_folder / "plugin.yaml"
    path.write_text(yaml.safe_dump(suite))
    out = plugin_folder / "out"
    assert main(["run", str(path), "--no-progress", "--no-report", "--results-dir", str(out)]) == 0
    (record,) = load_results(out / "plugin")
    assert record.status == "ok" and record.method == TARGET
    assert record.run_id == "zz_dpbench_plugin.ChannelScaleMethod-eps5-seed0"
    scales = {k: v for k, v in load_file(out / "plugin" / "runs" / record.run_id / "trainable.safetensors").items()
              if k.endswith(".scale")}
    assert len(scales) == 16, "every ResNet convolution got its scale"
    assert all(not torch.equal(v, torch.ones_like(v)) for v in scales.values()), "the scales trained"


def test_a_missing_plugin_module_is_a_one_line_user_error(tmp_path, capsys):
    assert "zz_no_such_module:Method" not in METHODS
    with pytest.raises(UserError, match=r"methods\[0\]\.name: cannot import method 'zz_no_such_module:Method'"):
        METHODS.check("zz_no_such_module:Method", "methods[0].name")


def test_entry_points_register_methods_by_name(plugin_folder):
    """An installed distribution's entry point in the group dpbench.methods is a method name."""
    from dpbench.methods import discover

    dist = plugin_folder / "zz_dpbench_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: zz-dpbench-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[dpbench.methods]\nchannel-scale = {TARGET}\n")
    fresh = Registry("method")
    discover(fresh)
    assert "channel-scale" in fresh.names() and set(METHODS.names()) < set(fresh.names())
    method = fresh.get("channel-scale")({"init": 0.5})
    assert method.options.init == 0.5 and "zz-dpbench-plugin" in json.dumps(fresh._entries["channel-scale"].description)
