"""Text to syntax tree: the lark parser, its post-lexer, and syntax errors
phrased for people rather than in lark's terminal names."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from lark import Lark, Token, Transformer, UnexpectedCharacters, UnexpectedToken, v_args
from lark.exceptions import VisitError
from lark.lark import PostLex
from lark.lexer import PatternStr

from compiler.diagnostics import LoomError
from compiler.frontend import ast
from compiler.frontend.source import SourceFile

_GRAMMAR = Path(__file__).with_name("grammar.lark")

_OPENERS = {"(": ")", "[": "]", "{": "}"}


class _JoinBracketedLines(PostLex):
    """Drop line breaks inside (...) and [...], so that an expression may
    span lines while a line break still ends a statement."""

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        depth = 0
        for token in stream:
            if token.type in ("LPAR", "LSQB"):
                depth += 1
            elif token.type in ("RPAR", "RSQB"):
                depth = max(0, depth - 1)
            elif token.type == "_NL" and depth:
                continue
            yield token


@functools.cache
def _lark() -> Lark:
    return Lark(
        _GRAMMAR.read_text(),
        parser="lalr",
        lexer="basic",
        postlex=_JoinBracketedLines(),
        propagate_positions=True,
        maybe_placeholders=True,
    )


def parse_ast(text: str, path: str = "<string>") -> ast.Program:
    """Parse a .loom file into its syntax tree; raises LoomError on bad syntax."""
    source = SourceFile(path, text)
    try:
        tree = _lark().parse(text)
    except UnexpectedCharacters as e:
        raise _unexpected_character(source, e) from None
    except UnexpectedToken as e:
        raise _unexpected_token(source, e) from None
    try:
        return _ToAst(source).transform(tree)
    except VisitError as e:
        if isinstance(e.orig_exc, LoomError):
            raise e.orig_exc from None
        raise


# ---- lark tree -> ast ------------------------------------------------------------


def _span(meta) -> ast.Span:
    return ast.Span(meta.line, meta.column, meta.end_line, meta.end_column)


def _token_span(token: Token) -> ast.Span:
    return ast.Span(token.line, token.column, token.end_line, token.end_column)


def _present(children: list) -> list:
    """Children without the None placeholders of absent optional parts."""
    return [c for c in children if c is not None]


_BINARY_OPERATORS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "matmul": "@"}


@v_args(meta=True)
class _ToAst(Transformer):
    """Builds ast nodes bottom-up from the lark tree."""

    def __init__(self, source: SourceFile):
        super().__init__()
        self.source = source

    # terminals
    @v_args(inline=True)
    def NAME(self, token: Token) -> ast.Name:
        return ast.Name(str(token), _token_span(token))

    @v_args(inline=True)
    def NUMBER(self, token: Token) -> ast.Number:
        text = str(token)
        value = int(text) if text.isdigit() else float(text)
        return ast.Number(value, _token_span(token))

    @v_args(inline=True)
    def STRING(self, token: Token) -> ast.String:
        return ast.String(str(token)[1:-1], _token_span(token))

    @v_args(inline=True)
    def TRUE(self, token: Token) -> ast.Bool:
        return ast.Bool(True, _token_span(token))

    @v_args(inline=True)
    def FALSE(self, token: Token) -> ast.Bool:
        return ast.Bool(False, _token_span(token))

    # atoms that only rename their single child
    def number(self, meta, children):
        return children[0]

    string = true = false = name = number

    def group(self, meta, children):
        _, inner, _ = children
        return replace(inner, span=_span(meta))

    def list(self, meta, children):
        return ast.ListExpr(tuple(_present(children[1:-1])), _span(meta))

    def neg(self, meta, children):
        return ast.Neg(children[1], _span(meta))

    def __default__(self, data, children, meta):
        """The binary operators, whose rules differ only in their symbol."""
        left, right = children
        return ast.Binary(_BINARY_OPERATORS[data], left, right, _span(meta))

    def keyword(self, meta, children):
        name, value = children
        return ast.Keyword(name, value, _span(meta))

    def call(self, meta, children):
        func, *arguments, _ = _present(children)
        for before, after in zip(arguments, arguments[1:]):
            if isinstance(before, ast.Keyword) and not isinstance(after, ast.Keyword):
                raise self.source.error("positional argument follows keyword argument", after.span)
        args = tuple(a for a in arguments if not isinstance(a, ast.Keyword))
        keywords = tuple(a for a in arguments if isinstance(a, ast.Keyword))
        return ast.Call(func, args, keywords, _span(meta))

    # declarations and statements
    def type(self, meta, children):
        dtype, *dims, _ = _present(children)
        return ast.TensorType(dtype, tuple(dims), _span(meta))

    def input(self, meta, children):
        return ast.Input(*children)

    def param(self, meta, children):
        return ast.Param(*children)

    def bare_init(self, meta, children):
        (name,) = children
        return ast.Call(name, (), (), name.span)

    def output(self, meta, children):
        return ast.Output(tuple(children))

    def assign(self, meta, children):
        return ast.Assign(*children)

    def result(self, meta, children):
        return children[0]

    # blocks
    def model(self, meta, children):
        name, *body = children
        return ast.Model(name, tuple(body), _span(meta))

    def function(self, meta, children):
        name, *middle, result = _present(children)
        params = tuple(c for c in middle if isinstance(c, ast.Name))
        body = tuple(c for c in middle if isinstance(c, ast.Assign))
        return ast.Function(name, params, body, result, _span(meta))

    def start(self, meta, children):
        return ast.Program(
            tuple(c for c in children if isinstance(c, ast.Model)),
            tuple(c for c in children if isinstance(c, ast.Function)),
        )


# ---- syntax errors -----------------------------------------------------------------

# Sets of terminals named as one phrase when all of their key members are expected.
_PHRASES: tuple[tuple[str, frozenset[str], frozenset[str]], ...] = (
    ("'model' or 'def'", frozenset({"MODEL", "DEF"}),
     frozenset({"MODEL", "DEF", "_NL", "SEMICOLON", "$END"})),
    (
        "an expression",
        frozenset({"NAME", "NUMBER", "LPAR"}),
        frozenset({"NAME", "NUMBER", "STRING", "TRUE", "FALSE", "MINUS", "LPAR", "LSQB"}),
    ),
    ("an operator", frozenset({"PLUS", "STAR", "SLASH", "AT"}),
     frozenset({"PLUS", "MINUS", "STAR", "SLASH", "AT"})),
    ("a declaration or statement", frozenset({"INPUT", "PARAM", "OUTPUT", "NAME"}),
     frozenset({"INPUT", "PARAM", "OUTPUT", "NAME"})),
    ("the end of the statement", frozenset({"_NL", "SEMICOLON"}),
     frozenset({"_NL", "SEMICOLON"})),
)

_TERMINAL_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "_NL": "a line break",
    "$END": "the end of the file",
}


def _literal(terminal: str) -> str | None:
    """The fixed text of a terminal such as RPAR, or None for NAME and the like."""
    if terminal in _TERMINAL_WORDS:
        return None
    pattern = _lark().get_terminal(terminal).pattern
    return pattern.value if isinstance(pattern, PatternStr) else None


def _describe_terminal(terminal: str) -> str:
    literal = _literal(terminal)
    return _TERMINAL_WORDS[terminal] if literal is None else f"'{literal}'"


def _describe_expected(expected: set[str]) -> str:
    remaining = set(expected)
    phrases = []
    for phrase, key, members in _PHRASES:
        if key <= remaining:
            phrases.append(phrase)
            remaining -= members
    phrases += sorted(_describe_terminal(t) for t in remaining)
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " or " + phrases[-1]


def _describe_token(token: Token) -> str:
    if token.type == "$END":
        return "end of file"
    if token.type == "_NL":
        return "end of line"
    return f"'{token}'"


def _open_brackets(text: str, end: int) -> list[tuple[str, int, int]]:
    """Brackets opened and not closed in text[:end], innermost last, as
    (bracket, line, column); comments and strings are skipped."""
    stack: list[tuple[str, int, int]] = []
    line, line_start, i = 1, 0, 0
    while i < end:
        char = text[i]
        if char == "\n":
            line, line_start = line + 1, i + 1
        elif char == "#":
            newline = text.find("\n", i)
            i = end if newline < 0 else newline
            continue
        elif char == '"':
            closing = text.find('"', i + 1)
            i = end if closing < 0 else closing + 1
            continue
        elif char in _OPENERS:
            stack.append((char, line, i - line_start + 1))
        elif stack and char == _OPENERS[stack[-1][0]]:
            stack.pop()
        i += 1
    return stack


def _end_of_text_span(text: str) -> ast.Span:
    """Just past the last character that is not blank or a comment."""
    lines = text.splitlines() or [""]
    for number in range(len(lines), 0, -1):
        content = lines[number - 1].split("#", 1)[0].rstrip()
        if content:
            column = len(content) + 1
            return ast.Span(number, column, number, column + 1)
    return ast.Span(1, 1, 1, 2)


def _unclosed_bracket(source: SourceFile, e: UnexpectedToken) -> LoomError | None:
    """A bracket left open is the likely cause when the parser stops at the
    end of the file, or at the first token of a later line where the closing
    bracket would have been accepted."""
    token = e.token
    at_end = token.type == "$END"
    end = len(source.text) if at_end else token.start_pos
    stack = _open_brackets(source.text, end)
    if not stack:
        return None
    bracket, line, column = stack[-1]
    span = ast.Span(line, column, line, column + 1)
    if at_end:
        return source.error(f"'{bracket}' is never closed", span)
    closer = _OPENERS[bracket]
    line_start = source.text.rfind("\n", 0, token.start_pos) + 1
    first_on_line = not source.text[line_start : token.start_pos].strip()
    if line < token.line and first_on_line and closer in map(_literal, e.accepts):
        return source.error(
            f"'{bracket}' is not closed: expected '{closer}' before "
            f"{_describe_token(token)} on line {token.line}",
            span,
        )
    return None


def _unexpected_token(source: SourceFile, e: UnexpectedToken) -> LoomError:
    unclosed = _unclosed_bracket(source, e)
    if unclosed is not None:
        return unclosed
    token = e.token
    message = f"unexpected {_describe_token(token)}; expected {_describe_expected(e.accepts)}"
    if token.type == "$END":
        return source.error(message, _end_of_text_span(source.text))
    return source.error(message, _token_span(token))


def _unexpected_character(source: SourceFile, e: UnexpectedCharacters) -> LoomError:
    char = source.text[e.pos_in_stream]
    span = ast.Span(e.line, e.column, e.line, e.column + 1)
    if char == '"':
        return source.error("unterminated string", span)
    if char == "'":
        return source.error("strings are written in double quotes", span)
    return source.error(f"unexpected character '{char}'", span)
