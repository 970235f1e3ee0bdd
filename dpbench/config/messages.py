"""A suite's validation errors in the suite's words: one line per problem naming the file, the field path,
what is wrong and the fix, with a did-you-mean for a misspelled key (:func:`explain_errors`)."""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from dpbench.config.schema import Suite
from dpbench.results import NAME_PATTERN


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not part.startswith("function-") and part not in _UNION_TAGS:
            out += ("." if out else "") + part
    return out


_UNION_TAGS = {"float", "literal['inf']", "clip-number", "clip-auto", "clip-quantile"}

_FIXES = {
    "extra_forbidden": "remove it or fix its spelling (see docs/suite.md)",
    "missing": "add this required field (see docs/suite.md)",
}

_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", "≥"), "less_than": ("lt", "<"),
           "less_than_equal": ("le", "≤")}
_KIND_NAMES = {"int": "a whole number", "float": "a number", "bool": "true or false", "string": "a string",
               "list": "a list, e.g. [1, 2]", "dict": "a mapping of keys", "model": "a mapping of keys",
               "model_attributes": "a mapping of keys"}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _explain(e: dict) -> tuple[str, str]:
    """(what is wrong, the fix) for one pydantic error, in the suite's words rather than the validator's."""
    kind, ctx, value = e["type"], e.get("ctx") or {}, e.get("input")
    msg = e["msg"].removeprefix("Value error, ")
    if kind in _BOUNDS:
        key, sign = _BOUNDS[kind]
        bound = ctx.get(key)
        bound = f"{bound:g}" if isinstance(bound, (int, float)) else bound
        return f"must be {sign} {bound} (got {_shown(value)})", f"give a value {sign} {bound}"
    if kind == "string_pattern_mismatch":
        if ctx.get("pattern") == NAME_PATTERN:
            return (f"{_shown(value)} is not a usable name",
                    "start with a letter or digit and use only letters, digits, '.', '_' and '-'")
        return f"{_shown(value)} does not have the expected form", "see docs/suite.md for the allowed values"
    if kind == "finite_number":
        return f"must be a finite number (got {_shown(value)})", "give a finite number"
    if kind == "literal_error":
        return f"{_shown(value)} is not allowed", f"use {ctx.get('expected', 'one of the documented values')}"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length', 1)} item(s)", "add an entry (see docs/suite.md)"
    if kind == "int_from_float":
        return f"must be a whole number (got {_shown(value)})", "write it without a fraction"
    for name, description in _KIND_NAMES.items():
        if kind in (f"{name}_type", f"{name}_parsing"):
            return f"must be {description} (got {_shown(value)})", f"write {description} (see docs/suite.md)"
    return msg, _FIXES.get(kind, "see docs/suite.md for the allowed values")


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` (for did-you-mean on unknown keys)."""
    model: Any = Suite
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        model = _unwrap(model.model_fields[part].annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(annotation):
    for arg in typing.get_args(annotation) or ():
        inner = _unwrap(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return annotation


def _unknown_key_suggestions(errors: list[dict]) -> dict[tuple, str]:
    """For each unknown key, the known key it probably meant. A misspelled key shows up twice — as
    unknown, and as "Field required" for the key it replaced — so a missing sibling is the best guess."""
    missing = {(tuple(e["loc"][:-1]), e["loc"][-1]) for e in errors if e["type"] == "missing"}
    out = {}
    for e in errors:
        if e["type"] != "extra_forbidden":
            continue
        parent, key = tuple(e["loc"][:-1]), str(e["loc"][-1])
        siblings = [name for p, name in missing if p == parent]
        for candidates in (siblings, list(getattr(_model_at(parent), "model_fields", None) or [])):
            close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
            if close:
                out[tuple(e["loc"])] = close[0]
                break
    return out


def explain_errors(path: str, err: ValidationError) -> list[str]:
    """One line per problem: file, field path, what is wrong, the fix."""
    errors = err.errors()
    suggestions = _unknown_key_suggestions(errors)
    explained = {loc[:-1] + (meant,) for loc, meant in suggestions.items()}
    out = []
    for e in errors:
        loc, kind = tuple(e["loc"]), e["type"]
        if kind == "missing" and loc in explained:
            continue  # reported as the unknown key that replaced it
        msg, fix = _explain(e) if kind != "value_error" else (e["msg"].removeprefix("Value error, "), "")
        if kind == "extra_forbidden":
            msg = f"unknown key {str(loc[-1])!r}"
            if loc in suggestions:
                fix = f"did you mean {suggestions[loc]!r}?"
        where = _format_loc(loc)
        line = f"{path}: {where}: {msg}" if where else f"{path}: {msg}"
        out.append(line + (f" — {fix}" if fix else ""))
    return list(dict.fromkeys(out))
