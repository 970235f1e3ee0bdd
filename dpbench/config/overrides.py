"""Command-line overrides of a suite: ``--set key.path=value`` (repeatable), applied to the suite's raw YAML
mapping before it is validated, so an override is checked exactly like the same edit in the file.

Paths are dotted keys; ``[name]`` selects the entry of a list of mappings whose ``label`` (or, without one,
``name``) is ``name`` — ``methods[loda].lr=0.01`` — and ``[3]`` selects by position. The value is read as
YAML (``[1,10]`` a list, ``0.01`` a number, ``true`` a boolean, ``inf`` the non-private ε), so it means what
it would mean in the file. Overrides apply in the order given; a later one wins. The effective suite (the
file with every override applied) is what runs, what enters each run's config hash, and what
``suite.yaml`` in the results records (with the overrides listed in its header).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Sequence

import yaml

from dpbench.errors import UserError

_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)((?:\[[^\]\[]+\])*)$")
_SELECTOR = re.compile(r"\[([^\]\[]+)\]")


def parse_override(text: str) -> tuple[list[str | tuple[str]], Any]:
    """``"methods[loda].lr=0.01"`` → ``(["methods", ("loda",), "lr"], 0.01)``: keys are strings, list
    selectors 1-tuples."""
    path, sep, value_text = text.partition("=")
    if not sep or not path.strip():
        raise UserError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. --set privacy.epsilons=[1,10] "
                        "or --set methods[loda].lr=0.01")
    steps: list[str | tuple[str]] = []
    for segment in path.strip().split("."):
        match = _SEGMENT.match(segment)
        if not match:
            raise UserError(f"--set {text!r}: {segment!r} is not a key (letters, digits, _ and -, then optional "
                            "[label] or [index] selectors), e.g. methods[loda].lr")
        steps.append(match.group(1))
        steps += [(selector.strip(),) for selector in _SELECTOR.findall(match.group(2))]
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"--set {text!r}: the value is not valid YAML ({problem}); quote it for the shell, "
                        "e.g. --set 'privacy.epsilons=[1, 10]'") from None
    return steps, value


def apply_overrides(raw: Any, overrides: Sequence[str]) -> Any:
    """A copy of the suite mapping ``raw`` with every override applied in order; the original is unchanged."""
    if not overrides:
        return raw
    if not isinstance(raw, dict):
        raise UserError("--set: the suite is not a YAML mapping, so there is nothing to override")
    raw = copy.deepcopy(raw)
    for text in overrides:
        steps, value = parse_override(text)
        parent, last = _walk(raw, steps, text)
        if isinstance(last, tuple):
            parent[_list_index(parent, last[0], text, steps)] = value
        else:
            parent[last] = value
    return raw


def _walk(node: Any, steps: list, text: str) -> tuple[Any, Any]:
    """The container of the last step (creating missing mappings on the way), and the last step."""
    for depth, step in enumerate(steps[:-1]):
        where = _where(steps[:depth + 1])
        if isinstance(step, tuple):
            node = node[_list_index(node, step[0], text, steps[:depth + 1])]
        elif isinstance(node, dict):
            if node.get(step) is None:
                node[step] = [] if isinstance(steps[depth + 1], tuple) else {}
            node = node[step]
        else:
            raise UserError(f"--set {text!r}: {_where(steps[:depth])} is a {type(node).__name__}, not a mapping, "
                            f"so it has no key {step!r}")
        if not isinstance(node, (dict, list)):
            raise UserError(f"--set {text!r}: {where} is a {type(node).__name__} ({node!r}), not a mapping or "
                            "list, so nothing can be set inside it")
    if not isinstance(steps[-1], tuple) and not isinstance(node, dict):
        raise UserError(f"--set {text!r}: {_where(steps[:-1])} is a list: select an entry first, e.g. "
                        f"{_where(steps[:-1])}[label].{steps[-1]}")
    return node, steps[-1]


def _list_index(node: Any, selector: str, text: str, steps: list) -> int:
    where = _where(steps[:-1])
    if not isinstance(node, list):
        raise UserError(f"--set {text!r}: {where} is not a list, so [{selector}] selects nothing")
    if re.fullmatch(r"-?\d+", selector):
        index = int(selector)
        if not -len(node) <= index < len(node):
            raise UserError(f"--set {text!r}: {where} has {len(node)} entries, no [{selector}]")
        return index
    keys = [_entry_key(entry) for entry in node]
    if selector in keys:
        return keys.index(selector)
    known = ", ".join(k for k in keys if k) or "none"
    raise UserError(f"--set {text!r}: no entry labelled {selector!r} in {where} (entries: {known}); select by "
                    "label, name or position")


def _entry_key(entry: Any) -> str | None:
    """How a list entry is selected: a method's label, else its name (a bare string entry is its own key)."""
    if isinstance(entry, dict):
        return entry.get("label") or entry.get("name")
    return entry if isinstance(entry, str) else None


def _where(steps: list) -> str:
    return "".join(f"[{s[0]}]" if isinstance(s, tuple) else f".{s}" for s in steps).lstrip(".") or "the suite"


def effective_suite_yaml(path: str | Path, overrides: Sequence[str], mapping: Any) -> bytes:
    """What ``suite.yaml`` in the results records: the file as it is without overrides, else the effective
    suite — ``mapping``, the suite as the command loaded and validated it (not the file read again) —
    with the file and the overrides in its header."""
    if not overrides:
        return Path(path).read_bytes()
    header = [f"# {Path(path).name} with command-line overrides (dpbench --set), applied in this order:"]
    header += [f"#   --set {o}" for o in overrides]
    return ("\n".join(header) + "\n" + yaml.safe_dump(mapping, sort_keys=False, allow_unicode=True)).encode()
