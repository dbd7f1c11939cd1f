"""The LLVM emitter on hand-written loop-level modules, checked against numpy."""

from __future__ import annotations

import numpy as np
import pytest

from backends.cpu import CpuBackend
from compiler import CompileOptions, InternalError, ModelSignature, TensorSpec
from dialects.nn import round_to_bf16

from cpu_loops import compile_loops, dense_hex, parse_loops


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


def index_constants(*values: int) -> str:
    return "\n".join(f"    %c{v} = arith.constant {v} : index" for v in sorted(set(values) | {0, 1}))


def test_broadcast_add(rng):
    art = compile_loops(f"""
builtin.module {{
  func.func @add(%x: memref<5x37xf32>, %b: memref<37xf32>, %y: memref<5x37xf32>)
      attributes {{loom.inputs = ["x", "b"], loom.model, loom.outputs = ["y"]}} {{
{index_constants(5, 37)}
    scf.for %i = %c0 to %c5 step %c1 {{
      scf.for %j = %c0 to %c37 step %c1 {{
        %a = memref.load %x[%i, %j] : memref<5x37xf32>
        %v = memref.load %b[%j] : memref<37xf32>
        %s = arith.addf %a, %v : f32
        memref.store %s, %y[%i, %j] : memref<5x37xf32>
      }}
    }}
    func.return
  }}
}}""")
    x = rng.standard_normal((5, 37)).astype(np.float32)
    b = rng.standard_normal(37).astype(np.float32)
    np.testing.assert_array_equal(art.run(x=x, b=b)["y"], x + b)


def matmul_module(m: int, k: int, n: int, weight: np.ndarray) -> str:
    """y = x @ w with w a global, zero-filled then accumulated in i-k-j order."""
    return f"""
builtin.module {{
  "memref.global"() <{{sym_name = "w", sym_visibility = "private", type = memref<{k}x{n}xf32>,
      initial_value = {dense_hex(weight)} : tensor<{k}x{n}xf32>, constant}}> : () -> ()
  func.func @mm(%x: memref<{m}x{k}xf32>, %y: memref<{m}x{n}xf32>)
      attributes {{loom.inputs = ["x"], loom.model, loom.outputs = ["y"]}} {{
{index_constants(m, k, n)}
    %zero = arith.constant 0.000000e+00 : f32
    %w = memref.get_global @w : memref<{k}x{n}xf32>
    scf.for %i = %c0 to %c{m} step %c1 {{
      scf.for %j = %c0 to %c{n} step %c1 {{
        memref.store %zero, %y[%i, %j] : memref<{m}x{n}xf32>
      }}
    }}
    scf.for %i = %c0 to %c{m} step %c1 {{
      scf.for %p = %c0 to %c{k} step %c1 {{
        %a = memref.load %x[%i, %p] : memref<{m}x{k}xf32>
        scf.for %j = %c0 to %c{n} step %c1 {{
          %b = memref.load %w[%p, %j] : memref<{k}x{n}xf32>
          %acc = memref.load %y[%i, %j] : memref<{m}x{n}xf32>
          %prod = arith.mulf %a, %b : f32
          %sum = arith.addf %acc, %prod : f32
          memref.store %sum, %y[%i, %j] : memref<{m}x{n}xf32>
        }}
      }}
    }}
    func.return
  }}
}}"""


@pytest.mark.parametrize("opt_level", [0, 3])
def test_matmul_with_global_weight(rng, opt_level):
    w = rng.standard_normal((33, 19)).astype(np.float32)
    art = compile_loops(matmul_module(13, 33, 19, w), opt_level)
    x = rng.standard_normal((13, 33)).astype(np.float32)
    np.testing.assert_allclose(art.run(x=x)["y"], x @ w, rtol=0, atol=1e-4)
    assert art.report["opt_level"] == opt_level


def test_large_weight_global(rng):
    w = rng.standard_normal((300, 400)).astype(np.float32)
    art = compile_loops(matmul_module(2, 300, 400, w))
    x = rng.standard_normal((2, 300)).astype(np.float32)
    np.testing.assert_allclose(art.run(x=x)["y"], x @ w, rtol=0, atol=1e-4)


def test_zero_and_splat_globals():
    art = compile_loops(f"""
builtin.module {{
  "memref.global"() <{{sym_name = "zeros", sym_visibility = "private", type = memref<3x4xf32>,
      initial_value = dense<0.000000e+00> : tensor<3x4xf32>, constant}}> : () -> ()
  "memref.global"() <{{sym_name = "halves", sym_visibility = "private", type = memref<3x4xf32>,
      initial_value = dense<5.000000e-01> : tensor<3x4xf32>, constant}}> : () -> ()
  func.func @g(%x: memref<3x4xf32>, %y: memref<3x4xf32>)
      attributes {{loom.inputs = ["x"], loom.model, loom.outputs = ["y"]}} {{
{index_constants(3, 4)}
    %z = memref.get_global @zeros : memref<3x4xf32>
    %h = memref.get_global @halves : memref<3x4xf32>
    scf.for %i = %c0 to %c3 step %c1 {{
      scf.for %j = %c0 to %c4 step %c1 {{
        %a = memref.load %x[%i, %j] : memref<3x4xf32>
        %b = memref.load %z[%i, %j] : memref<3x4xf32>
        %c = memref.load %h[%i, %j] : memref<3x4xf32>
        %s = arith.addf %a, %b : f32
        %t = arith.addf %s, %c : f32
        memref.store %t, %y[%i, %j] : memref<3x4xf32>
      }}
    }}
    func.return
  }}
}}""")
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(art.run(x=x)["y"], x + 0.5)


def test_reductions_with_iter_args(rng):
    art = compile_loops(f"""
builtin.module {{
  func.func @reduce(%x: memref<7x53xf32>, %sum: memref<7xf32>, %max: memref<7xf32>)
      attributes {{loom.inputs = ["x"], loom.model, loom.outputs = ["sum", "max"]}} {{
{index_constants(7, 53)}
    %zero = arith.constant 0.000000e+00 : f32
    %lowest = arith.constant 0xFF800000 : f32
    scf.for %i = %c0 to %c7 step %c1 {{
      %s, %m = scf.for %j = %c0 to %c53 step %c1 iter_args(%acc = %zero, %best = %lowest) -> (f32, f32) {{
        %v = memref.load %x[%i, %j] : memref<7x53xf32>
        %next = arith.addf %acc, %v : f32
        %top = arith.maximumf %best, %v : f32
        scf.yield %next, %top : f32, f32
      }}
      memref.store %s, %sum[%i] : memref<7xf32>
      memref.store %m, %max[%i] : memref<7xf32>
    }}
    func.return
  }}
}}""")
    x = rng.standard_normal((7, 53)).astype(np.float32)
    out = art.run(x=x)
    np.testing.assert_allclose(out["sum"], x.sum(axis=1), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(out["max"], x.max(axis=1))


def elementwise_module(name: str, dtype: str, n: int, body: str, inputs=("x",), outputs=("y",),
                       prelude: str = "") -> str:
    """A model applying `body` to element %i of every input (loaded as %x, %w, ...)."""
    args = ", ".join(f"%{a}: memref<{n}x{dtype}>" for a in inputs + outputs)
    loads = "\n".join(f"      %{a}v = memref.load %{a}[%i] : memref<{n}x{dtype}>" for a in inputs)
    names = lambda xs: ", ".join(f'"{a}"' for a in xs)  # noqa: E731
    return f"""
builtin.module {{
  func.func @{name}({args})
      attributes {{loom.inputs = [{names(inputs)}], loom.model, loom.outputs = [{names(outputs)}]}} {{
{index_constants(n)}
{prelude}
    scf.for %i = %c0 to %c{n} step %c1 {{
{loads}
{body}
    }}
    func.return
  }}
}}"""


def test_f16_arithmetic_rounds_each_op(rng):
    art = compile_loops(elementwise_module("half", "f16", 40, """
      %sq = arith.mulf %xv, %xv : f16
      %r = arith.addf %sq, %wv : f16
      %tenth = arith.constant 1.000000e-01 : f16
      %t = arith.mulf %r, %tenth : f16
      %huge = arith.constant 6.000000e+04 : f16
      %capped = arith.minimumf %t, %huge : f16
      memref.store %capped, %y[%i] : memref<40xf16>""", inputs=("x", "w")))
    x = (rng.standard_normal(40) * 10).astype(np.float16)
    w = rng.standard_normal(40).astype(np.float16)
    square = (x.astype(np.float32) * x.astype(np.float32)).astype(np.float16)
    total = (square.astype(np.float32) + w.astype(np.float32)).astype(np.float16)
    expected = (total.astype(np.float32) * np.float32(np.float16(0.1))).astype(np.float16)
    got = art.run(x=x, w=w)["y"]
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, expected)


def test_bf16_storage_and_rounding(rng):
    art = compile_loops(elementwise_module("brain", "bf16", 33, """
      %wide = arith.extf %xv : bf16 to f32
      %three = arith.constant 3.000000e+00 : f32
      %scaled = arith.mulf %wide, %three : f32
      %narrow = arith.truncf %scaled : f32 to bf16
      memref.store %narrow, %y[%i] : memref<33xbf16>
      %sum = arith.addf %xv, %wv : bf16
      %tenth = arith.constant 1.000000e-01 : bf16
      %d = arith.mulf %sum, %tenth : bf16
      memref.store %d, %z[%i] : memref<33xbf16>""", inputs=("x", "w"), outputs=("y", "z")))
    x = round_to_bf16(rng.standard_normal(33).astype(np.float32))
    w = round_to_bf16(rng.standard_normal(33).astype(np.float32))
    out = art.run(x=x, w=w)
    assert out["y"].dtype == np.float32
    np.testing.assert_array_equal(out["y"], round_to_bf16(x * np.float32(3)))
    tenth = round_to_bf16(np.float32(0.1))
    np.testing.assert_array_equal(out["z"], round_to_bf16(round_to_bf16(x + w) * tenth))
    # Inputs that are not bf16 values are rounded on the way in.
    unrounded = rng.standard_normal(33).astype(np.float32)
    np.testing.assert_array_equal(art.run(x=unrounded, w=w)["y"],
                                  round_to_bf16(round_to_bf16(unrounded) * np.float32(3)))


def test_i8_division_and_integer_ops():
    art = compile_loops(elementwise_module("ints", "i8", 12, """
      %q = arith.divsi %xv, %wv : i8
      memref.store %q, %quot[%i] : memref<12xi8>
      %r = arith.remsi %xv, %wv : i8
      memref.store %r, %rem[%i] : memref<12xi8>
      %f = arith.floordivsi %xv, %wv : i8
      memref.store %f, %floor[%i] : memref<12xi8>
      %c = arith.ceildivsi %xv, %wv : i8
      memref.store %c, %ceil[%i] : memref<12xi8>
      %m = arith.maxsi %xv, %wv : i8
      %lt = arith.cmpi slt, %xv, %wv : i8
      %picked = arith.select %lt, %xv, %wv : i8
      %wide = arith.extsi %picked : i8 to i32
      %k = arith.constant 1000 : i32
      %scaled = arith.muli %wide, %k : i32
      %wide_max = arith.extsi %m : i8 to i32
      %total = arith.addi %scaled, %wide_max : i32
      %back = arith.trunci %total : i32 to i8
      memref.store %back, %mix[%i] : memref<12xi8>""",
        inputs=("x", "w"), outputs=("quot", "rem", "floor", "ceil", "mix")))
    x = np.array([7, -7, 7, -7, -128, -128, 5, 0, 100, -3, 9, 1], dtype=np.int8)
    w = np.array([2, 2, -2, -2, -1, 0, 0, 3, 7, 5, -4, 1], dtype=np.int8)
    out = art.run(x=x, w=w)
    xs, ws = x.astype(np.int64), w.astype(np.int64)
    safe = np.where(ws == 0, 1, ws)
    trunc = np.where(ws == 0, 0, np.trunc(xs / safe).astype(np.int64))
    np.testing.assert_array_equal(out["quot"], trunc.astype(np.int8))  # -128 / -1 wraps
    np.testing.assert_array_equal(out["rem"], np.where(ws == 0, 0, xs - trunc * ws).astype(np.int8))
    np.testing.assert_array_equal(out["floor"], np.where(ws == 0, 0, np.floor(xs / safe)).astype(np.int8))
    np.testing.assert_array_equal(out["ceil"], np.where(ws == 0, 0, np.ceil(xs / safe)).astype(np.int8))
    expected_mix = (np.minimum(xs, ws) * 1000 + np.maximum(xs, ws)).astype(np.int8)
    np.testing.assert_array_equal(out["mix"], expected_mix)


def test_i32_to_float_conversions():
    art = compile_loops(elementwise_module("conv", "i32", 6, """
      %f = arith.sitofp %xv : i32 to f32
      %h = arith.constant 5.000000e-01 : f32
      %g = arith.addf %f, %h : f32
      %n = arith.negf %g : f32
      %back = arith.fptosi %n : f32 to i32
      memref.store %back, %y[%i] : memref<6xi32>"""))
    x = np.array([0, 1, -1, 1000, -5, 2**20], dtype=np.int32)
    np.testing.assert_array_equal(art.run(x=x)["y"], np.trunc(-(x + 0.5)).astype(np.int32))


def test_math_functions(rng):
    ops = {"exp": "math.exp", "tanh": "math.tanh", "sqrt": "math.sqrt", "rsqrt": "math.rsqrt",
           "log": "math.log", "abs": "math.absf", "erf": "math.erf"}
    body = "\n".join(
        f"      %{name}r = {op} %xv : f32\n      memref.store %{name}r, %{name}[%i] : memref<64xf32>"
        for name, op in ops.items()
    )
    body += """
      %p = math.powf %xv, %xv : f32
      memref.store %p, %pow[%i] : memref<64xf32>
      %fm = math.fma %xv, %xv, %xv : f32
      memref.store %fm, %fma[%i] : memref<64xf32>"""
    art = compile_loops(elementwise_module("maths", "f32", 64, body,
                                           outputs=tuple(ops) + ("pow", "fma")))
    x = rng.uniform(0.05, 4.0, 64).astype(np.float32)
    out = art.run(x=x)
    from math import erf

    expected = {"exp": np.exp(x), "tanh": np.tanh(x), "sqrt": np.sqrt(x), "rsqrt": 1 / np.sqrt(x),
                "log": np.log(x), "abs": np.abs(x), "erf": np.vectorize(erf)(x.astype(np.float64)),
                "pow": x ** x, "fma": x * x + x}
    for name, want in expected.items():
        np.testing.assert_allclose(out[name], want, rtol=2e-6, err_msg=name)


def test_buffers_views_and_copies(rng):
    art = compile_loops(f"""
builtin.module {{
  func.func @buffers(%x: memref<6x4xf32>, %y: memref<4x6xf32>, %total: memref<f32>)
      attributes {{loom.inputs = ["x"], loom.model, loom.outputs = ["y", "total"]}} {{
{index_constants(2, 3, 4, 6, 24, 8192)}
    %two = arith.constant 2.000000e+00 : f32
    %zero = arith.constant 0.000000e+00 : f32
    %small = memref.alloc() {{alignment = 64 : i64}} : memref<6x4xf32>
    scf.for %i = %c0 to %c6 step %c1 {{
      scf.for %j = %c0 to %c4 step %c1 {{
        %a = memref.load %x[%i, %j] : memref<6x4xf32>
        %d = arith.mulf %a, %two : f32
        memref.store %d, %small[%i, %j] : memref<6x4xf32>
      }}
    }}
    %flat = memref.collapse_shape %small [[0, 1]] : memref<6x4xf32> into memref<24xf32>
    %view = memref.expand_shape %flat [[0, 1]] output_shape [4, 6] : memref<24xf32> into memref<4x6xf32>
    "memref.copy"(%view, %y) : (memref<4x6xf32>, memref<4x6xf32>) -> ()
    memref.dealloc %small : memref<6x4xf32>
    %big = memref.alloc() {{alignment = 64 : i64}} : memref<8192xf32>
    scf.for %i = %c0 to %c8192 step %c1 {{
      %k = arith.index_cast %i : index to i32
      %f = arith.sitofp %k : i32 to f32
      memref.store %f, %big[%i] : memref<8192xf32>
    }}
    %sum = scf.for %i = %c0 to %c24 step %c1 iter_args(%acc = %zero) -> (f32) {{
      %scratch = memref.alloc() : memref<2xf32>
      %v = memref.load %flat[%i] : memref<24xf32>
      memref.store %v, %scratch[%c1] : memref<2xf32>
      %w = memref.load %big[%i] : memref<8192xf32>
      %u = memref.load %scratch[%c1] : memref<2xf32>
      %p = arith.mulf %u, %w : f32
      memref.dealloc %scratch : memref<2xf32>
      %next = arith.addf %acc, %p : f32
      scf.yield %next : f32
    }}
    memref.store %sum, %total[] : memref<f32>
    memref.dealloc %big : memref<8192xf32>
    func.return
  }}
}}""")
    x = rng.standard_normal((6, 4)).astype(np.float32)
    out = art.run(x=x)
    np.testing.assert_array_equal(out["y"], (2 * x).reshape(4, 6))
    assert out["total"].shape == ()
    np.testing.assert_allclose(out["total"], np.dot(2 * x.ravel(), np.arange(24)), rtol=1e-6)


def test_boolean_buffer_and_scf_if(rng):
    art = compile_loops(f"""
builtin.module {{
  func.func @leaky(%x: memref<50xf32>, %y: memref<50xf32>)
      attributes {{loom.inputs = ["x"], loom.model, loom.outputs = ["y"]}} {{
{index_constants(50)}
    %zero = arith.constant 0.000000e+00 : f32
    %slope = arith.constant 1.000000e-01 : f32
    %mask = memref.alloc() : memref<50xi1>
    scf.for %i = %c0 to %c50 step %c1 {{
      %v = memref.load %x[%i] : memref<50xf32>
      %positive = arith.cmpf ogt, %v, %zero : f32
      memref.store %positive, %mask[%i] : memref<50xi1>
    }}
    scf.for %i = %c0 to %c50 step %c1 {{
      %v = memref.load %x[%i] : memref<50xf32>
      %keep = memref.load %mask[%i] : memref<50xi1>
      %r = scf.if %keep -> (f32) {{
        scf.yield %v : f32
      }} else {{
        %s = arith.mulf %v, %slope : f32
        scf.yield %s : f32
      }}
      memref.store %r, %y[%i] : memref<50xf32>
    }}
    memref.dealloc %mask : memref<50xi1>
    func.return
  }}
}}""")
    x = rng.standard_normal(50).astype(np.float32)
    np.testing.assert_array_equal(art.run(x=x)["y"], np.where(x > 0, x, x * np.float32(0.1)))


def test_report_describes_the_compilation(rng):
    art = compile_loops(matmul_module(2, 3, 4, np.ones((3, 4), np.float32)))
    art.run(x=np.ones((2, 3), np.float32))
    report = art.report
    assert report["target"] == "cpu"
    assert report["compile_time_s"] > 0
    assert report["llvm_ir_bytes"] > 0
    assert report["target_triple"] and report["cpu"]
    assert report["wall_time_s"] >= 0


def test_unsupported_op_is_an_internal_error():
    text = elementwise_module("bits", "i32", 4, """
      %n = math.ctpop %xv : i32
      memref.store %n, %y[%i] : memref<4xi32>""")
    with pytest.raises(InternalError, match="cpu backend: unsupported op math.ctpop"):
        compile_loops(text)


def test_functions_with_results_are_rejected():
    module = parse_loops("""
builtin.module {
  func.func @f(%x: memref<2xf32>) -> memref<2xf32>
      attributes {loom.inputs = ["x"], loom.model, loom.outputs = ["y"]} {
    func.return %x : memref<2xf32>
  }
}""")
    spec = TensorSpec("x", (2,), "f32")
    signature = ModelSignature("f", (spec,), (TensorSpec("y", (2,), "f32"),))
    with pytest.raises(InternalError, match="destination-passing"):
        CpuBackend().build(module, signature, CompileOptions())
