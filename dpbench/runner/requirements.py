"""What a suite needs from this machine (and its executor), checked before any work starts.

`dpbench run` turns each missing piece into a one-line error (exit 2) before pretraining anything, not
hours later; `dpbench validate` judges the file alone (a GPU suite validates on a laptop) and prints
the same findings as warnings.
"""

from __future__ import annotations

import importlib.util

from dpbench.config.suite import Suite


def missing_requirements(suite: Suite, device: str | None = None) -> list[str]:
    import torch

    problems = []
    requested = device or suite.device
    if suite.executor.name == "ray":  # the runs' device is a worker's: gpus_per_run decides it
        problems += _ray_problems(suite, requested)
    elif requested.startswith("cuda") and not torch.cuda.is_available():
        problems.append(f"device: {requested} needs CUDA, which this machine lacks — run on a GPU machine or "
                        "pass --device cpu")
    problems += _torchrun_problems(suite, requested)
    if suite.evaluation.fid_backbone == "inception":
        if importlib.util.find_spec("torch_fidelity") is None:
            problems.append("evaluation.fid_backbone: inception needs torch-fidelity — pip install 'dpbench[fid]' "
                            "(or use random_cnn)")
        else:
            from dpbench.errors import UserError
            from dpbench.evaluation.features import inception_weights_path

            try:
                inception_weights_path(allow_download=False)
            except UserError as err:
                problems.append(f"evaluation.fid_backbone: inception weights missing: {err}")
    return problems


def _ray_problems(suite: Suite, requested: str) -> list[str]:
    import torch

    ex, problems = suite.executor, []
    if importlib.util.find_spec("ray") is None:
        problems.append("executor: ray needs Ray — pip install 'dpbench[ray]' (or use executor: local)")
    if ex.gpus_per_run == 0 and requested.startswith("cuda"):
        problems.append(f"executor.gpus_per_run: 0 runs on CPU, but device is {requested} — set device: cpu, or "
                        "gpus_per_run: 1")
    if ex.gpus_per_run > 0 and requested == "cpu":
        problems.append(f"executor.gpus_per_run: {ex.gpus_per_run:g} runs on GPUs, but device is cpu — set "
                        "gpus_per_run: 0, or device: cuda")
    if ex.gpus_per_run > 0 and ex.address is None and torch.cuda.device_count() == 0:
        problems.append(f"executor.gpus_per_run: {ex.gpus_per_run:g} GPU per run, but this machine has no CUDA GPU "
                        "and no executor.address is given — set executor.address of a Ray cluster with GPUs, or "
                        "gpus_per_run: 0 to run on CPU")
    return problems


def _torchrun_problems(suite: Suite, requested: str) -> list[str]:
    """``torchrun --nproc-per-node N`` (one run on N processes) on this machine."""
    import os

    import torch

    from dpbench.engine.distributed import launched_with_several_processes

    if not launched_with_several_processes():
        return []
    problems = []
    if suite.executor.name != "local":
        problems.append(f"executor: {suite.executor.name} cannot run under torchrun, which trains each run on "
                        "several processes itself — use executor: local with torchrun")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = requested.startswith("cuda") or (requested == "auto" and torch.cuda.is_available())
    if on_gpu and local_rank >= torch.cuda.device_count():
        problems.append(f"torchrun: process {local_rank} of this machine has no GPU of its own (the machine has "
                        f"{torch.cuda.device_count()}) — use --nproc-per-node {max(1, torch.cuda.device_count())}")
    return problems
