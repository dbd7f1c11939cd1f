"""Source locations and user-facing errors.

Every error a user can cause is a `LoomError`; the CLI renders it as
``path:line:col: error: message`` followed by the source line and a caret,
the format compilers share, so editors and CI logs can jump to it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceLocation:
    """A 1-based line/column position in a named source text."""

    path: str
    line: int
    column: int
    source: str | None = None
    length: int = 1

    def source_line(self) -> str | None:
        if self.source is None:
            return None
        lines = self.source.splitlines()
        if 1 <= self.line <= len(lines):
            return lines[self.line - 1]
        return None


class LoomError(Exception):
    """An error in the user's input: reported, never shown as a traceback."""

    def __init__(self, message: str, location: SourceLocation | None = None):
        super().__init__(message)
        self.message = message
        self.location = location

    def render(self) -> str:
        loc = self.location
        if loc is None:
            return f"error: {self.message}"
        text = f"{loc.path}:{loc.line}:{loc.column}: error: {self.message}"
        line = loc.source_line()
        if line is not None:
            caret_width = max(1, min(loc.length, len(line) - loc.column + 1))
            text += f"\n{line}\n{' ' * (loc.column - 1)}{'^' * caret_width}"
        return text

    def __str__(self) -> str:
        return self.render()


class InternalError(Exception):
    """A bug in Loom itself, as opposed to a problem with the user's input."""
