"""The report's file boundary. Result files name other files (sample grids); a result can be edited
or copied from elsewhere, so a name is only followed when it resolves (links included) to a file inside
the results directory the report was given. Everything the report writes stays inside its output folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from dpbench.results import write_bytes_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class Refused:
    """Why a named file is not shown: it points outside the results directory, is missing or no image."""

    name: str
    reason: str


def image_inside(folder: Path, base: Path, name: Optional[str]) -> Union[Path, Refused, None]:
    """``name`` relative to ``base`` if it resolves to an image file inside ``folder``; None if no name."""
    if not name:
        return None
    root = folder.resolve()
    try:
        resolved = (base / name).resolve()
    except (OSError, RuntimeError) as err:  # a link loop, say
        return Refused(name, f"cannot be resolved ({err})")
    if root not in resolved.parents:
        return Refused(name, "points outside the results directory: ignored, not copied")
    if resolved.suffix.lower() not in IMAGE_SUFFIXES:
        return Refused(name, "is not an image file: ignored")
    if not resolved.is_file():
        return Refused(name, "not found")
    return resolved


def safe_file_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "file"


@dataclass(frozen=True)
class OutputFolder:
    path: Path

    def write(self, name: str, data: bytes) -> str:
        """Write ``name`` (relative) atomically; returns ``name``, the link the document uses."""
        write_bytes_atomic(self.path / name, data, inside=self.path)
        return name

    def copy(self, source: Path, name: str) -> str:
        return self.write(name + source.suffix.lower(), source.read_bytes())

