"""The one error a bad plant file raises (no imports: commands can catch it cheaply)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["PlantError"]


class PlantError(ValueError):
    """A plant file is not valid: one line naming the file, the line, the field and the problem."""

    def __init__(self, path: str | Path, line: int | None, field: str, message: str):
        self.path, self.line, self.field, self.message = str(path), line, field, message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.field + ': ' if self.field else ''}{self.message}"
