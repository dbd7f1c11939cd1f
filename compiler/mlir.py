"""Reading MLIR text (any Loom stage) with diagnostics in Loom's format."""

from __future__ import annotations

from xdsl.dialects.builtin import ModuleOp
from xdsl.parser import Parser
from xdsl.utils.exceptions import ParseError, VerifyException

from compiler.context import make_context
from compiler.diagnostics import LoomError, SourceLocation


def parse_mlir(text: str, path: str = "<string>") -> ModuleOp:
    """Parse and verify a module printed by Loom (or written by hand)."""
    try:
        module = Parser(make_context(), text, name=path).parse_module()
    except ParseError as e:
        loc = e.span.get_location()
        raise LoomError(
            e.msg,
            SourceLocation(path, loc.line, loc.col, text, max(1, e.span.len)),
        ) from None
    try:
        module.verify()
    except VerifyException as e:
        raise LoomError(f"invalid IR: {e}", SourceLocation(path, 1, 1, text)) from None
    return module
