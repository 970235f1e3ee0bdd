"""Fine-tuning methods. One module per method; adding a method is adding one file here.

Each module ``dpbench/methods/<name>.py`` (not starting with ``_``) defines ``METHOD``, a subclass of
:class:`dpbench.methods.base.Method`; the first line of its docstring is the description that
``dpbench ls methods`` prints. Modules are discovered without importing them (so listing stays fast)
and imported when the method is first used. ``_template.py`` is a copyable starting point.

Methods outside the package: an installed distribution's entry point in the group ``dpbench.methods``
(``name = "package.module:MyMethod"``), or the import target itself as a suite's method name
(``methods: [{name: "my_methods:MyMethod"}]``, its module on ``PYTHONPATH``).
"""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

from dpbench.registry import METHODS


ENTRY_POINT_GROUP = "dpbench.methods"


def discover(registry=METHODS) -> None:
    """Register every method module in the package's folders (``__path__``, which a plug-in may extend),
    and every installed distribution's ``dpbench.methods`` entry point (name = module:Class)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        registry.register(ep.name, ep.value, f"(plug-in {ep.value}{' from ' + ep.dist.name if ep.dist else ''})")
    for folder in map(Path, __path__):
        for info in pkgutil.iter_modules([str(folder)]):
            if info.name.startswith("_") or info.name == "base":
                continue
            doc = ast.get_docstring(ast.parse((folder / f"{info.name}.py").read_text())) or ""
            registry.register(info.name, f"dpbench.methods.{info.name}:METHOD", doc.strip().splitlines()[0] if doc else "")


discover()
