"""The grid of a suite: one :class:`RunSpec` per run (a method at one ε and seed), in the order runs execute
(:func:`expand_runs`)."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict

from dpbench.config.schema import Suite
from dpbench.results import format_epsilon


class RunSpec(BaseModel):
    """One run of the grid: a method at one ε and seed. Everything else comes from the suite."""

    model_config = ConfigDict(frozen=True)
    run_id: str
    suite: str
    method: str
    method_label: str
    method_index: int
    dataset: str
    public_dataset: Optional[str]
    epsilon: float
    seed: int


def expand_runs(suite: Suite) -> list[RunSpec]:
    """Seed by seed (a suite stopped early has whole seeds done), each ε that runs the seed, each method."""
    runs = []
    for seed in suite.all_seeds():
        for eps in suite.privacy.epsilons:
            if seed not in suite.seeds_at(float(eps)):
                continue
            for index, method in enumerate(suite.methods):
                runs.append(
                    RunSpec(
                        run_id=f"{method.method_label}-eps{format_epsilon(float(eps))}-seed{seed}",
                        suite=suite.name,
                        method=method.name,
                        method_label=method.method_label,
                        method_index=index,
                        dataset=suite.data.private.name,
                        public_dataset=suite.data.public.name if suite.data.public else None,
                        epsilon=float(eps),
                        seed=seed,
                    )
                )
    return runs
