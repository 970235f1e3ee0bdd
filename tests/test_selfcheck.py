"""`dpbench selfcheck` passes for every method, and catches the channels_last conv bug when unfixed."""

from __future__ import annotations

import json
import subprocess
import sys

from dpbench.engine.selfcheck import REL_ERR_LIMIT, run_selfcheck
from dpbench.privacy.grad_samplers import conv_workaround, conv_workaround_enabled
from dpbench.registry import METHODS, load_builtin_entries

load_builtin_entries()


def test_selfcheck_cli_passes_for_every_method():
    proc = subprocess.run([sys.executable, "-m", "dpbench", "selfcheck", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["passed"] is True
    names = {m["method"] for m in report["methods"]}
    assert {"full", "lora", "loda", "bias", "attention"} <= names == set(METHODS.names())
    for m in report["methods"]:
        assert m["max_rel_error"] <= REL_ERR_LIMIT and m["trainable_changed"] and m["frozen_unchanged"]
        assert m["clip_ok"] and m["noise_ok"] and abs(m["noise_std_ratio"] - 1) < 0.02


def test_selfcheck_fails_without_the_channels_last_workaround():
    assert conv_workaround_enabled()
    with conv_workaround(False):
        report = run_selfcheck(["full", "loda"])
    assert conv_workaround_enabled(), "the workaround is restored"
    assert report["passed"] is False
    for m in report["methods"]:
        assert not m["passed"] and m["max_rel_error"] > 1e-2
        # the wrong gradients are those of convolutions right after an attention block
        assert any("resnets" in name or "upsamplers" in name for name in m["details"])


def test_functorch_mode_agrees():
    report = run_selfcheck(["full", "lora"], grad_sample_mode="functorch")
    assert report["passed"], report


def test_selfcheck_exit_code_on_failure():
    code = ("import sys\nfrom dpbench.privacy.grad_samplers import set_conv_workaround\n"
            "set_conv_workaround(False)  # after the import that installs it\n"
            "from dpbench.cli import main\nsys.exit(main(['selfcheck', '--method', 'full']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1 and "FAIL" in proc.stdout
