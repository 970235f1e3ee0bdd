"""The physical batch a run starts with: the suite's number, or ``auto``; and the fall-back on out of memory.

``physical_batch_size: auto`` (suite-wide or per method) is, on a GPU, the largest batch up to the
expected logical batch for which one step of the run's DP loop fits: a short probe on random images
(dpbench/engine/measure.py: no private data, no privacy cost) searched by doubling and bisection
(:func:`find_max_batch`, which `dpbench profile --find-max-batch` uses too). The answer is cached under
``<cache>/physical_batch/`` per GPU model and memory, method and options, model, image shape, K, DP or
not, and the training settings that change memory, so every later run of that combination reuses it. Where nothing is probed (CPU) ``auto`` is
:data:`dpbench.runner.plan.AUTO_PHYSICAL_BATCH_DEFAULT`.

Whatever the start, a batch that runs out of memory is halved (down to
``training.min_physical_batch_size``): in the memory probe before training here, and chunk by chunk
during training in the DP loop itself. Virtual batching does not change the update, so this costs
time, never privacy or correctness; the result records the batch actually used.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, TypeVar

import torch

from dpbench.config.suite import stable_hash
from dpbench.results import write_json_atomic
from dpbench.runner.context import RunContext
from dpbench.runner.plan import PlannedRun

log = logging.getLogger("dpbench")
T = TypeVar("T")


def halving_on_out_of_memory(measure: Callable[[int], T], batch: int, floor: int) -> tuple[T, int]:
    """``(measure(b), b)`` for the first b of batch, batch/2, ... (not below ``floor``) that fits."""
    from dpbench.engine.memory import is_out_of_memory

    while True:
        try:
            return measure(batch), batch
        except Exception as err:  # noqa: BLE001 - only running out of memory is retried
            if not is_out_of_memory(err) or batch <= floor:
                raise
        torch.cuda.empty_cache()  # outside the handler: the failed attempt's frames are released first
        log.warning("   out of memory at physical batch %d: trying %d", batch, max(floor, batch // 2))
        batch = max(floor, batch // 2)


def _fits(run, batch: int) -> bool:
    from dpbench.engine.memory import is_out_of_memory

    try:
        run(batch)
        return True
    except Exception as err:  # noqa: BLE001 - only allocation failures mean "does not fit"
        if not is_out_of_memory(err):
            raise
    torch.cuda.empty_cache()  # outside the handler: the failed attempt's frames are released first
    return False


def find_max_batch(run, start: int = 8, limit: int = 1 << 16) -> int | None:
    """The largest batch up to ``limit`` for which ``run(batch)`` fits: doubling to bracket it, then
    bisection (not only powers of two); None if ``start`` does not fit."""
    if not _fits(run, start):
        return None
    low, high = start, None
    while high is None:
        if low >= limit:
            return low
        candidate = min(low * 2, limit)
        if _fits(run, candidate):
            low = candidate
        else:
            high = candidate
    while high - low > max(1, low // 64):  # within ~1.5%
        mid = (low + high) // 2
        if _fits(run, mid):
            low = mid
        else:
            high = mid
    return low


def auto_batch_key(ctx: RunContext, planned: PlannedRun) -> dict:
    """Everything the memory of one DP step depends on (not the weights' values, not the data)."""
    import dpbench

    step, training, model = planned.plan.step, planned.training, ctx.suite.model
    props = torch.cuda.get_device_properties(ctx.device)
    return {
        "dpbench": dpbench.__version__, "torch": torch.__version__,
        "device": props.name, "device_memory": props.total_memory,
        "method": planned.spec.method, "options": planned.method.options,
        "model": model.preset or model.pretrained, "image_shape": list(ctx.train[0].shape[1:]),
        "num_classes": ctx.num_classes, "noise_multiplicity": step.noise_multiplicity, "private": step.private,
        "optimizer": training.optimizer, "ema": training.ema_decay is not None,
        "grad_sample_mode": training.grad_sample_mode, "bookkeeping_rule": training.bookkeeping_rule,
        "mixed_precision": training.mixed_precision,
        "limit": step.expected_batch_size,
    }


def cached_search(path: Path, key: dict, search: Callable[[], int]) -> int:
    """The cached answer for ``key`` at ``path``, or ``search()`` written there (atomically) first."""
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return int(cached["physical_batch_size"])
    found = search()
    write_json_atomic(path, {"key": key, "physical_batch_size": found})
    return found


def resolve_physical_batch(ctx: RunContext, planned: PlannedRun, recipe) -> int:
    """The physical batch this run starts with (see the module docstring); ``auto`` probes the run's own
    model recipe (dpbench/runner/setup.py)."""
    if planned.physical_batch != "auto" or ctx.device.type != "cuda":
        return planned.plan.step.physical_batch_size
    from dpbench.engine.measure import StepProbe
    from dpbench.models.pretrain import cache_root

    step = planned.plan.step

    def fits(batch: int) -> None:
        StepProbe(recipe, planned.training, batch=batch, private=step.private, image_shape=tuple(ctx.train[0].shape[1:]),
                  noise_multiplicity=step.noise_multiplicity, warmup=1, clipping=step.clipping).close()

    def search() -> int:
        found = find_max_batch(fits, start=1, limit=step.expected_batch_size)
        if found is None:
            raise torch.cuda.OutOfMemoryError(f"{planned.spec.method_label}: one example per physical batch does not "
                                              f"fit on {ctx.device}")
        log.info("   physical_batch_size auto: %d fits on %s (cached)", found, torch.cuda.get_device_name(ctx.device))
        return found

    key = auto_batch_key(ctx, planned)
    return cached_search(cache_root(ctx.settings.cache_dir) / "physical_batch" / f"{stable_hash(key)}.json", key, search)
