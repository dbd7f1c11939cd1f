"""expand-math: f32 exp/tanh become arithmetic that agrees with numpy."""

from __future__ import annotations

import numpy as np

import compiler
from compiler.context import make_context
from compiler.mlir import parse_mlir
from compiler.pass_manager import PassManager

SOURCE = """model m {
  input x: f32[4096]
  e = exp(x)
  t = tanh(x)
  s = sigmoid(x)
  g = gelu(x)
  output e, t, s, g
}"""

SPECIAL = [0.0, -0.0, 1e-8, -1e-8, 88.7, 88.73, 89.0, -87.4, -88.0, -104.0, np.inf, -np.inf, np.nan, 0.5, 20.0, -20.0]


def test_exp_and_tanh_are_expanded_into_arithmetic() -> None:
    module = parse_mlir("""builtin.module {
  func.func @f(%x: f32, %y: f64) -> (f32, f32, f64) {
    %0 = math.exp %x : f32
    %1 = math.tanh %x : f32
    %2 = math.exp %y : f64
    func.return %0, %1, %2 : f32, f32, f64
  }
}""")
    PassManager.from_pipeline(make_context(), "expand-math").run(module)
    text = str(module)
    assert "math.exp %x" not in text and "math.tanh" not in text
    assert "math.exp %y : f64" in text  # only f32 is expanded
    assert "math.roundeven" in text and "arith.shli" in text and "arith.bitcast" in text


def test_expanded_functions_match_numpy_on_the_cpu() -> None:
    x = np.concatenate([np.linspace(-100, 100, 4096 - len(SPECIAL)), SPECIAL]).astype(np.float32)
    artifact = compiler.compile(SOURCE, target="cpu")
    assert "expand-math" in [name for name, _ in artifact.stages.timings]
    got = artifact.run(x=x)
    want = compiler.compile(SOURCE, target="interp").run(x=x)
    for name in want:
        a, b = got[name].astype(np.float64), want[name].astype(np.float64)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)
        finite = np.isfinite(b)
        np.testing.assert_array_equal(a[~finite & ~np.isnan(b)], b[~finite & ~np.isnan(b)], err_msg=name)
        error = np.abs(a[finite] - b[finite]) / np.maximum(1.0, np.abs(b[finite]))
        assert error.max() <= 4e-7, (name, error.max())
