"""Values users type on the command line that the suite file does not carry (lists of numbers or names,
``--only`` selections)."""

from __future__ import annotations

from typing import Callable, Optional, TypeVar

from dpbench.errors import UserError

T = TypeVar("T")


def comma_separated(text: str, cast: Callable[[str], T], option: str, *, valid: Optional[Callable[[T], bool]] = None,
                    expected: str = "a comma-separated list, e.g. 8,32,128") -> list[T]:
    """``"0.5,1,2"`` → ``[0.5, 1.0, 2.0]``. An empty entry (``"1,,2"``), a value ``cast`` refuses or one
    ``valid`` rejects is a one-line :class:`UserError` naming ``option`` and saying what to give (``expected``)."""

    def one(entry: str) -> T:
        if not entry.strip():
            raise ValueError("empty entry")
        return cast(entry.strip())

    try:
        values = [one(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if not values or (valid is not None and not all(valid(v) for v in values)):
        raise UserError(f"{option} {text!r}: give {expected}")
    return values


def only_selection(only: list[str], allowed: tuple[str, ...], command: str) -> dict[str, list[str]]:
    """``--only key=value`` (repeatable) for commands that select methods (and ε, seeds) without a grid of
    runs: ``{key: [values]}``. A key this command cannot select by is a one-line error saying which it can."""
    selected: dict[str, list[str]] = {}
    for item in only:
        key, sep, value = item.partition("=")
        if not sep or key not in allowed or not value.strip():
            raise UserError(f"--only {item!r}: {command} selects by {', '.join(f'{k}=' for k in allowed)} "
                            f"(e.g. --only {allowed[0]}=loda)")
        selected.setdefault(key, []).append(value.strip())
    return selected


def numbers(text: str | None, option: str, cast) -> list | None:
    """A comma-separated list of numbers from the command line (None when not given): learning rates and
    factors must be positive, seeds non-negative."""
    if not text:
        return None
    return comma_separated(text, cast, option, valid=lambda v: v > 0 if cast is float else v >= 0,
                           expected="comma-separated positive numbers, e.g. 0.5,1,2" if cast is float
                           else "comma-separated whole numbers, e.g. 0,1")
