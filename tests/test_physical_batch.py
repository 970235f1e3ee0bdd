"""Physical batch sizes: halving on out of memory (in the DP loop and before a run), ``auto``, per-method
overrides, and the largest-batch search — on CPU, with real modules that raise CUDA's out-of-memory
error above a batch size (what a GPU does; the GPU itself is tested in test_gpu.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from dpbench.config.suite import TrainingSettings
from dpbench.engine.trainer import DPTrainer, TrainerSetup, prepare_model
from dpbench.models.diffusion import build_unet, make_noise_scheduler
from dpbench.privacy.accounting import Budget, ClippingRule, DPStep
from dpbench.registry import METHODS
from dpbench.runner.batch_size import find_max_batch


@pytest.fixture(scope="module")
def digits8():
    from dpbench.config.suite import DatasetRef
    from dpbench.data.base import load_dataset

    x, y = load_dataset(DatasetRef(name="digits", image_size=8, channels=1), None, "train")
    return x[:96].clone(), y[:96].clone()


def fits_up_to(capacity: int, error=torch.cuda.OutOfMemoryError):
    """A real computation whose size grows with the batch, failing like CUDA above ``capacity``."""
    def run(batch: int) -> torch.Tensor:
        if batch > capacity:
            raise error(f"out of memory: {batch} > {capacity}")
        return torch.zeros(batch, 16).sum(0)
    return run


def out_of_memory_above(rows: int):
    """A forward hook that fails like CUDA does when a module sees more than ``rows`` rows."""
    def hook(module, inputs, output):
        if inputs[0].shape[0] > rows:
            hook.raised += 1
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {inputs[0].numel() * 8} bytes")
    hook.raised = 0
    return hook


def _trainer(data, physical: int, clipping: ClippingRule, floor: int = 1) -> DPTrainer:
    torch.manual_seed(0)
    x, y = data
    model = prepare_model(build_unet("tiny", 8, 1, 10), METHODS.get("lora")({"target": "all"}), 10, "cpu", torch.float64)
    step = DPStep(private=True, noise_multiplier=0.8, clipping=clipping, sample_rate=0.5, steps=3,
                  expected_batch_size=48, physical_batch_size=physical, noise_multiplicity=2, num_examples=len(x))
    return DPTrainer(model, make_noise_scheduler(), x, y,
                     TrainerSetup(step, TrainingSettings(ema_decay=None, min_physical_batch_size=floor), 0,
                                  budget=Budget(epsilon=4.0, delta=1e-5, accountant="rdp", noise_multiplier=0.8),
                                  reproducible=True), "cpu")


@pytest.mark.parametrize("where", ["up_blocks.0.attentions.0", "conv_out"])
def test_out_of_memory_halves_the_physical_batch_and_the_update_is_unchanged(digits8, where):
    """A chunk that runs out of memory part-way through the forward (captured activations left behind in
    the per-sample-gradient hooks) is redone at half the batch: the update, the noise drawn and the
    quantile rule's private count equal those of a run at the smaller batch from the start."""
    quantile = ClippingRule("quantile", max_grad_norm=0.05, target_quantile=0.5, count_noise_std=2.0)
    failing, reference = _trainer(digits8, 48, quantile), _trainer(digits8, 12, quantile)
    hook = out_of_memory_above(12 * 2)  # rows = examples × K
    failing.model.get_submodule(where).register_forward_hook(hook)
    for _ in range(2):
        failing.train_step(), reference.train_step()
    assert hook.raised == 2 and failing.physical_batch_size == 12, "48 → 24 → 12, once"
    for a, b in zip(failing.params, reference.params):
        assert torch.equal(a, b)
    assert failing.clipper.noisy_unclipped_fractions == reference.clipper.noisy_unclipped_fractions
    assert failing.clipper.max_grad_norm == reference.clipper.max_grad_norm
    assert torch.equal(failing.noise_gen.get_state(), reference.noise_gen.get_state()), "noise drawn once per step"
    assert failing.accountant.history == reference.accountant.history
    assert failing.state_dict()["physical_batch_size"] == 12, "a resumed run keeps the batch that fits"


def test_out_of_memory_at_the_floor_fails_and_other_errors_are_not_retried(digits8):
    fixed = ClippingRule("fixed", max_grad_norm=0.05)
    tr = _trainer(digits8, 48, fixed, floor=24)
    tr.model.conv_out.register_forward_hook(out_of_memory_above(12 * 2))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        tr.train_step()
    assert tr.physical_batch_size == 24

    tr = _trainer(digits8, 48, fixed)

    def broken(module, inputs, output):
        raise RuntimeError("a bug, not a lack of memory")

    tr.model.conv_out.register_forward_hook(broken)
    with pytest.raises(RuntimeError, match="a bug"):
        tr.train_step()
    assert tr.physical_batch_size == 48


def test_find_max_batch_with_a_function_that_runs_out_of_memory():
    """Doubling then bisection, beyond powers of two; cuDNN/cuBLAS allocation failures count as out of
    memory; any other error propagates; the limit is respected and tried."""
    needs = fits_up_to
    found = find_max_batch(needs(300), start=8)
    assert 300 - 300 // 64 <= found <= 300 and found not in (256, 512)
    cudnn = lambda message: RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED")  # noqa: E731
    assert 1000 - 1000 // 64 <= find_max_batch(needs(1000, cudnn), start=8) <= 1000
    assert find_max_batch(needs(300), start=8, limit=100) == 100
    assert find_max_batch(needs(300), start=1, limit=300) == 300
    assert find_max_batch(needs(4), start=8) is None
    with pytest.raises(ValueError):
        find_max_batch(needs(300, ValueError), start=8)


def test_auto_search_is_cached_per_key(tmp_path):
    from dpbench.runner.batch_size import cached_search

    searches = []

    def search() -> int:
        searches.append(1)
        return find_max_batch(fits_up_to(700), start=1, limit=4096)

    path = tmp_path / "physical_batch" / "k.json"
    key = {"device": "NVIDIA H200", "method": "full"}
    first = cached_search(path, key, search)
    assert 700 - 700 // 64 <= first <= 700 and len(searches) == 1
    assert cached_search(path, key, search) == first and len(searches) == 1, "read from the cache"
    assert cached_search(path, {**key, "device": "NVIDIA A100"}, search) == first and len(searches) == 2
    assert json.loads(path.read_text())["key"]["device"] == "NVIDIA A100"


def test_auto_and_per_method_physical_batch_sizes_plan(tmp_path):
    """auto is the documented default where nothing is probed (CPU); a method's own setting wins."""
    from dpbench.config.suite import load_suite, resolve_suite_path
    from dpbench.runner.plan import AUTO_PHYSICAL_BATCH_DEFAULT, plan_runs

    raw = yaml.safe_load(resolve_suite_path("quickstart").read_text())
    raw["privacy"]["physical_batch_size"] = "auto"
    raw["methods"][1]["physical_batch_size"] = 16
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    runs = {(r.spec.method_label, r.spec.epsilon): r for r in plan_runs(load_suite(path), num_examples=1437)}
    full, bias = runs[("full", 2.0)], runs[("bias", 2.0)]
    assert full.physical_batch == "auto" and full.plan.step.physical_batch_size == AUTO_PHYSICAL_BATCH_DEFAULT == 64
    assert bias.physical_batch == 16 and bias.plan.step.physical_batch_size == 16
    assert full.plan.budget == bias.plan.budget and runs[("full", math.inf)].physical_batch == "auto"
    assert full.as_row()["physical_batch_size"] == "auto"

    raw["methods"][1].pop("physical_batch_size")
    path.write_text(yaml.safe_dump(raw))
    unset = {(r.spec.method_label, r.spec.epsilon): r for r in plan_runs(load_suite(path), num_examples=1437)}
    assert unset[("full", 2.0)].config_hash == full.config_hash, "adding the setting did not touch other hashes"
    assert unset[("bias", 2.0)].config_hash != bias.config_hash


def test_a_run_that_runs_out_of_memory_records_the_batch_it_used(tmp_path):
    """Before training, the memory probe at the suite's physical batch runs out of memory in the backward
    pass; the run halves until it fits, trains, and records both the setting and the batch used."""
    from dpbench.cli import main
    from dpbench.methods.base import Method
    from dpbench.results import load_results

    try:
        from tests.test_runner import MICRO, _write_suite
    except ImportError:
        from test_runner import MICRO, _write_suite

    def out_of_memory_in_backward_above(rows: int):
        def hook(module, grad_input, grad_output):
            if grad_output[0].shape[0] > rows:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (backward)")
        return hook

    class BiasOnASmallGpu(Method):
        name = "bias_small_gpu"

        def prepare(self, model):
            model = METHODS.get("bias")().prepare(model)
            model.conv_out.register_full_backward_hook(out_of_memory_in_backward_above(16 * 2))  # K = 2
            return model

    METHODS.add("bias_small_gpu", BiasOnASmallGpu, "bias on a GPU that fits 16 examples (test plug-in)")
    try:
        suite = _write_suite(tmp_path, methods=[{"name": "bias_small_gpu"}])
        assert MICRO["privacy"]["physical_batch_size"] == 64
        assert main(["run", str(suite), "--only", "epsilon=5", "--no-progress", "--no-report",
                     "--results-dir", str(tmp_path / "out")]) == 0
        (result,) = load_results(tmp_path / "out" / "micro")
        assert result.status == "ok" and result.physical_batch_size == 16 and result.physical_batch_size_setting == 64
        assert "out of memory at physical batch 32: trying 16" in (tmp_path / "out" / "micro" / "runs" /
                                                                   result.run_id / "run.log").read_text()
    finally:
        METHODS._entries.pop("bias_small_gpu"), METHODS._loaded.pop("bias_small_gpu")
