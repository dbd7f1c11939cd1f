"""fold-constants: IR before and after, and folded values against numpy."""

from __future__ import annotations

import numpy as np
import pytest
from xdsl.dialects.builtin import ModuleOp, f32

from compiler.context import make_context
from compiler.interpreter import run_model
from compiler.mlir import parse_mlir
from compiler.model import find_model
from compiler.pass_manager import PassManager
from dialects import nn
from passes import registry


def model(signature: str, body: str) -> str:
    return f"""
builtin.module {{
  func.func @m{signature} attributes {{loom.inputs = ["x"], loom.model, loom.outputs = ["y"]}} {{
{body}
  }}
}}
"""


def fold(text: str) -> ModuleOp:
    module = parse_mlir(text)
    PassManager.from_pipeline(make_context(), "fold-constants").run(module)
    return module


def constants(module: ModuleOp) -> list[nn.ConstantOp]:
    return [op for op in module.walk() if isinstance(op, nn.ConstantOp)]


def assert_same_ir(got: ModuleOp, expected_text: str) -> None:
    assert str(got) == str(parse_mlir(expected_text))


TRANSPOSE_AND_LITERALS = model(
    "(%x: tensor<3x2xf32>) -> tensor<3x2xf32>",
    """
    %w = nn.constant {value = dense<[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]> : tensor<2x3xf32>, sym_name = "w"} : tensor<2x3xf32>
    %wt = nn.transpose %w {perm = array<i64: 1, 0>} : (tensor<2x3xf32>) -> tensor<3x2xf32>
    %two = nn.constant {value = dense<2.0> : tensor<f32>} : tensor<f32>
    %three = nn.constant {value = dense<3.0> : tensor<f32>} : tensor<f32>
    %six = nn.mul %two, %three : (tensor<f32>, tensor<f32>) -> tensor<f32>
    %xs = nn.mul %x, %six : (tensor<3x2xf32>, tensor<f32>) -> tensor<3x2xf32>
    %y = nn.add %xs, %wt : (tensor<3x2xf32>, tensor<3x2xf32>) -> tensor<3x2xf32>
    func.return %y : tensor<3x2xf32>""",
)


def test_folds_transposed_param_and_literal_arithmetic() -> None:
    expected = model(
        "(%x: tensor<3x2xf32>) -> tensor<3x2xf32>",
        """
    %wt = nn.constant {value = dense<[[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]> : tensor<3x2xf32>, sym_name = "w"} : tensor<3x2xf32>
    %six = nn.constant {value = dense<6.0> : tensor<f32>} : tensor<f32>
    %xs = nn.mul %x, %six : (tensor<3x2xf32>, tensor<f32>) -> tensor<3x2xf32>
    %y = nn.add %xs, %wt : (tensor<3x2xf32>, tensor<3x2xf32>) -> tensor<3x2xf32>
    func.return %y : tensor<3x2xf32>""",
    )
    assert_same_ir(fold(TRANSPOSE_AND_LITERALS), expected)


def test_folding_preserves_the_model() -> None:
    x = np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32)
    before = run_model(find_model(parse_mlir(TRANSPOSE_AND_LITERALS), None), {"x": x})
    after = run_model(find_model(fold(TRANSPOSE_AND_LITERALS), None), {"x": x})
    np.testing.assert_array_equal(before["y"], after["y"])


def test_ops_reading_arguments_stay() -> None:
    text = model(
        "(%x: tensor<2xf32>) -> tensor<2xf32>",
        """
    %one = nn.constant {value = dense<1.0> : tensor<f32>} : tensor<f32>
    %r = nn.relu %x : (tensor<2xf32>) -> tensor<2xf32>
    %y = nn.add %r, %one : (tensor<2xf32>, tensor<f32>) -> tensor<2xf32>
    func.return %y : tensor<2xf32>""",
    )
    assert_same_ir(fold(text), text)


def test_chains_of_constant_ops_fold_to_numpy_values() -> None:
    rng = np.random.default_rng(7)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal((3,)).astype(np.float32)
    module = parse_mlir(
        model(
            "(%x: tensor<2x4xf32>) -> tensor<3x4xf32>",
            f"""
    %w = "nn.constant"() <{{value = {nn.dense_from_array(w, f32)}, sym_name = "w"}}> : () -> tensor<4x3xf32>
    %b = "nn.constant"() <{{value = {nn.dense_from_array(b, f32)}, sym_name = "b"}}> : () -> tensor<3xf32>
    %s = nn.add %w, %b : (tensor<4x3xf32>, tensor<3xf32>) -> tensor<4x3xf32>
    %e = nn.exp %s : (tensor<4x3xf32>) -> tensor<4x3xf32>
    %y = nn.transpose %e {{perm = array<i64: 1, 0>}} : (tensor<4x3xf32>) -> tensor<3x4xf32>
    func.return %y : tensor<3x4xf32>""",
        )
    )
    PassManager.from_pipeline(make_context(), "fold-constants").run(module)
    (folded,) = constants(module)
    np.testing.assert_allclose(folded.array(), np.exp(w.astype(np.float64) + b).T, rtol=1e-6)
    assert folded.param_name is None  # two parameters went into it


def test_integer_folding_wraps() -> None:
    module = fold(
        model(
            "(%x: tensor<2xi8>) -> tensor<2xi8>",
            """
    %a = nn.constant {value = dense<[100, -7]> : tensor<2xi8>} : tensor<2xi8>
    %b = nn.constant {value = dense<[3, 2]> : tensor<2xi8>} : tensor<2xi8>
    %p = nn.mul %a, %b : (tensor<2xi8>, tensor<2xi8>) -> tensor<2xi8>
    %q = nn.div %a, %b : (tensor<2xi8>, tensor<2xi8>) -> tensor<2xi8>
    %s = nn.add %p, %q : (tensor<2xi8>, tensor<2xi8>) -> tensor<2xi8>
    %y = nn.add %x, %s : (tensor<2xi8>, tensor<2xi8>) -> tensor<2xi8>
    func.return %y : tensor<2xi8>""",
        )
    )
    (folded,) = constants(module)
    # 300 wraps to 44; -7 / 2 truncates to -3.
    assert folded.array().tolist() == [44 + 33, -14 - 3]


def test_integer_division_by_zero_is_left_for_run_time() -> None:
    text = model(
        "(%x: tensor<i32>) -> tensor<i32>",
        """
    %a = nn.constant {value = dense<1> : tensor<i32>} : tensor<i32>
    %z = nn.constant {value = dense<0> : tensor<i32>} : tensor<i32>
    %y = nn.div %a, %z : (tensor<i32>, tensor<i32>) -> tensor<i32>
    func.return %y : tensor<i32>""",
    )
    assert_same_ir(fold(text), text)


@pytest.mark.parametrize("n, folds", [(2, True), (16, False)])
def test_large_broadcasts_are_not_folded(n: int, folds: bool) -> None:
    # [n,1] + [1,n] turns 2n values into n*n: fine for n=2, refused for n=16.
    module = fold(
        model(
            f"(%x: tensor<{n}x{n}xf32>) -> tensor<{n}x{n}xf32>",
            f"""
    %a = nn.constant {{value = dense<1.0> : tensor<{n}x1xf32>}} : tensor<{n}x1xf32>
    %b = nn.constant {{value = dense<2.0> : tensor<1x{n}xf32>}} : tensor<1x{n}xf32>
    %y = nn.add %a, %b : (tensor<{n}x1xf32>, tensor<1x{n}xf32>) -> tensor<{n}x{n}xf32>
    func.return %y : tensor<{n}x{n}xf32>""",
        )
    )
    shapes = [tuple(c.array().shape) for c in constants(module)]
    assert shapes == ([(n, n)] if folds else [(n, 1), (1, n)])


def test_constant_still_used_elsewhere_is_kept() -> None:
    module = fold(
        model(
            "(%x: tensor<2x2xf32>) -> tensor<2x2xf32>",
            """
    %w = nn.constant {value = dense<[[1.0, 2.0], [3.0, 4.0]]> : tensor<2x2xf32>, sym_name = "w"} : tensor<2x2xf32>
    %wt = nn.transpose %w {perm = array<i64: 1, 0>} : (tensor<2x2xf32>) -> tensor<2x2xf32>
    %a = nn.matmul %x, %w : (tensor<2x2xf32>, tensor<2x2xf32>) -> tensor<2x2xf32>
    %y = nn.matmul %a, %wt : (tensor<2x2xf32>, tensor<2x2xf32>) -> tensor<2x2xf32>
    func.return %y : tensor<2x2xf32>""",
        )
    )
    values = [c.array().tolist() for c in constants(module)]
    assert values == [[[1.0, 2.0], [3.0, 4.0]], [[1.0, 3.0], [2.0, 4.0]]]


def test_pass_is_registered() -> None:
    assert registry.get_pass("fold-constants").name == "fold-constants"
