"""Translate a loop-level model module straight into LLVM IR (llvmlite).

The CPU pipeline leaves a module made of `memref.global` constants and one
destination-passing `func.func` whose body uses only scf loops, memref and
vector accesses and arith/math scalars. That module is printed here as LLVM IR
directly rather than being lowered to xDSL's `llvm` dialect first: xDSL has
no arith/func/cf-to-llvm conversions to build on, and emitting by hand is
what lets us state the facts LLVM needs to vectorise — `noalias`, alignment
and dereferenceable sizes on every buffer, `nsw` index arithmetic — and pick
fast-math flags per instruction.

Representation choices:

* A memref is a bare pointer to its first element. Shapes and strides are
  static, so every access becomes one `getelementptr` on a linear offset;
  `collapse_shape`/`expand_shape` reuse the pointer, a `subview` (offsets
  from loop variables, static sizes and strides) and a `view` into a byte
  arena advance it.
* Vectors are LLVM vectors; `vector.fma` is the `llvm.fma` intrinsic and
  masked loads and stores are `llvm.masked.load`/`llvm.masked.store`.
* A loop marked `loom.parallel` is outlined into a task function and run
  by `backends.cpu.runtime.parallel_for` over the model's threads.
* f16 values live in registers as `half`; bf16 values as `float` holding a
  value exactly representable in bf16 and in memory as its upper 16 bits
  (`i16`), so no LLVM bfloat support is needed. Arithmetic on either narrow
  type runs in f32 and rounds the result once (round-to-nearest-even).
* i1 is stored as one byte.
* Float arithmetic carries `contract` (so `a*b+c` may become an FMA, which
  only removes a rounding step) plus whatever flags the op itself declares.
  Reassociation is never implied: only the additions `vectorize` marks
  (those accumulating float sums) may be reordered.
* Integer division by zero yields 0 and `INT_MIN / -1` wraps, as in numpy,
  instead of trapping and taking the host process down.
"""

from __future__ import annotations

import math as pymath
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from llvmlite import ir
from xdsl.dialects import arith, func, math, memref, scf, vector
from xdsl.dialects.builtin import (
    DYNAMIC_INDEX,
    BFloat16Type,
    DenseIntOrFPElementsAttr,
    Float16Type,
    Float32Type,
    Float64Type,
    FloatAttr,
    IndexType,
    IntegerAttr,
    IntegerType,
    MemRefType,
    ModuleOp,
    NoneAttr,
    UnitAttr,
    VectorType,
)
from xdsl.ir import Attribute, Block, Operation, SSAValue

from backends.cpu.abi import ALIGNMENT, entry_symbol, packed_entry_symbol, parameter_names
from backends.cpu.runtime import TASK_TYPE, AddressOf, opaque, parallel_for
from compiler.artifact import ModelSignature
from compiler.diagnostics import InternalError
from compiler.model import models
from dialects.nn import round_to_bf16
from passes.tile import PARALLEL_ATTR

# Buffers allocated at the top level of the model live on the stack while
# each is at most STACK_BUFFER_LIMIT bytes and together they fit in
# STACK_BUDGET; larger ones, and any allocated inside a loop, come from the heap.
STACK_BUFFER_LIMIT = 16 * 1024
STACK_BUDGET = 256 * 1024

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I16 = ir.IntType(16)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
F16 = ir.HalfType()
F32 = ir.FloatType()
F64 = ir.DoubleType()
PTR = ir.PointerType()


def unsupported(what: str) -> InternalError:
    return InternalError(f"cpu backend: unsupported op {what}")


# --------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------


def register_type(t: Attribute) -> ir.Type:
    """The LLVM type an SSA value of type `t` is held in."""
    if isinstance(t, IndexType):
        return I64
    if isinstance(t, IntegerType):
        return ir.IntType(t.width.data)
    if isinstance(t, Float16Type):
        return F16
    if isinstance(t, Float32Type | BFloat16Type):
        return F32
    if isinstance(t, Float64Type):
        return F64
    if isinstance(t, VectorType) and t.get_num_dims() == 1:
        return ir.VectorType(register_type(t.element_type), t.get_shape()[0])
    raise InternalError(f"cpu backend: unsupported element type {t}")


def storage_type(t: Attribute) -> ir.Type:
    """The LLVM type one memref element of type `t` occupies in memory."""
    if isinstance(t, BFloat16Type):
        return I16
    if isinstance(t, IntegerType) and t.width.data == 1:
        return I8
    return register_type(t)


FLOAT_BYTES = {F16: 2, F32: 4, F64: 8}


def storage_size(t: Attribute) -> int:
    storage = storage_type(t)
    return storage.width // 8 if isinstance(storage, ir.IntType) else FLOAT_BYTES[storage]


def is_narrow_float(t: Attribute) -> bool:
    return isinstance(t, Float16Type | BFloat16Type)


def memref_bytes(t: MemRefType) -> int:
    return pymath.prod(t.get_shape()) * storage_size(t.element_type)


def identity_strides(shape: Sequence[int]) -> list[int]:
    strides, running = [], 1
    for size in reversed(shape):
        strides.append(running)
        running *= size
    return strides[::-1]


def check_memref(t: Attribute) -> MemRefType:
    """`t`, if it is a statically shaped memref with static strides."""
    if not isinstance(t, MemRefType) or any(d < 0 for d in t.get_shape()):
        raise InternalError(f"cpu backend: expected a statically shaped memref, got {t}")
    strides = t.get_strides()
    if strides is None or any(stride is None for stride in strides):
        raise InternalError(f"cpu backend: only layouts with static strides are supported, got {t}")
    return t


def check_dense(t: Attribute) -> MemRefType:
    """`t`, if it is a memref laid out densely in row-major order."""
    t = check_memref(t)
    if not isinstance(t.layout, NoneAttr) and tuple(t.get_strides()) != tuple(identity_strides(t.get_shape())):
        raise InternalError(f"cpu backend: expected a dense row-major memref, got {t}")
    return t


# --------------------------------------------------------------------------
# Globals
# --------------------------------------------------------------------------


def _bytes_literal(data: bytes) -> str:
    """`data` as an LLVM `c"..."` literal, built without a per-byte Python loop."""
    hex_digits = np.frombuffer(data.hex().encode(), dtype=np.uint8).reshape(-1, 2)
    escaped = np.empty((len(data), 3), dtype=np.uint8)
    escaped[:, 0] = ord("\\")
    escaped[:, 1:] = hex_digits
    return f'c"{escaped.tobytes().decode()}"'


def global_bytes(op: memref.GlobalOp) -> bytes | None:
    """The initial contents of a global in storage layout; None means all zero."""
    t = check_dense(op.type)
    value = op.initial_value
    if isinstance(value, UnitAttr):
        return None
    assert isinstance(value, DenseIntOrFPElementsAttr)
    data = value.data.data
    size = memref_bytes(t)
    if len(data) != size:  # a splat stores its single element once
        data = data * (size // len(data))
    if storage_type(t.element_type) == I8 and register_type(t.element_type) == I1:
        data = (np.frombuffer(data, dtype=np.uint8) != 0).astype(np.uint8).tobytes()
    if not any(data):
        return None
    return data


def declare_global(module: ir.Module, op: memref.GlobalOp) -> ir.GlobalVariable:
    size = memref_bytes(check_dense(op.type))
    array = ir.ArrayType(I8, size)
    variable = ir.GlobalVariable(module, array, name=f"const.{op.sym_name.data}")
    data = global_bytes(op)
    variable.initializer = (
        ir.Constant(array, None) if data is None else ir.FormattedConstant(array, _bytes_literal(data))
    )
    variable.global_constant = op.constant is not None
    variable.linkage = "private"
    variable.unnamed_addr = True
    variable.align = ALIGNMENT
    return opaque(variable)


# --------------------------------------------------------------------------
# Function bodies
# --------------------------------------------------------------------------


Span = tuple[int, int]
"""Bytes [start, stop) of a buffer's root storage."""


@dataclass(frozen=True)
class Buffer:
    """A memref value: where its first element is, how it is shaped and laid
    out, and which storage it is (a view of): `root` identifies an argument,
    allocation or global, so that buffers on different roots never alias,
    and `span` the bytes of the root it may touch, when known."""

    pointer: ir.Value
    type: MemRefType
    root: object
    span: Span | None
    on_stack: bool = False
    aligned: bool = True  # the pointer is ALIGNMENT-aligned

    @property
    def element_type(self) -> Attribute:
        return self.type.element_type

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(self.type.get_strides())

    def view(self, pointer: ir.Value, t: MemRefType, aligned: bool) -> Buffer:
        """A buffer on the same storage and within this one's bytes (a subview or reshape)."""
        return replace(self, pointer=pointer, type=check_memref(t), aligned=aligned and self.aligned)

    def carve(self, pointer: ir.Value, t: MemRefType, shift: int | None) -> Buffer:
        """The buffer `shift` bytes into this one (None: an offset known only at run time)."""
        known = shift is not None and self.span is not None
        span = (self.span[0] + shift, self.span[0] + shift + memref_bytes(t)) if known else None
        aligned = shift is not None and shift % ALIGNMENT == 0 and self.aligned
        return replace(self, pointer=pointer, type=t, span=span, aligned=aligned)


def whole(t: MemRefType) -> Span:
    return (0, memref_bytes(t))


class AliasScopes:
    """Scoped alias metadata for buffers carved from one storage at known,
    disjoint byte ranges — the arena `plan-memory` builds. LLVM cannot prove
    that offsets into one allocation do not meet, so without it a loop
    reading one arena buffer and writing another keeps every accumulator in
    memory and vectorises behind run-time overlap checks, if at all.

    Accesses are collected while functions are emitted and annotated at the
    end, once every range is known: each range of a root is a scope, and an
    access is declared not to alias the ranges of its root disjoint from
    its own. Overlapping ranges (bytes reused by buffers live at different
    times) stay may-alias.
    """

    def __init__(self) -> None:
        self.accesses: list[tuple[ir.Instruction, object, Span]] = []

    def record(self, instruction: ir.Instruction, buffer: Buffer) -> None:
        if buffer.span is not None:
            self.accesses.append((instruction, buffer.root, buffer.span))

    def attach(self, module: ir.Module) -> None:
        spans: dict[object, dict[Span, ir.MDValue]] = {}
        for _, root, span in self.accesses:
            spans.setdefault(root, {})[span] = None
        carved = [ranges for ranges in spans.values() if len(ranges) > 1]
        if not carved:
            return
        domain = module.add_metadata([ir.MetaDataString(module, "loom.buffers")])
        for index, ranges in enumerate(carved):
            for start, stop in ranges:
                name = ir.MetaDataString(module, f"loom.buffer.{index}.{start}.{stop}")
                ranges[start, stop] = module.add_metadata([name, domain])
        for instruction, root, (start, stop) in self.accesses:
            ranges = spans[root]
            apart = [scope for (low, high), scope in ranges.items() if high <= start or stop <= low]
            if apart:
                instruction.set_metadata("alias.scope", module.add_metadata([ranges[start, stop]]))
                instruction.set_metadata("noalias", module.add_metadata(apart))


def captured_values(loop: scf.ForOp) -> list[SSAValue]:
    """The values defined outside `loop` that its body (or its step) uses, in first-use order."""
    inside: set[SSAValue] = set()
    for nested in loop.walk():
        inside.update(nested.results)
        for region in nested.regions:
            for block in region.blocks:
                inside.update(block.args)
    used = [loop.step] + [v for nested in loop.body.walk() for v in nested.operands]
    return [v for v in dict.fromkeys(used) if v not in inside]


def describe_pointer(argument: ir.Argument, buffer: Buffer, unique: bool) -> None:
    """Attributes of a pointer argument of an outlined loop."""
    for attribute in ("noalias",) * unique + ("nonnull", "noundef"):
        argument.add_attribute(attribute)
    if buffer.aligned:
        argument.attributes.align = ALIGNMENT
        if isinstance(buffer.type.layout, NoneAttr):
            argument.attributes.dereferenceable = max(memref_bytes(buffer.type), 1)


def intrinsic_suffix(t: ir.Type) -> str:
    """How LLVM names an overload of an intrinsic for type `t` (f32, i64, v16f32...)."""
    if isinstance(t, ir.VectorType):
        return f"v{t.count}{intrinsic_suffix(t.element)}"
    return {F16: "f16", F32: "f32", F64: "f64"}.get(t) or f"i{t.width}"


VectorAccess = vector.LoadOp | vector.StoreOp | vector.MaskedLoadOp | vector.MaskedStoreOp

_handlers: dict[type[Operation], Callable[[FunctionEmitter, Operation], None]] = {}


def handles(*op_types: type[Operation]):
    def register(method):
        for op_type in op_types:
            _handlers[op_type] = method
        return method

    return register


FLOAT_BINARY = {arith.AddfOp: "fadd", arith.SubfOp: "fsub", arith.MulfOp: "fmul",
                arith.DivfOp: "fdiv"}
# Float ops that become calls: to an LLVM intrinsic (named llvm.*) or, where
# LLVM has none, to the C maths library (float or double variant).
FLOAT_CALLS = {arith.MaximumfOp: "llvm.maximum", arith.MinimumfOp: "llvm.minimum",
               arith.MaxnumfOp: "llvm.maxnum", arith.MinnumfOp: "llvm.minnum",
               math.PowFOp: "llvm.pow", math.CopySignOp: "llvm.copysign", math.FmaOp: "llvm.fma",
               math.ExpOp: "llvm.exp", math.Exp2Op: "llvm.exp2", math.LogOp: "llvm.log",
               math.Log2Op: "llvm.log2", math.Log10Op: "llvm.log10", math.SqrtOp: "llvm.sqrt",
               math.AbsFOp: "llvm.fabs", math.FloorOp: "llvm.floor", math.CeilOp: "llvm.ceil",
               math.RoundOp: "llvm.round", math.RoundEvenOp: "llvm.roundeven",
               math.TruncOp: "llvm.trunc", math.SinOp: "llvm.sin", math.CosOp: "llvm.cos",
               math.TanhOp: "tanh", math.ErfOp: "erf", math.ExpM1Op: "expm1",
               math.Log1pOp: "log1p", math.TanOp: "tan", math.AtanOp: "atan",
               math.Atan2Op: "atan2", math.SinhOp: "sinh", math.CoshOp: "cosh",
               math.AsinOp: "asin", math.AcosOp: "acos", math.AsinhOp: "asinh",
               math.AcoshOp: "acosh", math.AtanhOp: "atanh", math.CbrtOp: "cbrt"}
INT_BINARY = {arith.AddiOp: "add", arith.SubiOp: "sub", arith.MuliOp: "mul", arith.AndIOp: "and_",
              arith.OrIOp: "or_", arith.XOrIOp: "xor", arith.ShLIOp: "shl",
              arith.ShRSIOp: "ashr", arith.ShRUIOp: "lshr"}
INT_BINARY_INTRINSIC = {arith.MaxSIOp: "llvm.smax", arith.MinSIOp: "llvm.smin",
                        arith.MaxUIOp: "llvm.umax", arith.MinUIOp: "llvm.umin"}
# MLIR cmpi predicate -> (signed?, llvmlite comparison)
INT_PREDICATES = {"eq": (True, "=="), "ne": (True, "!="), "slt": (True, "<"), "sle": (True, "<="),
                  "sgt": (True, ">"), "sge": (True, ">="), "ult": (False, "<"), "ule": (False, "<="),
                  "ugt": (False, ">"), "uge": (False, ">=")}
LIBM_SUFFIX = {F32: "f", F64: ""}


@dataclass
class ModelContext:
    """What every function emitted for one model shares."""

    module: ir.Module
    globals_by_name: dict[str, ir.GlobalVariable]
    model: func.FuncOp
    symbol: str  # the entry point's name; outlined functions are named after it
    threads: int
    regions: int = 0  # parallel loops outlined so far
    alias_scopes: AliasScopes = field(default_factory=AliasScopes)


class FunctionEmitter:
    """Emits a model function's body, or an outlined loop of it, into an LLVM function."""

    def __init__(self, context: ModelContext, function: ir.Function, parallel: bool = True):
        self.context = context
        self.module = context.module
        self.model = context.model
        self.globals_by_name = context.globals_by_name
        self.function = function
        self.parallel = parallel and context.threads > 1
        # The entry block holds only the stack buffers, so LLVM sees fixed-size
        # frame slots; the code starts in the block after it.
        entry = function.append_basic_block("entry")
        start = function.append_basic_block("start")
        self.alloca_builder = ir.IRBuilder(entry)
        self.alloca_builder.position_before(self.alloca_builder.branch(start))
        self.builder = ir.IRBuilder(start)
        self.stack_bytes = 0
        self.values: dict[SSAValue, ir.Value | Buffer] = {}

    # ---- values -----------------------------------------------------------

    def scalar(self, value: SSAValue) -> ir.Value:
        found = self.values[value]
        assert not isinstance(found, Buffer)
        return found

    def buffer(self, value: SSAValue) -> Buffer:
        found = self.values[value]
        assert isinstance(found, Buffer)
        return found

    def bind(self, value: SSAValue, llvm_value: ir.Value | Buffer) -> None:
        self.values[value] = llvm_value

    # ---- declarations -----------------------------------------------------

    def declare(self, name: str, result: ir.Type, args: Sequence[ir.Type]) -> ir.Function:
        existing = self.module.globals.get(name)
        if existing is not None:
            return existing
        return ir.Function(self.module, ir.FunctionType(result, list(args)), name=name)

    def intrinsic(self, name: str, t: ir.Type, arity: int) -> ir.Function:
        return self.declare(f"{name}.{intrinsic_suffix(t)}", t, [t] * arity)

    def libm(self, name: str, t: ir.Type, arity: int) -> ir.Function:
        return self.declare(name + LIBM_SUFFIX[t], t, [t] * arity)

    # ---- structure ----------------------------------------------------------

    def emit_block(self, block: Block) -> list[ir.Value]:
        """Emit every op of `block` but its terminator; return the terminator's operands."""
        for op in block.ops:
            if isinstance(op, scf.YieldOp | func.ReturnOp):
                return [self.scalar(v) for v in op.operands]
            handler = _handlers.get(type(op))
            if handler is None:
                raise unsupported(op.name)
            handler(self, op)
        return []

    def emit_body(self, body: Block) -> None:
        self.emit_block(body)
        self.builder.ret_void()

    @handles(scf.ForOp)
    def _for(self, op: scf.ForOp) -> None:
        if any(isinstance(v.type, MemRefType) for v in op.iter_args):
            raise unsupported("scf.for carrying memrefs")
        if self.parallel and PARALLEL_ATTR in op.attributes and not op.iter_args:
            self.emit_parallel(op)
            return
        self.emit_loop(op, self.scalar(op.lb), self.scalar(op.ub), self.scalar(op.step))

    def emit_loop(self, op: scf.ForOp, lower: ir.Value, upper: ir.Value, step: ir.Value) -> None:
        before = self.builder.block
        header = self.function.append_basic_block("loop.header")
        body = self.function.append_basic_block("loop.body")
        done = self.function.append_basic_block("loop.exit")
        self.builder.branch(header)

        self.builder.position_at_end(header)
        induction = self.builder.phi(lower.type)
        induction.add_incoming(lower, before)
        carried = []
        for init in op.iter_args:
            phi = self.builder.phi(register_type(init.type))
            phi.add_incoming(self.scalar(init), before)
            carried.append(phi)
        self.builder.cbranch(self.builder.icmp_signed("<", induction, upper), body, done)

        self.builder.position_at_end(body)
        block = op.body.block
        self.bind(block.args[0], induction)
        for arg, phi in zip(block.args[1:], carried):
            self.bind(arg, phi)
        yielded = self.emit_block(block)
        following = self.builder.add(induction, step, flags=["nsw"])
        latch = self.builder.block
        back_edge = self.builder.branch(header)
        if any(isinstance(nested, scf.ForOp) for nested in block.walk()):
            back_edge.set_metadata("llvm.loop", self.loop_without_vectorizer())
        induction.add_incoming(following, latch)
        for phi, value in zip(carried, yielded):
            phi.add_incoming(value, latch)

        self.builder.position_at_end(done)
        for result, phi in zip(op.results, carried):
            self.bind(result, phi)

    def loop_without_vectorizer(self) -> ir.MDValue:
        """Loop metadata keeping LLVM's loop vectorizer off a loop.

        LLVM fully unrolls short inner loops before it vectorises, and then
        vectorises the loop around them along its strided dim, with gathers
        and scatters (a 6x28x28 elementwise nest runs 5x slower that way).
        Loops that nest others here are left to unrolling and to the SLP
        vectorizer, which packs the unrolled inner body along the
        contiguous dim instead. The loop ID must refer to itself, which
        llvmlite cannot express directly: the node is made unique with a
        placeholder operand and then pointed at itself.
        """
        module = self.module
        placeholder = ir.MetaDataString(module, f"loom.loop.{len(module.metadata)}")
        loop_id = module.add_metadata([placeholder])
        disable = module.add_metadata([ir.MetaDataString(module, "llvm.loop.vectorize.enable"), I1(0)])
        loop_id.operands = (loop_id, disable)
        return loop_id

    # ---- parallel loops -------------------------------------------------------

    def emit_parallel(self, op: scf.ForOp) -> None:
        """Outline the loop into a task over [lo, hi) and run it on the worker threads."""
        used = captured_values(op)
        constants = {v: self.values[v] for v in used if isinstance(self.values[v], ir.Constant)}
        captured = [v for v in used if v not in constants]
        task = self.outline(op, captured, constants)
        b = self.builder
        slots = [self.llvm_value(v) for v in captured]
        record_type = ir.LiteralStructType([slot.type for slot in slots])
        record = opaque(self.alloca_builder.alloca(record_type))
        for index, slot in enumerate(slots):
            field = b.gep(record, [I32(0), I32(index)], inbounds=True, source_etype=record_type)
            b.store(slot, field)
        lower, upper, step = self.scalar(op.lb), self.scalar(op.ub), self.scalar(op.step)
        span = b.sub(upper, lower)
        trips = b.sdiv(b.add(span, b.sub(step, I64(1))), step)
        trips = b.select(b.icmp_signed(">", trips, I64(0)), trips, I64(0))
        runner = parallel_for(self.module, self.context.threads)
        b.call(runner, [AddressOf(task), record, lower, step, trips])

    def llvm_value(self, value: SSAValue) -> ir.Value:
        found = self.values[value]
        return found.pointer if isinstance(found, Buffer) else found

    def outline(self, op: scf.ForOp, captured: list[SSAValue],
                constants: dict[SSAValue, ir.Constant]) -> ir.Function:
        """`void task(ptr record, i64 lo, i64 hi)` unpacking the captured values
        from `record` and calling `body(lo, hi, captured...)`, whose pointer
        arguments carry what LLVM needs to know about them (noalias when no
        other captured buffer shares their storage, alignment, size).
        Constants are not captured but used as they are, so LLVM still knows
        trip counts and strides inside."""
        context = self.context
        name = f"{context.symbol}.parallel.{context.regions}"
        context.regions += 1
        values = [self.values[v] for v in captured]
        types = [PTR if isinstance(v, Buffer) else v.type for v in values]
        body = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [I64, I64, *types]), name=f"{name}.body")
        body.linkage = "internal"
        body.attributes.add("nounwind")
        roots = [v.root for v in values if isinstance(v, Buffer)]
        inner = FunctionEmitter(context, body, parallel=False)
        inner.values.update(constants)
        lo, hi = body.args[:2]
        for value, outer, arg in zip(captured, values, body.args[2:]):
            if isinstance(outer, Buffer):
                describe_pointer(arg, outer, unique=roots.count(outer.root) == 1)
                inner.bind(value, replace(outer, pointer=arg))
            else:
                inner.bind(value, arg)
        inner.emit_loop(op, lo, hi, inner.scalar(op.step))
        inner.builder.ret_void()

        task = ir.Function(self.module, TASK_TYPE, name=name)
        task.linkage = "internal"
        task.attributes.add("nounwind")
        builder = ir.IRBuilder(task.append_basic_block("entry"))
        record, lo, hi = task.args
        record_type = ir.LiteralStructType(types)
        loaded = [
            builder.load(builder.gep(record, [I32(0), I32(i)], inbounds=True, source_etype=record_type), typ=t)
            for i, t in enumerate(types)
        ]
        builder.call(body, [lo, hi, *loaded])
        builder.ret_void()
        return task

    @handles(scf.IfOp)
    def _if(self, op: scf.IfOp) -> None:
        then_block = self.function.append_basic_block("if.then")
        else_block = self.function.append_basic_block("if.else")
        merge = self.function.append_basic_block("if.end")
        self.builder.cbranch(self.scalar(op.cond), then_block, else_block)
        incoming = []
        for llvm_block, region in ((then_block, op.true_region), (else_block, op.false_region)):
            self.builder.position_at_end(llvm_block)
            yielded = self.emit_block(region.block) if region.blocks else []
            incoming.append((yielded, self.builder.block))
            self.builder.branch(merge)
        self.builder.position_at_end(merge)
        for index, result in enumerate(op.results):
            phi = self.builder.phi(register_type(result.type))
            for yielded, block in incoming:
                phi.add_incoming(yielded[index], block)
            self.bind(result, phi)

    # ---- memory ---------------------------------------------------------------

    def element_pointer(self, buffer: Buffer, indices: Sequence[SSAValue | ir.Value]) -> ir.Value:
        offset = None
        for index, stride in zip(indices, buffer.strides):
            term = index if isinstance(index, ir.Value) else self.scalar(index)
            if stride != 1:
                term = self.builder.mul(term, I64(stride), flags=["nsw", "nuw"])
            offset = term if offset is None else self.builder.add(offset, term, flags=["nsw", "nuw"])
        if offset is None:
            return buffer.pointer
        return self.builder.gep(buffer.pointer, [offset], inbounds=True,
                                source_etype=storage_type(buffer.element_type))

    @handles(memref.LoadOp)
    def _load(self, op: memref.LoadOp) -> None:
        buffer = self.buffer(op.memref)
        element = buffer.element_type
        raw = self.builder.load(self.element_pointer(buffer, op.indices), typ=storage_type(element),
                                align=storage_size(element))
        self.context.alias_scopes.record(raw, buffer)
        if isinstance(element, BFloat16Type):
            widened = self.builder.shl(self.builder.zext(raw, I32), I32(16))
            raw = self.builder.bitcast(widened, F32)
        elif register_type(element) == I1:
            raw = self.builder.trunc(raw, I1)
        self.bind(op.res, raw)

    @handles(memref.StoreOp)
    def _store(self, op: memref.StoreOp) -> None:
        buffer = self.buffer(op.memref)
        element = buffer.element_type
        value = self.scalar(op.value)
        if isinstance(element, BFloat16Type):
            bits = self.builder.lshr(self.builder.bitcast(value, I32), I32(16))
            value = self.builder.trunc(bits, I16)
        elif register_type(element) == I1:
            value = self.builder.zext(value, I8)
        store = self.builder.store(value, self.element_pointer(buffer, op.indices), align=storage_size(element))
        self.context.alias_scopes.record(store, buffer)

    @handles(memref.GetGlobalOp)
    def _get_global(self, op: memref.GetGlobalOp) -> None:
        name = op.name_.root_reference.data
        if name not in self.globals_by_name:
            raise InternalError(f"cpu backend: reference to undefined global @{name}")
        t = check_dense(op.memref.type)
        self.bind(op.memref, Buffer(self.globals_by_name[name], t, name, whole(t)))

    @handles(memref.AllocOp, memref.AllocaOp)
    def _alloc(self, op: memref.AllocOp | memref.AllocaOp) -> None:
        t = check_dense(op.memref.type)
        size = memref_bytes(t)
        fits = size <= STACK_BUFFER_LIMIT and self.stack_bytes + size <= STACK_BUDGET
        if isinstance(op, memref.AllocaOp) or (op.parent_op() is self.model and fits):
            self.stack_bytes += size
            slot = opaque(self.alloca_builder.alloca(ir.ArrayType(I8, max(size, 1))))
            slot.align = ALIGNMENT
            self.bind(op.memref, Buffer(slot, t, op, whole(t), on_stack=True))
            return
        aligned_alloc = self.declare("aligned_alloc", PTR, [I64, I64])
        padded = -(-max(size, 1) // ALIGNMENT) * ALIGNMENT  # C11 wants a multiple of the alignment
        self.bind(op.memref, Buffer(self.builder.call(aligned_alloc, [I64(ALIGNMENT), I64(padded)]), t, op, whole(t)))

    @handles(memref.DeallocOp)
    def _dealloc(self, op: memref.DeallocOp) -> None:
        buffer = self.buffer(op.memref)
        if not buffer.on_stack:
            self.builder.call(self.declare("free", ir.VoidType(), [PTR]), [buffer.pointer])

    @handles(memref.CopyOp)
    def _copy(self, op: memref.CopyOp) -> None:
        source, target = self.buffer(op.source), self.buffer(op.destination)
        check_dense(source.type), check_dense(target.type)
        memcpy = self.module.declare_intrinsic("llvm.memcpy", [PTR, PTR, I64])
        self.builder.call(memcpy, [target.pointer, source.pointer, I64(memref_bytes(source.type)), I1(0)])

    @handles(memref.CollapseShapeOp, memref.ExpandShapeOp)
    def _reshape(self, op: memref.CollapseShapeOp | memref.ExpandShapeOp) -> None:
        source = self.buffer(op.src)
        check_dense(source.type)
        self.bind(op.result, source.view(source.pointer, check_dense(op.result.type), aligned=True))

    @handles(memref.SubviewOp)
    def _subview(self, op: memref.SubviewOp) -> None:
        """A view starting `sum(offset * stride)` elements in, with the result type's strides."""
        source = self.buffer(op.source)
        dynamic = iter(op.offsets)
        if op.sizes or op.strides:
            raise unsupported("memref.subview with dynamic sizes or strides")
        offsets = [self.scalar(next(dynamic)) if o == DYNAMIC_INDEX else I64(o)
                   for o in op.static_offsets.get_values()]
        pointer = self.element_pointer(source, offsets)
        at_start = all(isinstance(o, ir.Constant) and o.constant == 0 for o in offsets)
        self.bind(op.result, source.view(pointer, check_memref(op.result.type), aligned=at_start))

    @handles(memref.ViewOp)
    def _view(self, op: memref.ViewOp) -> None:
        """A dense buffer `byte_shift` bytes into an i8 buffer."""
        source = self.buffer(op.source)
        if op.sizes:
            raise unsupported("memref.view with dynamic sizes")
        shift = self.scalar(op.byte_shift)
        pointer = self.builder.gep(source.pointer, [shift], inbounds=True, source_etype=I8)
        constant = shift.constant if isinstance(shift, ir.Constant) else None
        self.bind(op.result, source.carve(pointer, check_dense(op.result.type), constant))

    # ---- vectors -------------------------------------------------------------------

    def vector_access(self, op: VectorAccess, access: Callable[[ir.Value, int], ir.Instruction]) -> ir.Instruction:
        """`access(pointer, alignment)` at the vector's first element."""
        buffer = self.buffer(op.base)
        if buffer.element_type != Float32Type() or buffer.strides[-1:] not in ((), (1,)):
            raise unsupported(f"{op.name} on {buffer.type}")
        instruction = access(self.element_pointer(buffer, op.indices), storage_size(buffer.element_type))
        self.context.alias_scopes.record(instruction, buffer)
        return instruction

    @handles(vector.LoadOp)
    def _vector_load(self, op: vector.LoadOp) -> None:
        t = register_type(op.result.type)
        self.bind(op.result, self.vector_access(op, lambda p, align: self.builder.load(p, typ=t, align=align)))

    @handles(vector.StoreOp)
    def _vector_store(self, op: vector.StoreOp) -> None:
        value = self.scalar(op.vector)
        self.vector_access(op, lambda p, align: self.builder.store(value, p, align=align))

    def masked_call(self, name: str, t: ir.VectorType, result: ir.Type, args: list[ir.Value],
                    pointer_at: int, align: int) -> ir.Instruction:
        """A call of `llvm.masked.<name>` on vectors of type `t`."""
        callee = self.declare(f"llvm.masked.{name}.{intrinsic_suffix(t)}.p0", result, [a.type for a in args])
        call = self.builder.call(callee, args, arg_attrs={pointer_at: ()})
        call.arg_attributes[pointer_at].align = align
        return call

    @handles(vector.MaskedLoadOp)
    def _masked_load(self, op: vector.MaskedLoadOp) -> None:
        t = register_type(op.result.type)
        mask, idle = self.scalar(op.mask), self.scalar(op.pass_thru)
        self.bind(op.result, self.vector_access(
            op, lambda p, align: self.masked_call("load", t, t, [p, mask, idle], 0, align)))

    @handles(vector.MaskedStoreOp)
    def _masked_store(self, op: vector.MaskedStoreOp) -> None:
        value, mask = self.scalar(op.value_to_store), self.scalar(op.mask)
        self.vector_access(
            op, lambda p, align: self.masked_call("store", value.type, ir.VoidType(), [value, p, mask], 1, align))

    @handles(vector.CreateMaskOp)
    def _create_mask(self, op: vector.CreateMaskOp) -> None:
        """Lanes below the operand on, the others off."""
        (size,) = op.mask_dim_sizes
        lanes = register_type(op.mask_vector.type).count
        active = self.scalar(size)
        if isinstance(active, ir.Constant):
            mask = [I1(lane < active.constant) for lane in range(lanes)]
            self.bind(op.mask_vector, ir.Constant(ir.VectorType(I1, lanes), mask))
            return
        lane = ir.Constant(ir.VectorType(I64, lanes), list(range(lanes)))
        self.bind(op.mask_vector, self.builder.icmp_unsigned("<", lane, self.splat(active, lanes)))

    def splat(self, value: ir.Value, lanes: int) -> ir.Value:
        undefined = ir.Constant(ir.VectorType(value.type, lanes), ir.Undefined)
        first = self.builder.insert_element(undefined, value, I32(0))
        mask = ir.Constant(ir.VectorType(I32, lanes), [0] * lanes)
        return self.builder.shuffle_vector(first, undefined, mask)

    @handles(vector.BroadcastOp)
    def _broadcast(self, op: vector.BroadcastOp) -> None:
        if isinstance(op.source.type, VectorType):
            raise unsupported("vector.broadcast of a vector")
        self.bind(op.vector, self.splat(self.scalar(op.source), register_type(op.vector.type).count))

    @handles(vector.FMAOp)
    def _vector_fma(self, op: vector.FMAOp) -> None:
        t = register_type(op.res.type)
        operands = [self.scalar(v) for v in (op.lhs, op.rhs, op.acc)]
        self.bind(op.res, self.builder.call(self.intrinsic("llvm.fma", t, 3), operands))

    # ---- narrow floats ------------------------------------------------------------

    def round_bf16(self, value: ir.Value) -> ir.Value:
        """An f32 rounded to the nearest bf16 (ties to even), still held as f32."""
        b = self.builder
        bits = b.bitcast(value, I32)
        lowest_kept = b.and_(b.lshr(bits, I32(16)), I32(1))
        rounded = b.add(b.add(bits, I32(0x7FFF)), lowest_kept)
        quiet_nan = b.or_(bits, I32(0x00400000))
        chosen = b.select(b.fcmp_unordered("uno", value, value), quiet_nan, rounded)
        return b.bitcast(b.and_(chosen, I32(0xFFFF0000)), F32)

    def widen(self, value: ir.Value, t: Attribute) -> ir.Value:
        """A narrow-float value as the f32 it is computed in."""
        return self.builder.fpext(value, F32) if isinstance(t, Float16Type) else value

    def narrow(self, value: ir.Value, t: Attribute) -> ir.Value:
        """An f32 result rounded back to the narrow float type `t`."""
        if isinstance(t, Float16Type):
            return self.builder.fptrunc(value, F16)
        return self.round_bf16(value)

    def float_op(self, t: Attribute, operands: Sequence[ir.Value],
                 compute: Callable[..., ir.Value]) -> ir.Value:
        """`compute` applied at f32 precision or wider, rounding once to `t`."""
        if not is_narrow_float(t):
            return compute(*operands)
        return self.narrow(compute(*[self.widen(v, t) for v in operands]), t)

    def convert_float(self, value: ir.Value, source: Attribute, target: Attribute) -> ir.Value:
        if source == target:
            return value
        if isinstance(target, BFloat16Type):
            wide = self.convert_float(value, source, Float32Type())
            return self.round_bf16(wide)
        have, want = value.type, register_type(target)  # bf16 sources are f32 already
        if have == want:
            return value
        widen = FLOAT_BYTES[want] > FLOAT_BYTES[have]
        return self.builder.fpext(value, want) if widen else self.builder.fptrunc(value, want)

    # ---- arith ------------------------------------------------------------------

    @staticmethod
    def fast_math(op: Operation) -> list[str]:
        declared = getattr(op, "fastmath", None)
        flags = {"contract"} | {flag.value for flag in (declared.data if declared else ())}
        return sorted(flags)

    @handles(arith.ConstantOp)
    def _constant(self, op: arith.ConstantOp) -> None:
        value, t = op.value, op.result.type
        if isinstance(value, IntegerAttr):
            self.bind(op.result, ir.Constant(register_type(t), value.value.data))
        elif isinstance(value, FloatAttr):
            number = value.value.data
            if isinstance(t, BFloat16Type):
                number = float(round_to_bf16(np.array([number], dtype=np.float32))[0])
            self.bind(op.result, ir.Constant(register_type(t), number))
        else:
            raise unsupported(f"arith.constant of {t}")

    @handles(*FLOAT_BINARY)
    def _float_binary(self, op: Operation) -> None:
        method = getattr(self.builder, FLOAT_BINARY[type(op)])
        flags = self.fast_math(op)
        lhs, rhs = self.scalar(op.lhs), self.scalar(op.rhs)
        self.bind(op.result, self.float_op(op.result.type, [lhs, rhs],
                                           lambda a, b: method(a, b, flags=flags)))

    @handles(*FLOAT_CALLS)
    def _float_call(self, op: Operation) -> None:
        name, flags = FLOAT_CALLS[type(op)], self.fast_math(op)

        def call(*args: ir.Value) -> ir.Value:
            t = args[0].type
            declare = self.intrinsic if name.startswith("llvm.") else self.libm
            return self.builder.call(declare(name, t, len(args)), list(args), fastmath=flags)

        operands = [self.scalar(v) for v in op.operands]
        self.bind(op.results[0], self.float_op(op.results[0].type, operands, call))

    @handles(math.RsqrtOp)
    def _rsqrt(self, op: math.RsqrtOp) -> None:
        flags = self.fast_math(op)

        def rsqrt(x: ir.Value) -> ir.Value:
            root = self.builder.call(self.intrinsic("llvm.sqrt", x.type, 1), [x], fastmath=flags)
            return self.builder.fdiv(ir.Constant(x.type, 1.0), root, flags=flags)

        self.bind(op.result, self.float_op(op.result.type, [self.scalar(op.operand)], rsqrt))

    @handles(arith.NegfOp)
    def _negf(self, op: arith.NegfOp) -> None:
        self.bind(op.result, self.builder.fneg(self.scalar(op.operand), flags=self.fast_math(op)))

    @handles(arith.CmpfOp)
    def _cmpf(self, op: arith.CmpfOp) -> None:
        predicate = arith.CMPF_COMPARISON_OPERATIONS[op.predicate.value.data]
        if predicate in ("false", "true"):
            self.bind(op.result, I1(predicate == "true"))
            return
        compare = self.builder.fcmp_unordered if predicate[0] == "u" else self.builder.fcmp_ordered
        self.bind(op.result, compare(predicate, self.scalar(op.lhs), self.scalar(op.rhs)))

    @handles(arith.CmpiOp)
    def _cmpi(self, op: arith.CmpiOp) -> None:
        signed, comparison = INT_PREDICATES[arith.CMPI_COMPARISON_OPERATIONS[op.predicate.value.data]]
        compare = self.builder.icmp_signed if signed else self.builder.icmp_unsigned
        self.bind(op.result, compare(comparison, self.scalar(op.lhs), self.scalar(op.rhs)))

    @handles(arith.SelectOp)
    def _select(self, op: arith.SelectOp) -> None:
        if isinstance(op.result.type, MemRefType):
            raise unsupported("arith.select on memrefs")
        self.bind(op.result, self.builder.select(
            self.scalar(op.cond), self.scalar(op.lhs), self.scalar(op.rhs)))

    @handles(*INT_BINARY)
    def _int_binary(self, op: Operation) -> None:
        method = getattr(self.builder, INT_BINARY[type(op)])
        self.bind(op.result, method(self.scalar(op.lhs), self.scalar(op.rhs)))

    @handles(*INT_BINARY_INTRINSIC)
    def _int_binary_call(self, op: Operation) -> None:
        lhs, rhs = self.scalar(op.lhs), self.scalar(op.rhs)
        callee = self.intrinsic(INT_BINARY_INTRINSIC[type(op)], lhs.type, 2)
        self.bind(op.result, self.builder.call(callee, [lhs, rhs]))

    @handles(arith.DivSIOp, arith.RemSIOp, arith.DivUIOp, arith.RemUIOp,
             arith.FloorDivSIOp, arith.CeilDivSIOp)
    def _int_division(self, op: Operation) -> None:
        b = self.builder
        lhs, rhs = self.scalar(op.lhs), self.scalar(op.rhs)
        t = lhs.type
        zero, one, minus_one = ir.Constant(t, 0), ir.Constant(t, 1), ir.Constant(t, -1)
        by_zero = b.icmp_signed("==", rhs, zero)
        if isinstance(op, arith.DivUIOp | arith.RemUIOp):
            safe = b.select(by_zero, one, rhs)
            result = b.udiv(lhs, safe) if isinstance(op, arith.DivUIOp) else b.urem(lhs, safe)
            self.bind(op.result, b.select(by_zero, zero, result))
            return
        # Dividing by -1 is negation; routing it away from sdiv avoids the INT_MIN / -1 trap.
        by_minus_one = b.icmp_signed("==", rhs, minus_one)
        safe = b.select(b.or_(by_zero, by_minus_one), one, rhs)
        quotient, remainder = b.sdiv(lhs, safe), b.srem(lhs, safe)
        if isinstance(op, arith.RemSIOp):
            result = b.select(by_minus_one, zero, remainder)
        else:
            result = b.select(by_minus_one, b.sub(zero, lhs), quotient)
            if not isinstance(op, arith.DivSIOp):
                # floor/ceil: step the truncated quotient when the remainder is non-zero
                # and its sign disagrees (floor) or agrees (ceil) with the divisor's.
                inexact = b.icmp_signed("!=", remainder, zero)
                signs_differ = b.icmp_signed("<", b.xor(remainder, rhs), zero)
                if isinstance(op, arith.FloorDivSIOp):
                    adjust, step = b.and_(inexact, signs_differ), minus_one
                else:
                    adjust, step = b.and_(inexact, b.not_(signs_differ)), one
                result = b.select(b.and_(adjust, b.not_(by_minus_one)), b.add(result, step), result)
        self.bind(op.result, b.select(by_zero, zero, result))

    # ---- casts --------------------------------------------------------------------

    @handles(arith.ExtFOp, arith.TruncFOp)
    def _float_cast(self, op: arith.ExtFOp | arith.TruncFOp) -> None:
        self.bind(op.result, self.convert_float(self.scalar(op.input), op.input.type, op.result.type))

    @handles(arith.ExtSIOp, arith.ExtUIOp, arith.TruncIOp, arith.IndexCastOp)
    def _int_cast(self, op: Operation) -> None:
        value = self.scalar(op.input)
        want = register_type(op.result.type)
        if want.width < value.type.width:
            cast = self.builder.trunc(value, want)
        elif want.width == value.type.width:
            cast = value
        elif isinstance(op, arith.ExtUIOp):
            cast = self.builder.zext(value, want)
        else:
            cast = self.builder.sext(value, want)
        self.bind(op.result, cast)

    @handles(arith.SIToFPOp, arith.UIToFPOp)
    def _int_to_float(self, op: Operation) -> None:
        t = op.result.type
        convert = self.builder.sitofp if isinstance(op, arith.SIToFPOp) else self.builder.uitofp
        if isinstance(t, BFloat16Type):
            # Through f64, which holds every i32 exactly, so bf16 rounding happens once.
            wide = convert(self.scalar(op.input), F64)
            self.bind(op.result, self.round_bf16(self.builder.fptrunc(wide, F32)))
        else:
            self.bind(op.result, convert(self.scalar(op.input), register_type(t)))

    @handles(arith.FPToSIOp, arith.FPToUIOp)
    def _float_to_int(self, op: Operation) -> None:
        convert = self.builder.fptosi if isinstance(op, arith.FPToSIOp) else self.builder.fptoui
        self.bind(op.result, convert(self.scalar(op.input), register_type(op.result.type)))

    @handles(arith.BitcastOp)
    def _bitcast(self, op: arith.BitcastOp) -> None:
        source, target = op.input.type, op.result.type
        value = self.scalar(op.input)
        if isinstance(source, BFloat16Type):
            value = self.builder.trunc(self.builder.lshr(self.builder.bitcast(value, I32), I32(16)), I16)
        if isinstance(target, BFloat16Type):
            widened = self.builder.shl(self.builder.zext(value, I32), I32(16))
            self.bind(op.result, self.builder.bitcast(widened, F32))
        else:
            self.bind(op.result, self.builder.bitcast(value, register_type(target)))


# --------------------------------------------------------------------------
# Module
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class EmittedModel:
    module: ir.Module
    entry: str
    packed_entry: str  # the same, taking one array of buffer pointers
    parallel_loops: int  # loops split over threads (so the code calls pthreads)


def emit_packed_entry(module: ir.Module, entry: ir.Function, name: str) -> None:
    """``void name(ptr buffers)``: calls `entry` with the pointers in the array `buffers`."""
    packed = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR]), name=name)
    packed.attributes.add("nounwind")
    builder = ir.IRBuilder(packed.append_basic_block("entry"))
    (buffers,) = packed.args
    pointers = [builder.load(builder.gep(buffers, [I64(i)], inbounds=True, source_etype=PTR), typ=PTR)
                for i in range(len(entry.args))]
    builder.call(entry, pointers)
    builder.ret_void()


def emit_model(module: ModuleOp, signature: ModelSignature, threads: int = 1) -> EmittedModel:
    """Build the LLVM module for the single lowered model in `module`; loops
    marked `loom.parallel` run on `threads` threads."""
    llvm_module = ir.Module(name=signature.name)
    globals_by_name: dict[str, ir.GlobalVariable] = {}
    found = models(module)
    if len(found) != 1:
        raise InternalError(f"cpu backend: expected one model function, found {len(found)}")
    model = found[0]
    for op in module.ops:
        if isinstance(op, memref.GlobalOp):
            globals_by_name[op.sym_name.data] = declare_global(llvm_module, op)
        elif op is not model:
            raise unsupported(f"{op.name} at module level")

    specs = signature.inputs + signature.outputs
    arg_types = model.function_type.inputs.data
    if model.function_type.outputs.data or len(arg_types) != len(specs):
        raise InternalError(
            f"cpu backend: @{signature.name} is not in destination-passing form "
            f"({len(specs)} buffer arguments and no results expected)"
        )
    entry = entry_symbol(signature.name)
    function = ir.Function(llvm_module, ir.FunctionType(ir.VoidType(), [PTR] * len(specs)), name=entry)
    function.attributes.add("nounwind")
    context = ModelContext(llvm_module, globals_by_name, model, entry, threads)
    emitter = FunctionEmitter(context, function)
    for block_arg, llvm_arg, name in zip(model.body.block.args, function.args, parameter_names(signature)):
        t = check_dense(block_arg.type)
        llvm_arg.name = name
        for attribute in ("noalias", "nonnull", "noundef"):
            llvm_arg.add_attribute(attribute)
        llvm_arg.attributes.align = ALIGNMENT
        llvm_arg.attributes.dereferenceable = max(memref_bytes(t), 1)
        emitter.bind(block_arg, Buffer(llvm_arg, t, block_arg, whole(t)))
    emitter.emit_body(model.body.block)
    packed = packed_entry_symbol(signature.name)
    emit_packed_entry(llvm_module, function, packed)
    context.alias_scopes.attach(llvm_module)
    return EmittedModel(llvm_module, entry, packed, context.regions)
