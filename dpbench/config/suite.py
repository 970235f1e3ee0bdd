"""The suite: its schema (documented in docs/suite.md), its loading and its expansion into a grid of runs.

``from dpbench.config.suite import X`` is the one entry point for a suite's names; each lives in the
module of its role:

* :mod:`~dpbench.config.schema` — the pydantic types of a suite file (:class:`TrainingSettings` is also
  the engine's settings type);
* :mod:`~dpbench.config.loading` — find, read and validate a suite file (:func:`load_suite`);
* :mod:`~dpbench.config.messages` — validation errors in the suite's words, with did-you-mean;
* :mod:`~dpbench.config.grid` — one :class:`RunSpec` per run (seed, ε, method) (:func:`expand_runs`);
* :mod:`~dpbench.config.hashing` — the config hashes that decide when a finished run is stale.

A suite is strict: unknown keys, wrong types and impossible values are errors that name the file, the
field path and the fix; every problem of a file is reported at once.
"""

from dpbench.config.grid import RunSpec, expand_runs
from dpbench.config.hashing import hashed_settings, run_config_hash, stable_hash
from dpbench.config.loading import (BUILTIN_SUITES, MAX_SUITE_BYTES, builtin_suites, load_suite, parse_suite,
                                    read_suite_yaml, resolve_suite_path, suite_from_mapping,
                                    with_absolute_data_roots)
from dpbench.config.schema import (ClippingSpec, DataSettings, DatasetRef, EvaluationSettings, ExecutorSettings,
                                   MethodSpec, ModelSettings, PhysicalBatchSize, PretrainSettings, PrivacySettings,
                                   QuantileClipping, SamplingSettings, Strict, Suite, TrainingSettings)

__all__ = [
    "RunSpec", "expand_runs",
    "hashed_settings", "run_config_hash", "stable_hash",
    "BUILTIN_SUITES", "MAX_SUITE_BYTES", "builtin_suites", "load_suite", "parse_suite", "read_suite_yaml",
    "resolve_suite_path", "suite_from_mapping", "with_absolute_data_roots",
    "ClippingSpec", "DataSettings", "DatasetRef", "EvaluationSettings", "ExecutorSettings", "MethodSpec",
    "ModelSettings", "PhysicalBatchSize", "PretrainSettings", "PrivacySettings", "QuantileClipping",
    "SamplingSettings", "Strict", "Suite", "TrainingSettings",
]
