"""What a suite needs from this machine, checked before any work starts.

`dpbench run` turns each missing piece into a one-line error (exit 2) before pretraining anything, not
hours later; `dpbench validate` judges the file alone (a GPU suite validates on a laptop) and prints
the same findings as warnings.
"""

from __future__ import annotations

import importlib.util

from dpbench.config.suite import Suite


def missing_requirements(suite: Suite, device: str | None = None) -> list[str]:
    problems = []
    requested = device or suite.device
    if requested.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            problems.append(f"device: {requested} needs CUDA, which this machine lacks — run on a GPU machine or "
                            "pass --device cpu")
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
    if suite.executor == "ray" and importlib.util.find_spec("ray") is None:
        problems.append("executor: ray needs Ray — pip install 'dpbench[ray]' (or use executor: local)")
    return problems
