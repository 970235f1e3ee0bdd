"""One generic, typed, lazy registry for methods, datasets, model presets, executors, FID backbones, classifiers.

Entries are registered by *name* with a dotted import target (``"dpbench.methods.loda:LoDA"``), so
listing what exists (``dpbench ls``) never imports torch, diffusers or peft; the target is imported the
first time an entry is resolved. Unknown names fail with a did-you-mean suggestion. A name that is
itself an import target (``my_package.module:MyMethod``) resolves to that object: plug-ins outside
dpbench need no registration.
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
    """A name -> lazily imported object mapping for one kind of thing (``kind`` names it in errors).

    ``declared_in`` is the light package whose import registers the built-in entries; it is imported
    on the first lookup, so no caller has to remember to load it."""

    def __init__(self, kind: str, declared_in: str | None = None):
        self.kind = kind
        self.declared_in = declared_in
        self._entries: dict[str, Entry] = {}
        self._loaded: dict[str, T] = {}
        self._declared = declared_in is None

    def _declare(self) -> None:
        if not self._declared:
            self._declared = True  # set first: the declaring module registers into this registry
            importlib.import_module(self.declared_in)

    def register(self, name: str, target: str, description: str) -> None:
        if name in self._entries and self._entries[name].target != target:
            raise ValueError(f"{self.kind} {name!r} is already registered to {self._entries[name].target}")
        self._entries[name] = Entry(name, target, description)

    def add(self, name: str, obj: T, description: str) -> None:
        """Register an already imported object (for user plug-ins and tests)."""
        self._entries[name] = Entry(name, f"{_ADDED}{obj!r}>", description)
        self._loaded[name] = obj

    def added(self) -> dict[str, tuple[T, str]]:
        """The entries registered with :meth:`add`: name -> (object, description)."""
        return {name: (self._loaded[name], e.description) for name, e in self._entries.items()
                if e.target.startswith(_ADDED)}

    def names(self) -> list[str]:
        self._declare()
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry]:
        return (self._entries[n] for n in self.names())

    def __contains__(self, name: object) -> bool:
        self._declare()
        if isinstance(name, str) and ":" in name and name not in self._entries:
            try:
                self._import_target(name)
            except UserError:
                return False
        return name in self._entries

    def _import_target(self, name: str) -> None:
        """Register a ``package.module:Attribute`` name used directly (a plug-in outside dpbench)."""
        module_name, _, attr = name.partition(":")
        try:
            obj = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as err:
            raise UserError(f"cannot import {self.kind} {name!r} ({err}) — put its module on PYTHONPATH or "
                            "install it") from None
        doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
        self._entries[name] = Entry(name, name, doc[0] if doc else "")
        self._loaded[name] = obj

    def suggestion(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self.names(), n=1, cutoff=0.6)
        # Both answers start with " — ": every one-line error names the fix (tests/test_suite_fuzz.py).
        return f" — did you mean {close[0]!r}?" if close else f" — use one of: {', '.join(self.names())}"

    def check(self, name: str, field: str | None = None) -> None:
        """A UserError naming ``field`` (the suite field or option that gave the name) if unknown."""
        where = f"{field}: " if field else ""
        if ":" in str(name) and name not in self._entries:
            try:
                self._import_target(str(name))
            except UserError as err:
                raise UserError(f"{where}{err}") from None
        if name not in self:
            raise UserError(f"{where}unknown {self.kind} {name!r}{self.suggestion(name)}")

    def get(self, name: str, field: str | None = None) -> T:
        self.check(name, field)
        if name not in self._loaded:
            module_name, _, attr = self._entries[name].target.partition(":")
            obj = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
            self._loaded[name] = obj  # type: ignore[assignment]
        return self._loaded[name]


_ADDED = "<object "


# The registries. Their entries are declared in one place each (the package's __init__), so that
# `dpbench ls` can list them without importing the heavy modules behind them.
METHODS: Registry[Callable] = Registry("method", "dpbench.methods")
DATASETS: Registry[Callable] = Registry("dataset", "dpbench.data")
PRESETS: Registry[Callable] = Registry("model preset", "dpbench.models")
EXECUTORS: Registry[Callable] = Registry("executor", "dpbench.runner")
FID_BACKBONES: Registry[Callable] = Registry("FID backbone", "dpbench.evaluation")
CLASSIFIERS: Registry[Callable] = Registry("classifier", "dpbench.evaluation")
REGISTRIES = (METHODS, DATASETS, PRESETS, EXECUTORS, FID_BACKBONES, CLASSIFIERS)


def added_objects() -> dict[str, dict]:
    """Every plug-in registered with ``add`` in this process, per registry kind: what a worker process
    (dpbench/runner/ray_executor.py) re-adds to see the same names."""
    return {r.kind: r.added() for r in REGISTRIES if r.added()}


def add_objects(objects: dict[str, dict]) -> None:
    """Register what :func:`added_objects` returned in another process."""
    by_kind = {r.kind: r for r in REGISTRIES}
    for kind, entries in objects.items():
        for name, (obj, description) in entries.items():
            by_kind[kind].add(name, obj, description)
