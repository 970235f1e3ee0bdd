"""Suite files: schema, loading, validation and expansion into runs."""

from dpbench.config.suite import RunSpec, Suite, expand_runs, load_suite

__all__ = ["RunSpec", "Suite", "expand_runs", "load_suite"]
