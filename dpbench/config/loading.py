"""Loading a suite: find the file (a path or a built-in name), read its YAML (safe_load semantics, duplicate
keys refused, size and encoding checked), apply ``--set`` overrides, and validate it into a :class:`Suite`
whose every problem is reported at once (:func:`load_suite`)."""

from __future__ import annotations

import difflib
import os
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import ValidationError

from dpbench.config.messages import explain_errors
from dpbench.config.overrides import apply_overrides
from dpbench.config.schema import Suite
from dpbench.errors import UserError


def parse_suite(raw: Any, path: str = "<suite>") -> Suite:
    if not isinstance(raw, dict):
        raise UserError(f"{path}: this is not a suite — a suite is a YAML mapping with keys name, data, model, privacy, "
                        "methods (see docs/suite.md and the built-in suites: dpbench ls suites)")
    try:
        return Suite.model_validate(raw)
    except ValidationError as err:
        raise UserError(explain_errors(path, err)) from None


BUILTIN_SUITES = "dpbench.suites"


def builtin_suites() -> dict[str, Path]:
    """The suites that ship with the package: name → file."""
    folder = resources.files(BUILTIN_SUITES)
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def resolve_suite_path(name_or_path: str | os.PathLike) -> Path:
    """A suite file path, or the name of a built-in suite (``dpbench run quickstart``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    builtin = builtin_suites()
    if str(name_or_path) in builtin:
        return builtin[str(name_or_path)]
    close = difflib.get_close_matches(path.stem, list(builtin), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"built-in suites: {', '.join(sorted(builtin))}"
    raise UserError(f"{name_or_path}: suite file not found — give the path to a suite YAML or a built-in name ({hint})")


MAX_SUITE_BYTES = 1 << 20  # a suite is a page of settings; anything larger is not one


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the schema reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one mapping", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_suite_yaml(path: Path) -> Any:
    """The suite file's YAML (safe_load semantics, duplicate keys refused); a UserError for anything that
    is not a readable UTF-8 YAML document."""
    try:
        size = path.stat().st_size
        data = path.read_bytes() if size <= MAX_SUITE_BYTES else b""
    except OSError as err:
        raise UserError(f"{path}: cannot read the suite file ({err.strerror}) — check the path and its permissions") from None
    if size > MAX_SUITE_BYTES:
        raise UserError(f"{path}: {size} bytes is not a suite (at most {MAX_SUITE_BYTES} bytes) — give the suite YAML file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}) — save the suite "
                        "as UTF-8 YAML") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        what, fix = ("duplicate key", "give each key once") if "given twice" in str(problem) else \
            ("YAML syntax error", "fix the YAML syntax")
        raise UserError(f"{path}:{where}: {what}: {problem} — {fix}") from None
    except RecursionError:
        raise UserError(f"{path}: the YAML is nested too deeply to be a suite — see docs/suite.md for its shape") from None


def with_absolute_data_roots(raw: Any, source_dir: Path) -> Any:
    """``raw`` (a suite's mapping) with each relative data root written in it made absolute against
    ``source_dir``, for a copy of the suite written elsewhere (the tuned suite) that must read the same data."""
    data = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(data, dict):
        return raw
    for holder in (data, data.get("private"), data.get("public")):
        root = holder.get("root") if isinstance(holder, dict) else None
        if isinstance(root, str) and root and not os.path.isabs(os.path.expanduser(root)):
            holder["root"] = os.path.normpath(source_dir / root)
    return raw


def load_suite(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Suite:
    """The suite of a file (or built-in name), with command-line ``--set`` overrides applied to its raw
    mapping before validation (:mod:`dpbench.config.overrides`)."""
    path = resolve_suite_path(path)
    return suite_from_mapping(apply_overrides(read_suite_yaml(path), overrides), path)


def suite_from_mapping(raw, path: Path) -> Suite:
    """The validated suite of a raw mapping read from ``path`` (relative data roots resolve beside it)."""
    try:
        suite = parse_suite(raw, str(path))
    except RecursionError:
        raise UserError(f"{path}: the YAML is nested too deeply to be a suite — see docs/suite.md for its shape") from None
    suite._source_dir = Path(path).resolve().parent
    return suite

