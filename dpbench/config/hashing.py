"""Config hashes: which settings determine a run (and a cache entry), so that a changed setting makes a
finished run stale while a setting that changes nothing — or a new one left at its default — does not."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from dpbench.config.grid import RunSpec
from dpbench.config.schema import Suite
from dpbench.results import format_epsilon


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-able object, independent of key order."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


# Settings that do not change what a run computes: excluded from its config hash.
_NOT_IN_HASH = {"training": {"checkpoint_seconds", "warmup_steps", "min_physical_batch_size"},
                "pretrain": {"checkpoint_seconds"}}
# Settings added after results were first written: hashed only when they differ from their default, so
# that adding a setting never makes finished results stale.
_HASHED_UNLESS_DEFAULT = {"pretrain": {"ema_decay": None, "mixed_precision": "auto"},
                          "method": {"physical_batch_size": None}}


def hashed_settings(section: str, values: dict) -> dict:
    """The part of one suite section (a ``model_dump``) that enters config hashes and cache keys."""
    defaults = _HASHED_UNLESS_DEFAULT.get(section, {})
    return {k: v for k, v in values.items()
            if k not in _NOT_IN_HASH.get(section, ()) and not (k in defaults and v == defaults[k])}


def run_config_hash(suite: Suite, spec: RunSpec, num_examples: int) -> str:
    """Hash of everything that determines one run: the sections of the suite it uses, its method entry,
    ε, seed, the private data's identity and size, and the dpbench version. Changing any of them makes
    a finished run stale (``dpbench run`` refuses to skip it silently)."""
    import dpbench

    dump = suite.model_dump(mode="json")
    privacy = {k: v for k, v in dump["privacy"].items() if k != "epsilons"}
    method = hashed_settings("method", suite.method(spec.method_label).model_dump(mode="json"))
    material = {
        "dpbench": dpbench.__version__,
        "data": {"private": suite.data.private.identity(), "public": suite.data.public.identity() if suite.data.public else None,
                 "image_size": suite.data.private.image_size, "channels": suite.data.private.channels,
                 "num_examples": num_examples},
        "model": dump["model"], "pretrain": hashed_settings("pretrain", dump["pretrain"]) if suite.model.preset else None,
        "privacy": privacy, "epsilon": format_epsilon(spec.epsilon), "seed": spec.seed,
        "method": method,
        "training": hashed_settings("training", dump["training"]),
        "sampling": dump["sampling"], "evaluation": dump["evaluation"],
    }
    return stable_hash(material)
