"""Runs lowered Loom IR on xDSL's interpreter.

xDSL's interpreter covers most of what the lowering emits; this module adds
the rest (f16/bf16 truncation, integer extension and truncation, divf, negf,
maxsi, tanh, memref views and copies) and replaces its `linalg.generic` and
`linalg.fill`, which know neither `linalg.index` nor scalar fill values.
Floats are Python floats between ops and are rounded to their type when
truncated or stored, which is what f32 code does up to the last bit.
"""

from __future__ import annotations

import math
from itertools import product
from typing import Any

import numpy as np
from xdsl.dialects import arith, memref
from xdsl.dialects.linalg import ops as linalg
from xdsl.dialects import math as xmath
from xdsl.dialects.builtin import BFloat16Type, Float16Type, Float32Type, IntegerType, MemRefType, ModuleOp
from xdsl.interpreter import (
    Interpreter,
    InterpreterFunctions,
    PythonValues,
    impl,
    register_impls,
)
from xdsl.interpreters.arith import ArithFunctions
from xdsl.interpreters.builtin import BuiltinFunctions
from xdsl.interpreters.func import FuncFunctions
from xdsl.interpreters.linalg import LinalgFunctions
from xdsl.interpreters.math import MathFunctions
from xdsl.interpreters.memref import MemRefFunctions
from xdsl.interpreters.scf import ScfFunctions
from xdsl.interpreters.shaped_array import ShapedArray
from xdsl.interpreters.utils.ptr import TypedPtr

from dialects.nn import round_to_bf16


def round_float(value: float, t: Any) -> float:
    """`value` rounded to float type `t`."""
    if isinstance(t, Float16Type):
        return float(np.float16(value))
    if isinstance(t, BFloat16Type):
        return float(round_to_bf16(np.array([value], dtype=np.float32))[0])
    if isinstance(t, Float32Type):
        return float(np.float32(value))
    return value


def wrap_int(value: int, width: int) -> int:
    """`value` wrapped to a signed `width`-bit integer."""
    value &= (1 << width) - 1
    return value - (1 << width) if value >> (width - 1) else value


@register_impls
class LoomShimFunctions(InterpreterFunctions):
    def __init__(self):
        self._indices: list[tuple[int, ...]] = []

    @impl(arith.DivfOp)
    def run_divf(self, interpreter: Interpreter, op: arith.DivfOp, args: PythonValues):
        lhs, rhs = args
        if rhs == 0:
            return (math.copysign(math.inf, lhs) * math.copysign(1, rhs) if lhs else math.nan,)
        return (lhs / rhs,)

    @impl(arith.NegfOp)
    def run_negf(self, interpreter: Interpreter, op: arith.NegfOp, args: PythonValues):
        return (-args[0],)

    @impl(arith.ExtFOp)
    def run_extf(self, interpreter: Interpreter, op: arith.ExtFOp, args: PythonValues):
        return (args[0],)

    @impl(arith.TruncFOp)
    def run_truncf(self, interpreter: Interpreter, op: arith.TruncFOp, args: PythonValues):
        return (round_float(args[0], op.result.type),)

    @impl(arith.ExtSIOp)
    def run_extsi(self, interpreter: Interpreter, op: arith.ExtSIOp, args: PythonValues):
        return (args[0],)

    @impl(arith.TruncIOp)
    def run_trunci(self, interpreter: Interpreter, op: arith.TruncIOp, args: PythonValues):
        t = op.result.type
        assert isinstance(t, IntegerType)
        return (wrap_int(args[0], t.width.data),)

    @impl(arith.MaxSIOp)
    def run_maxsi(self, interpreter: Interpreter, op: arith.MaxSIOp, args: PythonValues):
        return (max(args),)

    @impl(xmath.TanhOp)
    def run_tanh(self, interpreter: Interpreter, op: xmath.TanhOp, args: PythonValues):
        return (math.tanh(args[0]),)

    @impl(memref.CopyOp)
    def run_copy(self, interpreter: Interpreter, op: memref.CopyOp, args: PythonValues):
        source, destination = args
        for index in source.indices():
            destination.store(index, source.load(index))
        return ()

    @impl(memref.CollapseShapeOp)
    def run_collapse_shape(self, interpreter: Interpreter, op: memref.CollapseShapeOp, args: PythonValues):
        return (_view(args[0], op.result.type),)

    @impl(memref.ExpandShapeOp)
    def run_expand_shape(self, interpreter: Interpreter, op: memref.ExpandShapeOp, args: PythonValues):
        return (_view(args[0], op.result.type),)

    @impl(linalg.IndexOp)
    def run_index(self, interpreter: Interpreter, op: linalg.IndexOp, args: PythonValues):
        return (self._indices[-1][op.dim.value.data],)

    @impl(linalg.FillOp)
    def run_fill(self, interpreter: Interpreter, op: linalg.FillOp, args: PythonValues):
        value, out = args
        for index in out.indices():
            out.store(index, value)
        return ()

    @impl(linalg.GenericOp)
    def run_generic(self, interpreter: Interpreter, op: linalg.GenericOp, args: PythonValues):
        assert not op.res, "the shim runs bufferized linalg only"
        maps = [m.data for m in op.indexing_maps]
        ranges = op.get_static_loop_ranges()
        outputs = args[len(op.inputs) :]
        output_maps = maps[len(op.inputs) :]
        for indices in product(*(range(r) for r in ranges)):
            loaded = [
                a.load(m.eval(indices, ())) if isinstance(a, ShapedArray) else a
                for a, m in zip(args, maps, strict=True)
            ]
            self._indices.append(indices)
            results = interpreter.run_ssacfg_region(op.body, tuple(loaded), "linalg.generic")
            self._indices.pop()
            for out, m, value in zip(outputs, output_maps, results, strict=True):
                out.store(m.eval(indices, ()), value)
        return ()


def _view(source: ShapedArray[Any], t: Any) -> ShapedArray[Any]:
    """A reshaped view sharing `source`'s storage, as the memref ops are."""
    assert isinstance(t, MemRefType)
    return ShapedArray(source.data_ptr, list(t.get_shape()))


def make_interpreter(module: ModuleOp) -> Interpreter:
    interpreter = Interpreter(module)
    for functions in (
        ArithFunctions(),
        BuiltinFunctions(),
        FuncFunctions(),
        LinalgFunctions(),
        MathFunctions(),
        MemRefFunctions(),
        ScfFunctions(),
    ):
        interpreter.register_implementations(functions)
    interpreter.register_implementations(LoomShimFunctions(), override=True)
    return interpreter


def to_shaped(array: np.ndarray, element_type: Any) -> ShapedArray[Any]:
    values = [v.item() for v in np.asarray(array).reshape(-1)]
    return ShapedArray(TypedPtr.new(values, xtype=element_type), list(array.shape))


def from_shaped(shaped: ShapedArray[Any], dtype: np.dtype) -> np.ndarray:
    return np.array(shaped.data, dtype=dtype).reshape(shaped.shape)


def call(module: ModuleOp, name: str, arguments: list[ShapedArray[Any]]) -> None:
    """Call destination-passing function `name`; outputs are written into `arguments`."""
    make_interpreter(module).call_op(name, tuple(arguments))
