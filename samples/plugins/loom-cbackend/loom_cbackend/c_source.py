"""Loop-level IR -> one C file.

The `c` target's pipeline leaves the module in the shape the built-in CPU
backend consumes: `memref.global`s holding the weights and one `func.func`
in destination-passing style (input buffers, then output buffers, no
results) whose body is `scf.for` loops over `memref.load`/`memref.store` and
scalar `arith`/`math` ops. Each of those has a direct C counterpart:

    memref.global            a static array (const when the global is)
    func.func arguments      pointers, inputs first, then outputs
    memref.alloc / dealloc   malloc / free
    memref.load / store      buffer[linear index]
    scf.for                  a for loop; iter_args are variables updated at the end of each iteration
    arith / math             C operators and <math.h> calls

Every memref has a static shape and the identity layout, so the element
`m[i, j]` of a `memref<AxBxf32>` is `m[i * B + j]`. Every SSA value becomes
a `const` local assigned once, which keeps the translation one line per op
and leaves register allocation to the C compiler.
"""

from __future__ import annotations

import math as pymath
import re
from collections.abc import Sequence

import numpy as np
from xdsl.dialects import arith, func, math, memref, scf
from xdsl.dialects.builtin import (
    Float32Type,
    FloatAttr,
    IndexType,
    IntegerAttr,
    IntegerType,
    MemRefType,
    ModuleOp,
    NoneAttr,
    UnitAttr,
)
from xdsl.ir import Attribute, Block, Operation, SSAValue

from compiler.artifact import ModelSignature
from compiler.diagnostics import LoomError
from compiler.model import find_model
from dialects.nn import array_from_dense

PRELUDE = """\
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* arith.maximumf/minimumf return NaN when either operand is NaN; fmaxf/fminf would drop it. */
static inline float maximumf(float a, float b) { return isnan(a) || isnan(b) ? NAN : fmaxf(a, b); }
static inline float minimumf(float a, float b) { return isnan(a) || isnan(b) ? NAN : fminf(a, b); }
"""

INFIX = {arith.AddfOp: "+", arith.SubfOp: "-", arith.MulfOp: "*", arith.DivfOp: "/",
         arith.AddiOp: "+", arith.SubiOp: "-", arith.MuliOp: "*",
         arith.AndIOp: "&", arith.OrIOp: "|", arith.XOrIOp: "^"}
CALLS = {arith.MaximumfOp: "maximumf", arith.MinimumfOp: "minimumf",
         arith.MaxnumfOp: "fmaxf", arith.MinnumfOp: "fminf",
         math.ExpOp: "expf", math.LogOp: "logf", math.TanhOp: "tanhf", math.SqrtOp: "sqrtf",
         math.ErfOp: "erff", math.AbsFOp: "fabsf", math.PowFOp: "powf",
         math.FloorOp: "floorf", math.CeilOp: "ceilf"}
SIGNED_EXTREMES = {arith.MaxSIOp: ">", arith.MinSIOp: "<"}  # a > b ? a : b
PREDICATE_NAMES = {arith.CmpfOp: arith.CMPF_COMPARISON_OPERATIONS,
                   arith.CmpiOp: arith.CMPI_COMPARISON_OPERATIONS}
# Comparison predicates whose C operator means the same thing. The unsigned
# integer ones (ult, ...) and the unordered float ones (ueq, ...) have none.
COMPARISONS = {"oeq": "==", "olt": "<", "ole": "<=", "ogt": ">", "oge": ">=", "une": "!=",
               "eq": "==", "ne": "!=", "slt": "<", "sle": "<=", "sgt": ">", "sge": ">="}
# Casts that C's own conversions perform exactly as arith defines them, i1
# aside: C turns a nonzero value into true where trunci keeps the low bit.
CASTS = (arith.IndexCastOp, arith.SIToFPOp, arith.FPToSIOp, arith.ExtSIOp, arith.TruncIOp)


def unsupported(op: Operation, detail: str = "") -> LoomError:
    return LoomError(f"the c target cannot translate {op.name}{': ' + detail if detail else ''}")


def c_type(t: Attribute, op: Operation) -> str:
    if isinstance(t, Float32Type):
        return "float"
    if isinstance(t, IndexType):
        return "int64_t"
    if isinstance(t, IntegerType) and t.width.data in (1, 8, 32):
        return {1: "bool", 8: "int8_t", 32: "int32_t"}[t.width.data]
    raise unsupported(op, f"{t} values (it handles f32, i32, i8 and index)")


def memref_type(t: Attribute, op: Operation) -> MemRefType:
    static = isinstance(t, MemRefType) and all(d >= 0 for d in t.get_shape())
    if not static or not isinstance(t.layout, NoneAttr):
        raise unsupported(op, f"{t} is not a statically shaped memref with the identity layout")
    return t


def float_literal(value: float) -> str:
    """An exact C literal for an f32 value: hexadecimal, so nothing is lost to decimal rounding."""
    if pymath.isnan(value):
        return "NAN"
    if pymath.isinf(value):
        return "INFINITY" if value > 0 else "-INFINITY"
    mantissa, exponent = value.hex().split("p")
    return f"{mantissa.rstrip('0').rstrip('.')}p{exponent}f"


def scalar_literal(value: float | int, c: str) -> str:
    if c == "float":
        return float_literal(value)
    return ("true" if value else "false") if c == "bool" else str(int(value))


class Names:
    """Unique C identifiers: an IR name (or `v`) plus a serial number, so none is a C keyword."""

    def __init__(self) -> None:
        self.count = 0

    def fresh(self, hint: str | None) -> str:
        self.count += 1
        return f"{re.sub(r'[^A-Za-z0-9_]', '_', hint or 'v')}_{self.count}"


def c_array(op: memref.GlobalOp, name: str) -> str:
    t = memref_type(op.type, op)
    c = c_type(t.element_type, op)
    declaration = f"static {'const ' if op.constant else ''}{c} {name}[{max(t.element_count(), 1)}]"
    values = None if isinstance(op.initial_value, UnitAttr) else array_from_dense(op.initial_value).ravel()
    if values is None or not values.view(np.uint8).any():
        return declaration + ";  /* static storage starts zeroed */"
    items = [scalar_literal(v, c) for v in values.tolist()]
    rows = (", ".join(items[i:i + 8]) for i in range(0, len(items), 8))
    return declaration + " = {\n    " + ",\n    ".join(rows) + ",\n};"


class FunctionWriter:
    """Writes the body of the model function, one C statement per op."""

    def __init__(self, names: Names, globals_: dict[str, str]):
        self.names = names
        self.globals = globals_
        self.values: dict[SSAValue, str] = {}
        self.lines: list[str] = []
        self.depth = 1

    def define(self, value: SSAValue, hint: str | None = None) -> str:
        self.values[value] = self.names.fresh(hint or value.name_hint)
        return self.values[value]

    def emit(self, line: str) -> None:
        self.lines.append("    " * self.depth + line)

    def element(self, buffer: SSAValue, indices: Sequence[SSAValue], op: Operation) -> str:
        """`buffer[i, j, ...]` as a C element access on the linearised index."""
        shape = memref_type(buffer.type, op).get_shape()
        terms = []
        for axis, index in enumerate(indices):
            stride = pymath.prod(shape[axis + 1:])
            terms.append(self.values[index] if stride == 1 else f"{self.values[index]} * {stride}")
        return f"{self.values[buffer]}[{' + '.join(terms) or '0'}]"

    def block(self, block: Block) -> None:
        for op in block.ops:
            if not isinstance(op, scf.YieldOp | func.ReturnOp):  # scf.for handles its yield
                self.op(op)

    def op(self, op: Operation) -> None:
        if isinstance(op, scf.ForOp):
            self.loop(op)
        elif isinstance(op, memref.StoreOp):
            self.emit(f"{self.element(op.memref, op.indices, op)} = {self.values[op.value]};")
        elif isinstance(op, memref.AllocOp):
            t = memref_type(op.memref.type, op)
            c = c_type(t.element_type, op)
            self.emit(f"{c} *{self.define(op.memref)} = malloc(sizeof({c}) * {max(t.element_count(), 1)});")
        elif isinstance(op, memref.DeallocOp):
            self.emit(f"free({self.values[op.memref]});")
        elif isinstance(op, memref.CopyOp):
            t = memref_type(op.source.type, op)
            size = f"sizeof({c_type(t.element_type, op)}) * {t.element_count()}"
            self.emit(f"memcpy({self.values[op.destination]}, {self.values[op.source]}, {size});")
        elif isinstance(op, memref.GetGlobalOp | memref.CollapseShapeOp | memref.ExpandShapeOp):
            # A new view of existing storage: the same pointer under a new name.
            c = c_type(memref_type(op.results[0].type, op).element_type, op)
            source = (f"({c} *){self.globals[op.name_.root_reference.data]}"
                      if isinstance(op, memref.GetGlobalOp) else self.values[op.operands[0]])
            self.emit(f"{c} *{self.define(op.results[0])} = {source};")
        elif len(op.results) == 1:
            c = c_type(op.results[0].type, op)
            expression = self.expression(op)
            self.emit(f"const {c} {self.define(op.results[0])} = {expression};")
        else:
            raise unsupported(op)

    def expression(self, op: Operation) -> str:
        """The C expression computing the single result of a scalar op."""
        args = [self.values[v] for v in op.operands]
        if type(op) in INFIX:
            return f"{args[0]} {INFIX[type(op)]} {args[1]}"
        if type(op) in CALLS:
            return f"{CALLS[type(op)]}({', '.join(args)})"
        if isinstance(op, arith.ConstantOp) and isinstance(op.value, IntegerAttr | FloatAttr):
            return scalar_literal(op.value.value.data, c_type(op.result.type, op))
        if isinstance(op, memref.LoadOp):
            return self.element(op.memref, op.indices, op)
        if isinstance(op, arith.CmpfOp | arith.CmpiOp):
            predicate = PREDICATE_NAMES[type(op)][op.predicate.value.data]
            if predicate not in COMPARISONS:
                raise unsupported(op, f"predicate {predicate}")
            return f"{args[0]} {COMPARISONS[predicate]} {args[1]}"
        if isinstance(op, arith.SelectOp):
            return f"{args[0]} ? {args[1]} : {args[2]}"
        if type(op) in SIGNED_EXTREMES:
            return f"{args[0]} {SIGNED_EXTREMES[type(op)]} {args[1]} ? {args[0]} : {args[1]}"
        if isinstance(op, arith.NegfOp):
            return f"-{args[0]}"
        if isinstance(op, math.RsqrtOp):
            return f"1.0f / sqrtf({args[0]})"
        if isinstance(op, CASTS):
            source, target = c_type(op.operands[0].type, op), c_type(op.results[0].type, op)
            if "bool" not in (source, target):
                return f"({target}){args[0]}"
        raise unsupported(op)

    def loop(self, op: scf.ForOp) -> None:
        """`scf.for`; each loop-carried value is a variable declared before the loop."""
        body = op.body.block
        carried = [self.define(result, argument.name_hint)
                   for result, argument in zip(op.results, body.args[1:])]
        types = [c_type(result.type, op) for result in op.results]
        for name, c, initial in zip(carried, types, op.iter_args):
            self.emit(f"{c} {name} = {self.values[initial]};")
        for argument, name in zip(body.args[1:], carried):
            self.values[argument] = name
        i = self.define(body.args[0], "i")
        lower, upper, step = (self.values[v] for v in (op.lb, op.ub, op.step))
        self.emit(f"for ({c_type(op.lb.type, op)} {i} = {lower}; {i} < {upper}; {i} += {step}) {{")
        self.depth += 1
        self.block(body)
        # Read every yielded value before assigning any: a yield may swap carried values.
        yielded = body.last_op.operands if body.last_op else ()
        following = [self.names.fresh("next") for _ in carried]
        for name, c, value in zip(following, types, yielded):
            self.emit(f"const {c} {name} = {self.values[value]};")
        for name, value in zip(carried, following):
            self.emit(f"{name} = {value};")
        self.depth -= 1
        self.emit("}")


def entry_name(model: str) -> str:
    return "loom_" + re.sub(r"[^A-Za-z0-9_]", "_", model)


def translate_to_c(module: ModuleOp, signature: ModelSignature) -> str:
    """The C translation of the one loop-level model in `module`."""
    model = find_model(module, signature.name)
    names = Names()
    globals_: dict[str, str] = {}
    arrays = []
    for op in module.ops:
        if isinstance(op, memref.GlobalOp):
            globals_[op.sym_name.data] = names.fresh(op.sym_name.data)
            arrays.append(c_array(op, globals_[op.sym_name.data]))
        elif op is not model:
            raise unsupported(op, "at module level")
    if model.function_type.outputs.data:
        raise unsupported(model, "it returns results instead of writing its outputs into buffer arguments")

    writer = FunctionWriter(names, globals_)
    parameters = []
    for argument, spec in zip(model.body.block.args, signature.inputs + signature.outputs):
        c = c_type(memref_type(argument.type, model).element_type, model)
        parameters.append(f"{c} *{writer.define(argument, spec.name)}")
    writer.block(model.body.block)
    return "\n".join([
        f"/* Model {signature.name}, translated from loop-level IR by the loom `c` target.",
        "   Arguments: the inputs, then the outputs, each a dense row-major buffer. */",
        PRELUDE,
        *arrays,
        "",
        f"void {entry_name(signature.name)}({', '.join(parameters)}) {{",
        *writer.lines,
        "}",
        "",
    ])
