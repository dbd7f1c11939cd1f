"""Every user error is a LoomError rendered at the right place.

Each tests/frontend/bad/NAME.loom has the exact expected diagnostic in
NAME.err. Paths are rendered as given, so sources are named relative to the
repository root here and the CLI runs from there.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from compiler.diagnostics import LoomError
from compiler.frontend import load_file, parse_ast, parse_source

ROOT = Path(__file__).resolve().parents[2]
BAD = sorted((ROOT / "tests" / "frontend" / "bad").glob("*.loom"))


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def expected(path: Path) -> str:
    return path.with_suffix(".err").read_text()


def test_the_golden_set_covers_the_required_cases():
    assert len(BAD) >= 12
    assert all(p.with_suffix(".err").is_file() for p in BAD)


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_input_renders_the_golden_diagnostic(path: Path):
    with pytest.raises(LoomError) as info:
        parse_source(path.read_text(), relative(path), base_dir=path.parent)
    assert info.value.render() + "\n" == expected(path)


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_cli_compile_reports_the_diagnostic_and_writes_nothing(path: Path, tmp_path: Path):
    out = tmp_path / "model.out"
    result = subprocess.run(
        [sys.executable, "-m", "compiler.cli", "compile", relative(path), "--target", "cpu", "-o", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert expected(path) in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def error_of(text: str, **kwargs) -> LoomError:
    with pytest.raises(LoomError) as info:
        parse_source(text, "t.loom", **kwargs)
    return info.value


PRELUDE = """model m {
  input x: f32[1, 4]
  input i: i8[4]
  param w: f32[4, 3] = zeros
  param g: f32[3] = ones
"""


@pytest.mark.parametrize(
    "body, message, line, column",
    [
        ("h = softmax(x, axis=1, axis=0)", "softmax() got multiple values for argument 'axis'", 6, 26),
        ("h = layernorm(x, g)", "layernorm() missing required argument 'beta'", 6, 7),
        ("h = softmax(x, 0, 1)", "softmax() takes from 1 to 2 positional arguments but 3 were given", 6, 21),
        ("h = concat(x, 2)", "concat() argument 2 must be a tensor, got the number 2", 6, 17),
        ("h = sum(x, keepdims=1)", "sum() argument 'keepdims' must be true or false", 6, 23),
        ("h = conv2d(x, w, stride=[1, 2, 3])", "conv2d() argument 'stride' must be an integer or a list of two integers", 6, 27),
        ("h = i * 300", "literal 300 does not fit in i8", 6, 11),
        ("h = relu + x", "'relu' is a function; call it as relu(...)", 6, 7),
        ("h = x + true", "'+' needs numbers or tensors, got true", 6, 11),
        ("h = 1 @ 2", "'@' needs tensor operands, got two numbers", 6, 7),
        ("h = 1 / (2 - 2)", "division by zero", 6, 7),
        ("h = 2 * 3", "output 'h' must be a tensor, got the number 6", 7, 10),
        ("h = x + load(\"w.npy\")", "unknown function 'load'", 6, 11),
        ("param q: f64[2] = zeros", "unknown dtype 'f64'; expected one of f32, f16, bf16, i8, i32", 6, 12),
        ("param q: f32[2, 1.5] = zeros", "a dimension must be a positive integer, got 1.5", 6, 19),
        ("param q: f32[2] = zero", "unknown initializer 'zero'; did you mean 'zeros'?", 6, 21),
        ("param q: f32[2] = normal(0, s)", "an initializer argument must be a constant", 6, 31),
        ("param q: f32[2] = normal(0, -1)", "normal() std must not be negative, got -1.0", 6, 21),
        ("param q: f32[2] = uniform(0, 1, seed=-1)", "seed must not be negative, got -1", 6, 21),
        ("param q: i8[2] = uniform(0, 1)", "uniform() initializes floating-point params only; 'q' is i8[2]", 6, 20),
        ("param w: f32[2] = ones", "'w' is already defined at line 4", 6, 9),
        ("h = f(x, 1, 2)", "unknown function 'f'", 6, 7),
        ("h = x\n  output h, h", "'h' is already an output (line 7)", 7, 13),
    ],
)
def test_semantic_errors(body: str, message: str, line: int, column: int):
    text = PRELUDE + f"  {body}\n" + ("" if "output" in body else "  output h\n") + "}\n"
    error = error_of(text)
    assert error.message.startswith(message), error.message
    assert (error.location.line, error.location.column) == (line, column)


def test_caret_spans_the_expression_on_its_first_line():
    error = error_of(PRELUDE + "  h = relu(x @\n    g)\n  output h\n}\n")
    assert error.render().splitlines()[1:] == ["  h = relu(x @", "           ^^^"]


def test_errors_in_nested_defs_name_every_call():
    error = error_of("""\
def inner(a) { return a @ a }
def outer(a) {
  return inner(a)
}
model m { input x: f32[2, 3]; y = outer(x); output y }
""")
    assert error.message == (
        "matmul inner dimensions differ: f32[2,3] @ f32[2,3] (3 != 2) "
        "(in call to 'inner' at line 3, from 'outer' at line 5)"
    )
    assert (error.location.line, error.location.column) == (1, 23)


@pytest.mark.parametrize(
    "text, message",
    [
        ("def relu(x) { return x }", "'relu' is a builtin function and cannot be redefined"),
        ("def f(a, a) { return a }", "parameter 'a' is already defined at line 1"),
        ("def f(a) { return a }\ndef f(b) { return b }", "def 'f' is already defined at line 1"),
        ("model m { input x: f32[1]; output x }\nmodel m { input x: f32[1]; output x }",
         "model 'm' is already defined at line 1"),
        ("def f(a) { return f(a) }", "recursive call to 'f' (f -> f)"),
        ("def f(a) { return a }\nmodel m { input x: f32[1]; y = f(a=x); output y }",
         "f() takes positional arguments only"),
        ("def f(a) { t = a; t = a; return t }\nmodel m { input x: f32[1]; y = f(x); output y }",
         "'t' is already defined at line 1 (in call to 'f' at line 2)"),
        ("def f(a) { return a + x }\nmodel m { input x: f32[1]; y = f(x); output y }",
         "unknown name 'x'; a def sees only its parameters and its own names (in call to 'f' at line 2)"),
    ],
)
def test_def_errors(text: str, message: str):
    assert error_of(text).message.startswith(message)


@pytest.mark.parametrize(
    "text, message, line, column",
    [
        ("model m {\n  y = x y\n}", "unexpected 'y'; expected an operator, the end of the statement, '(' or '}'", 2, 9),
        ("model m {\n  y = x +\n  output y\n}", "unexpected end of line; expected an expression", 2, 10),
        ("modell m {}", "unexpected 'modell'; expected 'model' or 'def'", 1, 1),
        ("model m {\n  input 3: f32[1]\n}", "unexpected '3'; expected a name", 2, 9),
        ("model m { y = f(a=1, 2) }", "positional argument follows keyword argument", 1, 22),
        ("model m { param w: f32[1] = load(\"w.npy) }", "unterminated string", 1, 34),
        ("model m {\n  y = (x\n", "'(' is never closed", 2, 7),
        ("model m {\n  y = conv2d(x, w\n      stride=2)\n}",
         "'(' is not closed: expected ')' before 'stride' on line 3", 2, 13),
    ],
)
def test_syntax_errors(text: str, message: str, line: int, column: int):
    with pytest.raises(LoomError) as info:
        parse_ast(text, "t.loom")
    assert info.value.message == message
    assert (info.value.location.line, info.value.location.column) == (line, column)


def test_missing_source_file_is_a_user_error(tmp_path: Path):
    with pytest.raises(LoomError, match="cannot read"):
        load_file(tmp_path / "absent.loom")
