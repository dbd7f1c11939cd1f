"""A named source text, and turning spans of it into diagnostics."""

from __future__ import annotations

from dataclasses import dataclass

from compiler.diagnostics import LoomError, SourceLocation
from compiler.frontend.ast import Span


@dataclass(frozen=True)
class SourceFile:
    path: str
    text: str

    def location(self, span: Span) -> SourceLocation:
        """The location of `span`; a span running over several lines is
        underlined to the end of its first line."""
        if span.end_line == span.line:
            length = span.end_column - span.column
        else:
            lines = self.text.splitlines()
            first = lines[span.line - 1] if span.line <= len(lines) else ""
            length = len(first) - span.column + 1
        return SourceLocation(
            self.path, span.line, span.column, source=self.text, length=max(1, length)
        )

    def error(self, message: str, span: Span) -> LoomError:
        return LoomError(message, self.location(span))
