"""`dpbench selfcheck` passes for every method, and fails for every broken loop it exists to catch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dpbench.engine.selfcheck import REL_ERR_LIMIT, run_selfcheck
from dpbench.privacy.grad_samplers import conv_workaround, conv_workaround_enabled
from dpbench.registry import METHODS


def test_selfcheck_cli_passes_for_every_method(tmp_path):
    out = tmp_path / "selfcheck.json"
    proc = subprocess.run([sys.executable, "-m", "dpbench", "selfcheck", "--json", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["passed"] is True and report["kind"] == "dpbench-selfcheck"
    assert json.loads(out.read_text())["passed"] is True
    names = {m["method"] for m in report["methods"]}
    assert {"full", "lora", "loda", "bias", "attention"} <= names == set(METHODS.names())
    for m in report["methods"]:
        assert m["max_rel_error"] <= REL_ERR_LIMIT and m["trainable_changed"] and m["frozen_unchanged"]
        assert m["clip_ok"] and m["noise_ok"] and abs(m["noise_std_ratio"] - 1) < 0.02
        assert m["mixed_precision_max_ratio"] <= 1 + 1e-6, "clipping under bf16 autocast stays fp32"
        assert m["divisor_rel_error"] <= REL_ERR_LIMIT and m["noise_unpredictable"]


@pytest.mark.parametrize("fault, failing", [
    ("realised-divisor", "divisor_rel_error"),
    ("no-clip", "clip_ok"),
    ("low-noise", "noise_ok"),
    ("repeated-noise", "noise_ok"),
    ("halved-norms", "max_rel_error"),
])
def test_selfcheck_fails_every_injected_fault(fault, failing):
    """Each mutant of the DP loop fails the check written for it (and nothing else hides it)."""
    report = run_selfcheck(["bias"], fault=fault)
    assert report.passed is False
    check = report.methods[0]
    value = getattr(check, failing)
    assert (value is False) if isinstance(value, bool) else value > 1e-2, (fault, check)


def test_selfcheck_fails_without_the_channels_last_workaround(monkeypatch):
    assert conv_workaround_enabled()
    with conv_workaround(False):
        report = run_selfcheck(["full", "loda"], grad_sample_mode="hooks")
    assert conv_workaround_enabled(), "the workaround is restored"
    assert report.passed is False
    for m in report.methods:
        # the engine's first chunk already refuses (its summed per-example gradients are not autograd's),
        # naming a convolution right after an attention block
        assert not m.passed and "summed gradient differs from autograd's" in m.error
        assert "resnets" in m.error.split(":")[1] or "upsamplers" in m.error.split(":")[1]
    from dpbench.engine.backends import OpacusBackend

    with_check = OpacusBackend.per_example_gradients

    def unchecked(self, loss_fn):
        self._coverage_checked = True
        return with_check(self, loss_fn)

    monkeypatch.setattr(OpacusBackend, "per_example_gradients", unchecked)
    with conv_workaround(False):  # past that check, the per-example comparison sees the wrong gradients too
        report = run_selfcheck(["full"], grad_sample_mode="hooks")
    (m,) = report.methods
    assert not m.passed and m.max_rel_error > 1e-2
    assert any("resnets" in name or "upsamplers" in name for name in m.details)


@pytest.mark.parametrize("engine", ["hooks", "functorch"])
def test_every_engine_passes(engine):
    """The default engine is checked by the CLI test; Opacus' two modes remain selectable and correct."""
    report = run_selfcheck(["full", "loda"] if engine == "hooks" else ["full", "lora"], grad_sample_mode=engine)
    assert report.passed, report


def test_the_default_engine_is_bookkeeping():
    from dpbench.config.suite import TrainingSettings

    assert TrainingSettings().grad_sample_mode == "bookkeeping" == run_selfcheck(["bias"]).grad_sample_mode


def test_selfcheck_exit_code_on_failure():
    code = ("import sys\nfrom dpbench.privacy.grad_samplers import set_conv_workaround\n"
            "set_conv_workaround(False)  # after the import that installs it\n"
            "from dpbench.cli import main\nsys.exit(main(['selfcheck', '--method', 'full', '--grad-sample-mode', 'hooks']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1 and "FAIL" in proc.stdout


def test_unknown_fault_is_a_user_error(capsys):
    from dpbench.cli import main

    assert main(["selfcheck", "--inject", "no-noise"]) == 2
    assert "--inject 'no-noise'" in capsys.readouterr().err


PEFT_TUNERS = ["dora", "loha", "lokr", "oft", "ia3", "vera", "hra", "fourierft"]


@pytest.mark.parametrize("engine", ["hooks", "functorch"])
@pytest.mark.parametrize("method", PEFT_TUNERS)
def test_opacus_engines_refuse_peft_tuners_by_name(engine, method):
    """Opacus has per-sample rules for known layer types only: a tuner's raw parameters are refused at
    construction, naming the parameter and the engine that covers it (book-keeping passes them all)."""
    check = run_selfcheck([method], grad_sample_mode=engine).methods[0]
    assert not check.passed
    assert check.error.startswith("UserError: parameter ") and "grad_sample_mode: bookkeeping" in check.error
