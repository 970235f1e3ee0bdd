"""Fine-tuning methods. One module per method; adding a method is adding one file here.

Each module ``dpbench/methods/<name>.py`` (not starting with ``_``) defines ``METHOD``, a subclass of
:class:`dpbench.methods.base.Method`; the first line of its docstring is the description that
``dpbench ls methods`` prints. Modules are discovered without importing them (so listing stays fast)
and imported when the method is first used. ``_template.py`` is a copyable starting point.
"""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

from dpbench.registry import METHODS


def discover(registry=METHODS) -> None:
    """Register every method module in the package's folders (``__path__``, which a plug-in may extend)."""
    for folder in map(Path, __path__):
        for info in pkgutil.iter_modules([str(folder)]):
            if info.name.startswith("_") or info.name == "base":
                continue
            doc = ast.get_docstring(ast.parse((folder / f"{info.name}.py").read_text())) or ""
            registry.register(info.name, f"dpbench.methods.{info.name}:METHOD", doc.strip().splitlines()[0] if doc else "")


discover()
