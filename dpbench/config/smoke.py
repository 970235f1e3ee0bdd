"""``--smoke``: every run of a suite (each method × ε × seed) end to end at the smallest settings that still
exercise every phase — pretraining, 2 DP steps, sampling, the classifier and FID — to check a suite before
spending hours on it. Its numbers measure nothing.

Smoke mode is a list of ``--set`` overrides (:mod:`dpbench.config.overrides`) applied after the user's, so it
reaches every part of dpbench the way any override does: the config hash, the results' ``suite.yaml`` (which
lists them), remote workers. The suite is renamed ``<name>-smoke``, so its results go to their own folder
(``results/<name>-smoke/``) and never mix with real ones; every result is also marked ``smoke: true`` and the
report refuses a folder that mixes smoke and real runs.
"""

from __future__ import annotations

from typing import Any

SUFFIX = "-smoke"
STEPS = 2
PRETRAIN_STEPS = 4  # pretraining's one-cycle schedule needs two steps in each of its phases
MAX_BATCH = 64


def smoke_overrides(raw: Any, default_name: str) -> list[str]:
    """The overrides that make the suite mapping ``raw`` (the user's overrides already applied) a smoke
    test; ``default_name`` is the file's stem, the suite's name when it has none."""
    name = str(raw.get("name", default_name)) if isinstance(raw, dict) else default_name
    privacy = raw.get("privacy") if isinstance(raw, dict) and isinstance(raw.get("privacy"), dict) else {}
    overrides = [f"name={name}{SUFFIX}" if not name.endswith(SUFFIX) else f"name={name}",
                 f"privacy.steps={STEPS}", "privacy.epochs=null",
                 f"pretrain.steps={PRETRAIN_STEPS}", f"pretrain.batch_size={MAX_BATCH}",
                 f"sampling.steps={STEPS}", "sampling.num_samples=40", "sampling.batch_size=40",
                 "sampling.grid_per_class=2",
                 "evaluation.classifier_seeds=[0]", "evaluation.classifier_epochs=1",
                 "evaluation.fid_max_reference=200", "training.warmup_steps=1"]
    batch = privacy.get("expected_batch_size")
    if isinstance(batch, int) and batch > MAX_BATCH:
        overrides.append(f"privacy.expected_batch_size={MAX_BATCH}")
    physical = privacy.get("physical_batch_size")
    if physical == "auto" or (isinstance(physical, int) and physical > MAX_BATCH):
        overrides.append(f"privacy.physical_batch_size={MAX_BATCH}")
    for index, method in enumerate(raw.get("methods") or [] if isinstance(raw, dict) else []):
        size = method.get("physical_batch_size") if isinstance(method, dict) else None
        if size == "auto" or (isinstance(size, int) and size > MAX_BATCH):
            overrides.append(f"methods[{index}].physical_batch_size={MAX_BATCH}")
    return overrides
