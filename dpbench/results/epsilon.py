"""The ε codec: ε travels as a float everywhere in Python (``math.inf`` = the non-private reference) and as
the string ``"inf"`` in JSON. :data:`Epsilon` is the one pydantic type that reads and writes it; the three
functions parse ε from any source, format it exactly (distinct ε never collide) and display it to people."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema


def parse_epsilon(value: Any) -> float:
    """ε from a suite, a result file or the command line: a positive number, or inf / "inf" / "∞"."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in {"inf", ".inf", "infinity", "∞"}:
            return math.inf
        value = text
    try:
        eps = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"ε must be a number or inf (got {value!r})") from None
    if math.isnan(eps):
        raise ValueError("ε must be a number or inf (got nan)")
    return eps


def format_epsilon(eps: float) -> str:
    """The shortest text that reads back as the same float ("10", "0.5", "inf"): distinct ε never collide."""
    eps = float(eps)
    if math.isinf(eps):
        return "inf"
    text = repr(eps)
    return text[:-2] if text.endswith(".0") else text


def display_epsilon(eps: float) -> str:
    """ε for people: "∞" for the non-private reference, else the shortest exact text."""
    return "∞" if math.isinf(eps) else format_epsilon(eps)


Epsilon = Annotated[
    float,
    BeforeValidator(parse_epsilon),
    PlainSerializer(lambda e: "inf" if math.isinf(e) else e, return_type=Any),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"const": "inf"}]}),
]

