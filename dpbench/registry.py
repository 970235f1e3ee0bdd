"""One generic, typed, lazy registry for methods, datasets, model presets, metrics and executors.

Entries are registered by *name* with a dotted import target (``"dpbench.methods.loda:LoDA"``), so
listing what exists (``dpbench ls``) never imports torch, diffusers or peft; the target is imported the
first time an entry is resolved. Unknown names fail with a did-you-mean suggestion.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Callable, Generic, Iterator, TypeVar

from dpbench.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "package.module:attribute"
    description: str


class Registry(Generic[T]):
    """A name -> lazily imported object mapping for one kind of thing (``kind`` names it in errors)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._loaded: dict[str, T] = {}

    def register(self, name: str, target: str, description: str) -> None:
        if name in self._entries and self._entries[name].target != target:
            raise ValueError(f"{self.kind} {name!r} is already registered to {self._entries[name].target}")
        self._entries[name] = Entry(name, target, description)

    def add(self, name: str, obj: T, description: str) -> None:
        """Register an already imported object (for user plug-ins and tests)."""
        self._entries[name] = Entry(name, f"<object {obj!r}>", description)
        self._loaded[name] = obj

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry]:
        return (self._entries[n] for n in self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def suggestion(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self.names(), n=1, cutoff=0.6)
        return f" — did you mean {close[0]!r}?" if close else f" (known: {', '.join(self.names())})"

    def check(self, name: str) -> None:
        if name not in self._entries:
            raise UserError(f"unknown {self.kind} {name!r}{self.suggestion(name)}")

    def get(self, name: str) -> T:
        self.check(name)
        if name not in self._loaded:
            module_name, _, attr = self._entries[name].target.partition(":")
            obj = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
            self._loaded[name] = obj  # type: ignore[assignment]
        return self._loaded[name]


# The registries. Their entries are declared in one place each (the package's __init__), so that
# `dpbench ls` can list them without importing the heavy modules behind them.
METHODS: Registry[Callable] = Registry("method")
DATASETS: Registry[Callable] = Registry("dataset")
PRESETS: Registry[Callable] = Registry("model preset")
METRICS: Registry[Callable] = Registry("metric")
EXECUTORS: Registry[Callable] = Registry("executor")
FID_BACKBONES: Registry[Callable] = Registry("FID backbone")
CLASSIFIERS: Registry[Callable] = Registry("classifier")


def load_builtin_entries() -> None:
    """Import the light modules that declare the built-in entries (idempotent, no heavy imports)."""
    for module in ("dpbench.methods", "dpbench.data", "dpbench.models", "dpbench.evaluation", "dpbench.runner"):
        importlib.import_module(module)
