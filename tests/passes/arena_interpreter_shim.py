"""Runs arena-planned IR on xDSL's interpreter, optionally poisoning dead buffers.

Adds `memref.view` to xdsl_interpreter_shim: a typed window at a byte offset
into an i8 arena, sharing its memory, as the CPU backend lowers it.

`PoisonDeadBuffers` is an interpreter listener that overwrites memory with
0xFF bytes (a NaN in every float type, -1 in every integer type) wherever
the program must not rely on it any more: the whole arena when it is
allocated, each planned buffer when its view is created, and each planned
buffer again at the top-level position where it was freed before planning.
A plan that lets two buffers share bytes while both are in use then
produces NaNs or wrong integers instead of passing by luck.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from xdsl.dialects import func, memref
from xdsl.dialects.builtin import IntegerAttr, MemRefType, ModuleOp, i64
from xdsl.interpreter import Interpreter, InterpreterFunctions, PythonValues, impl, register_impls
from xdsl.interpreters.builtin import xtype_for_el_type
from xdsl.interpreters.shaped_array import ShapedArray
from xdsl.interpreters.utils.ptr import TypedPtr
from xdsl.ir import Operation

from dialects import nn
from xdsl_interpreter_shim import from_shaped, make_interpreter, to_shaped

POISON = 0xFF
STEP_ATTR = "test.step"


@register_impls
class ArenaViewFunctions(InterpreterFunctions):
    @impl(memref.ViewOp)
    def run_view(self, interpreter: Interpreter, op: memref.ViewOp, args: PythonValues):
        arena, shift = args[0], args[1]
        t = op.result.type
        assert isinstance(t, MemRefType)
        window = TypedPtr(arena.data_ptr.raw + shift, xtype=xtype_for_el_type(t.element_type, interpreter.index_bitwidth))
        return (ShapedArray(window, list(t.get_shape())),)


def _fill(shaped: ShapedArray[Any], byte: int) -> None:
    raw = shaped.data_ptr.raw
    size = shaped.size * shaped.data_ptr.size
    raw.memory[raw.offset : raw.offset + size] = bytes([byte]) * size


def mark_steps(function: func.FuncOp) -> list[int]:
    """Tag every top-level op with its position; return the positions of
    the deallocations of the top-level allocations, in allocation order."""
    ops = list(function.body.block.ops)
    for step, op in enumerate(ops):
        op.attributes[STEP_ATTR] = IntegerAttr(step, i64)
    frees = []
    for op in ops:
        if isinstance(op, memref.AllocOp):
            (dealloc,) = [u.operation for u in op.memref.uses if isinstance(u.operation, memref.DeallocOp)]
            frees.append(ops.index(dealloc))
    return frees


class PoisonDeadBuffers(Interpreter.Listener):
    """See the module docstring. `frees[k]` is the step (from `mark_steps`)
    at which the buffer behind the k-th view was freed before planning."""

    def __init__(self, frees: Sequence[int]):
        self.frees = list(frees)
        self.views: list[ShapedArray[Any]] = []
        self.poisoned: set[int] = set()

    def will_interpret_op(self, op: Operation, args: PythonValues) -> None:
        step = op.attributes.get(STEP_ATTR)
        if not isinstance(step, IntegerAttr):
            return
        for k, view in enumerate(self.views):
            if k not in self.poisoned and self.frees[k] < step.value.data:
                _fill(view, POISON)
                self.poisoned.add(k)

    def did_interpret_op(self, op: Operation, results: PythonValues) -> None:
        if isinstance(op, memref.ViewOp):
            self.views.append(results[0])
            _fill(results[0], POISON)
        elif isinstance(op, memref.AllocOp) and any(isinstance(u.operation, memref.ViewOp) for u in op.memref.uses):
            _fill(results[0], POISON)

    def all_freed(self) -> bool:
        return len(self.poisoned) == len(self.frees) == len(self.views)


def run(module: ModuleOp, inputs: Sequence[np.ndarray], listeners: Sequence[Interpreter.Listener] = ()) -> list[np.ndarray]:
    """Run the destination-passing model function of `module` on `inputs`."""
    function = next(op for op in module.ops if isinstance(op, func.FuncOp))
    types = [arg.type for arg in function.body.block.args]
    assert all(isinstance(t, MemRefType) for t in types)
    arguments = [to_shaped(a, t.element_type) for a, t in zip(inputs, types)]
    outputs = [to_shaped(np.zeros(t.get_shape(), nn.numpy_dtype(t.element_type)), t.element_type) for t in types[len(inputs) :]]
    interpreter = make_interpreter(module)
    interpreter.register_implementations(ArenaViewFunctions())
    interpreter.listeners = tuple(listeners)
    interpreter.call_op(function.sym_name.data, tuple(arguments + outputs))
    return [from_shaped(o, nn.numpy_dtype(t.element_type)) for o, t in zip(outputs, types[len(inputs) :])]
