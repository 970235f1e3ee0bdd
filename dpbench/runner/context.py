"""What the runs of one suite invocation share, and how a worker process rebuilds it.

:class:`RunnerSettings` is small and picklable: it holds the suite as the command loaded and checked it
(once, dpbench/commands/suites.py: the runner never loads it again, and reads the file only to copy it
into the results), the results root, the data root, the cache and the device. A Ray task rebuilds the whole :class:`RunContext` from
it, so nothing unpicklable ever crosses a process boundary. The context loads the private data once and
the pretrained model, the FID reference features and the memory probes lazily. Under torchrun it also
holds this process's place in the group (``distributed``; dpbench/engine/distributed.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from dpbench.config.suite import Suite
from dpbench.results import check_name

log = logging.getLogger("dpbench")


@dataclass(frozen=True)
class RunnerSettings:
    suite_path: str  # the file the suite came from: named in messages and recorded with the results
    suite: Suite  # loaded once by the command, overrides applied, registry names checked
    suite_mapping: Any  # the YAML mapping it was validated from (overrides applied): what results record
    results_root: str = "results"
    data_root: Optional[str] = None
    cache_dir: Optional[str] = None
    device: Optional[str] = None  # None: the suite's device
    progress: bool = False
    overrides: tuple[str, ...] = ()  # --set key.path=value, applied to the suite file in this order
    smoke: bool = False  # --smoke: overrides holds the smoke settings too; results are marked smoke


@dataclass
class RunContext:
    settings: RunnerSettings
    suite: Suite
    device: torch.device
    results_dir: Path
    train: tuple = None
    test: tuple = None
    num_classes: int = 0
    _pretrained: object = None
    _reference_features: object = None
    memory_probes: dict = field(default_factory=dict)  # (method label, physical batch, private, K) -> memory dict
    distributed: object = None  # a dpbench.engine.distributed.Distributed under torchrun

    @classmethod
    def build(cls, settings: RunnerSettings) -> "RunContext":
        from dpbench.data.base import dataset_num_classes, load_dataset
        from dpbench.runner.devices import resolve_device

        suite = settings.suite
        device = resolve_device(settings.device or suite.device)
        results_dir = Path(settings.results_root) / check_name(suite.name, "name")
        ctx = cls(settings, suite, device, results_dir)
        root = suite.data_root(suite.data.private, settings.data_root)
        ctx.train = load_dataset(suite.data.private, root, "train", download=suite.data.download)
        ctx.test = load_dataset(suite.data.private, root, "test", download=suite.data.download)
        ctx.num_classes = dataset_num_classes(suite.data.private, root)
        return ctx

    @property
    def progress(self) -> bool:
        return self.settings.progress

    @property
    def is_root(self) -> bool:
        """Whether this process writes files: always, except on ranks other than 0 of a torchrun group."""
        return self.distributed is None or self.distributed.is_root

    @property
    def pretrained(self):
        """The suite's pretrained model (from the cache, or trained now)."""
        if self._pretrained is None:
            import time

            from dpbench.models.pretrain import load_pretrained

            start = time.perf_counter()
            self._pretrained = load_pretrained(self.suite, data_root=self.settings.data_root,
                                               cache_dir=self.settings.cache_dir, device=str(self.device),
                                               progress=self.progress)
            log.info("pretrained model %s (%.1fs)", self._pretrained.source, time.perf_counter() - start)
        return self._pretrained

    def public_batch(self, n: int = 64) -> Optional[tuple]:
        """A fixed batch of public images (for diagnostics that must not touch private data), or None."""
        public = self.suite.data.public
        if public is None:
            return None
        from dpbench.data.base import load_dataset

        images, labels = load_dataset(public, self.suite.data_root(public, self.settings.data_root), "train",
                                      download=self.suite.data.download)
        gen = torch.Generator().manual_seed(0)
        pick = torch.randperm(len(images), generator=gen)[:n]
        return images[pick], labels[pick] % self.num_classes

    def reference_features(self):
        """FID reference features of the real split the suite compares against (computed once)."""
        if self._reference_features is None:
            from dpbench.evaluation.features import extract_features

            e = self.suite.evaluation
            images = (self.train if e.fid_reference_split == "train" else self.test)[0][: e.fid_max_reference]
            self._reference_features = extract_features(e.fid_backbone, images, device=str(self.device))
        return self._reference_features
