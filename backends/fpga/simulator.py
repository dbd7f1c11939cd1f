"""Execute a scheduled FPGA design: values as the datapath computes them, cycles as its FSMs spend them.

Values: every loop nest runs in its loop order with the arithmetic of its
body ops on numpy arrays of the IR's types (i8/i32/i64 wrap, f32 rounds
once per op), all parallel points at once and the reduction loops one point
after another, so accumulators add up in the order the hardware adds them.
Int8 datapaths are therefore bit-exact with the reference interpreter; f32
sums differ from numpy's pairwise ones only by rounding.

A quantized model's float edges (quantizing the input, dequantizing and a
softmax at the end) are not FPGA datapaths: they run on the host, in
numpy, like the reference. `host_nests` picks them out and `run_host_nest`
evaluates them the way numpy evaluates the reference's kernels, the whole
iteration space at once with each reduction done by its ufunc's `reduce`
(numpy's pairwise summation) instead of one accumulation per iteration;
so the end-to-end outputs of a quantized model equal the interpreter's
bit for bit, not only its integers.

Cycles: a pipelined nest issues an iteration (all lanes) every II cycles
and finishes its last one `depth` cycles after issuing it, plus the FSM's
entry and exit states; an unpipelined nest spends `depth` per iteration.
Engines start when their producers are done (dataflow) or one after
another (time-multiplexed). Every iteration's array accesses are checked
against the banks and ports the schedule assumed, so a partition that
cannot deliver the lanes' operands is an error, not a silent speed-up.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from xdsl.dialects import arith, func, tensor
from xdsl.dialects import math as mathd
from xdsl.dialects.builtin import (
    DictionaryAttr,
    FloatAttr,
    IntegerAttr,
    IntegerType,
    TensorType,
)
from xdsl.dialects.linalg import ops as linalg
from xdsl.ir import Attribute, Operation, SSAValue

from backends.fpga.device import FpgaDevice, type_bits
from backends.fpga.hls_model import bank_key, directives_of, stored_in_registers
from compiler.diagnostics import InternalError, LoomError
from compiler.interpreter import truncating_divide
from dialects import hls, nn
from passes.hls_directives import Nest, nest_of


def _np_type(t: Attribute) -> np.dtype:
    """The numpy dtype holding values of a scalar or tensor type (i64 included, which bodies use)."""
    element = t.element_type if isinstance(t, TensorType) else t
    if isinstance(element, IntegerType):
        return np.dtype({1: np.bool_, 8: np.int8, 32: np.int32, 64: np.int64}[element.width.data])
    return np.dtype(nn.numpy_dtype(element))


_BINARY: dict[type[Operation], Callable] = {
    arith.AddiOp: np.add, arith.SubiOp: np.subtract, arith.MuliOp: np.multiply,
    arith.AddfOp: np.add, arith.SubfOp: np.subtract, arith.MulfOp: np.multiply, arith.DivfOp: np.divide,
    arith.MaxSIOp: np.maximum, arith.MinSIOp: np.minimum, arith.MaximumfOp: np.maximum,
    arith.MinimumfOp: np.minimum, arith.MaxnumfOp: np.fmax, arith.MinnumfOp: np.fmin,
    arith.ShRSIOp: np.right_shift, arith.ShLIOp: np.left_shift,
    arith.AndIOp: np.bitwise_and, arith.OrIOp: np.bitwise_or, arith.XOrIOp: np.bitwise_xor,
    arith.DivSIOp: truncating_divide,
}
_UNARY: dict[type[Operation], Callable] = {
    mathd.ExpOp: np.exp, mathd.TanhOp: np.tanh, mathd.SqrtOp: np.sqrt, mathd.RoundEvenOp: np.rint,
    mathd.AbsFOp: np.abs, arith.NegfOp: np.negative,
}
# Reductions the host hands to numpy: the combiner of a reduction nest -> its ufunc.
_REDUCERS: dict[type[Operation], np.ufunc] = {
    arith.AddfOp: np.add, arith.MulfOp: np.multiply, arith.MaximumfOp: np.maximum, arith.MinimumfOp: np.minimum,
    arith.MaxnumfOp: np.fmax, arith.MinnumfOp: np.fmin,
}
_CASTS = (arith.ExtSIOp, arith.TruncIOp, arith.SIToFPOp, arith.FPToSIOp, arith.ExtFOp, arith.TruncFOp)


def scalar_op(op: Operation, args: list[np.ndarray]) -> np.ndarray:
    """One body op on arrays of operand values, in the op's result type."""
    result_type = _np_type(op.results[0].type)
    if isinstance(op, arith.ConstantOp):
        value = op.value
        number = value.value.data if isinstance(value, IntegerAttr | FloatAttr) else None
        return np.asarray(number, result_type)
    if type(op) in _BINARY:
        return np.asarray(_BINARY[type(op)](*args)).astype(result_type)
    if type(op) in _UNARY:
        return np.asarray(_UNARY[type(op)](*args)).astype(result_type)
    if isinstance(op, _CASTS):
        return np.asarray(args[0]).astype(result_type)
    raise LoomError(f"the fpga target cannot execute {op.name}")


def eval_index(amap, dims: list) -> tuple:
    return tuple(expr.eval(dims, []) for expr in amap.results)


def _is_integer(t: Attribute) -> bool:
    return isinstance(t.element_type if isinstance(t, TensorType) else t, IntegerType)


def is_integer_nest(op: Operation) -> bool:
    """Whether every value a nest reads, computes and writes is an integer: an FPGA datapath of a quantized model."""
    values = list(op.operands) + list(op.results)
    if isinstance(op, linalg.GenericOp):
        values += [v for body_op in op.body.block.ops for v in body_op.results]
    return all(_is_integer(v.type) for v in values)


def integer_span(nests: list[Operation]) -> tuple[int, int] | None:
    """Positions of the first and last integer nest in program order (None: a float model)."""
    integer = [i for i, op in enumerate(nests) if is_integer_nest(op)]
    return (integer[0], integer[-1]) if integer else None


def host_nests(model: func.FuncOp) -> set[Operation]:
    """The float nests before a quantized model's first integer nest and after its
    last one; a float model has none (all its nests are FPGA datapaths)."""
    nests = [op for op in model.walk() if isinstance(op, linalg.GenericOp | linalg.FillOp)]
    span = integer_span(nests)
    return set() if span is None else set(nests[:span[0]] + nests[span[1] + 1:])


@dataclass
class NestRun:
    name: str
    cycles: int
    iterations: int


@dataclass
class EngineRun:
    name: str
    start: int
    cycles: int
    nests: list[NestRun] = field(default_factory=list)


class Simulator:
    def __init__(self, model: func.FuncOp, device: FpgaDevice):
        self.model = model
        self.device = device
        self.mode = model.attributes[hls.MODE_ATTR].data  # type: ignore[union-attr]
        self.host_nests = host_nests(model)

    # ---- values ----------------------------------------------------------

    def run_nest(self, op: Operation, values: dict[SSAValue, np.ndarray]) -> np.ndarray:
        nest = nest_of(op)
        assert nest is not None
        out = np.array(values[op.outputs[0]], copy=True)  # type: ignore[attr-defined]
        if isinstance(op, linalg.FillOp):
            out[...] = values[op.inputs[0]]
            return out
        assert isinstance(op, linalg.GenericOp)
        if op in self.host_nests and self.run_host_nest(op, nest, values, out):
            return out
        inputs = [values[v] for v in op.inputs]
        parallel_dims = [d for d, p in enumerate(nest.parallel) if p]
        reduce_dims = [d for d, p in enumerate(nest.parallel) if not p]
        grids = np.indices([nest.trips[d] for d in parallel_dims]) if parallel_dims else []
        for point in itertools.product(*(range(nest.trips[d]) for d in reduce_dims)):
            dims: list = [0] * len(nest.trips)
            for d, grid in zip(parallel_dims, grids):
                dims[d] = grid
            for d, value in zip(reduce_dims, point):
                dims[d] = value
            reads = [array[eval_index(amap, dims)] for array, amap in zip(inputs, nest.maps)]
            target = eval_index(nest.maps[-1], dims)
            out[target] = self.run_body(op.body.block, [*reads, out[target]])
        return out

    def run_host_nest(self, op: linalg.GenericOp, nest: Nest, values: dict[SSAValue, np.ndarray],
                      out: np.ndarray) -> bool:
        """Evaluate a host nest as numpy does, into `out`; False when its body is not
        `acc <combiner> f(inputs)` with `acc` used only there (then it runs in loop order).

        The body's `f` is computed over the whole iteration space, reduced over the
        reduction dims by the combiner's ufunc (`np.add.reduce` sums pairwise, as
        `np.sum` in the reference does) and combined once with the initial value."""
        block = op.body.block
        acc = block.args[-1]
        reduce_dims = tuple(d for d, p in enumerate(nest.parallel) if not p)
        combiner = block.last_op.operands[0].owner  # type: ignore[union-attr]
        if (not reduce_dims or type(combiner) not in _REDUCERS or not acc.has_one_use()
                or acc not in combiner.operands):  # type: ignore[union-attr]
            return False
        dims = list(np.indices(nest.trips))
        reads = [values[v][eval_index(amap, dims)] for v, amap in zip(op.inputs, nest.maps)]
        env = self.body_values(block, [*reads, out], until=combiner)  # type: ignore[arg-type]
        term = next(v for v in combiner.operands if v is not acc)  # type: ignore[union-attr]
        contributions = np.broadcast_to(env[term], nest.trips)
        reduced = _REDUCERS[type(combiner)].reduce(contributions, axis=reduce_dims)
        kept = [d for d in range(len(nest.trips)) if d not in reduce_dims]
        grids = iter(np.indices(reduced.shape))
        target = eval_index(nest.maps[-1], [next(grids) if d in kept else 0 for d in range(len(nest.trips))])
        ordered = [out[target] if v is acc else reduced for v in combiner.operands]  # type: ignore[union-attr]
        with np.errstate(all="ignore"):
            out[target] = scalar_op(combiner, ordered)  # type: ignore[arg-type]
        return True

    def body_values(self, block, args: list[np.ndarray], until: Operation | None = None) -> dict[SSAValue, np.ndarray]:
        """The values of the body ops before `until` (or the yield) for the given arguments."""
        env: dict[SSAValue, np.ndarray] = dict(zip(block.args, args))
        with np.errstate(all="ignore"):
            for body_op in block.ops:
                if body_op is until or isinstance(body_op, linalg.YieldOp):
                    return env
                env[body_op.results[0]] = scalar_op(body_op, [env[v] for v in body_op.operands])
        raise InternalError("a loop body without linalg.yield")

    def run_body(self, block, args: list[np.ndarray]) -> np.ndarray:
        return self.body_values(block, args)[block.last_op.operands[0]]

    def run_op(self, op: Operation, values: dict[SSAValue, np.ndarray]) -> None:
        if isinstance(op, nn.ConstantOp):
            values[op.result] = op.array()
        elif isinstance(op, arith.ConstantOp):
            values[op.result] = scalar_op(op, [])
        elif isinstance(op, tensor.EmptyOp):
            t = op.results[0].type
            values[op.results[0]] = np.zeros(t.get_shape(), _np_type(t))  # type: ignore[union-attr]
        elif isinstance(op, tensor.CollapseShapeOp | tensor.ExpandShapeOp):
            values[op.results[0]] = values[op.operands[0]].reshape(op.results[0].type.get_shape())  # type: ignore
        elif isinstance(op, hls.StreamOp):
            values[op.output] = values[op.input]
        elif isinstance(op, linalg.GenericOp | linalg.FillOp):
            values[op.results[0]] = self.run_nest(op, values)
        else:
            raise LoomError(f"the fpga target cannot execute {op.name}")

    # ---- cycles ----------------------------------------------------------

    def nest_cycles(self, op: Operation) -> NestRun:
        nest = nest_of(op)
        assert nest is not None
        summary = op.attributes.get(hls.SCHEDULE_ATTR)
        if not isinstance(summary, DictionaryAttr):
            raise InternalError(f"{op.name} reached the simulator unscheduled")
        get = {k: v.value.data for k, v in summary.data.items() if isinstance(v, IntegerAttr)}
        directives = directives_of(op, nest)
        issue_points = self.check_ports(op, nest, directives, summary)
        ii, depth = get["ii"], get["depth"]
        if ii:
            cycles = self.device.loop_overhead + (issue_points - 1) * ii + depth
        else:
            cycles = self.device.loop_overhead + issue_points * depth
        return NestRun(str(op.attributes.get("loom.op", op.name)), cycles, issue_points)

    def check_ports(self, op: Operation, nest: Nest, directives, summary: DictionaryAttr) -> int:
        """Iterations issued, after checking every one's accesses against its banks' ports."""
        factors = directives.factors
        issue_shape = [math.ceil(t / f) for t, f in zip(nest.trips, factors)]
        issues = math.prod(issue_shape)
        beats = [b.value.data for b in summary.data["beats"].data]  # type: ignore[union-attr]
        operands = list(op.operands)
        for index, (amap, shape, parts) in enumerate(zip(nest.maps, nest.shapes, directives.partitions)):
            if not shape or beats[index] == 0:
                continue
            if stored_in_registers(shape, type_bits(operands[index].type), parts, self.device):
                continue
            issue = np.indices(issue_shape).reshape(len(issue_shape), -1)
            keys = []
            for offset in itertools.product(*(range(f) for f in factors)):
                dims = [issue[d] * factors[d] + offset[d] for d in range(len(factors))]
                address = eval_index(amap, dims)
                bank = bank_key(parts, shape, address)
                flat = np.ravel_multi_index(address, shape)
                keys.append(np.stack([np.arange(issues), flat, *[np.broadcast_to(b, (issues,)) for b in bank]]))
            table = np.unique(np.concatenate(keys, axis=1), axis=1)  # distinct (iteration, address, bank)
            _, per_bank = np.unique(np.delete(table, 1, axis=0), axis=1, return_counts=True)
            if per_bank.max() > beats[index] * self.device.memory_ports:
                raise InternalError(
                    f"{op.name}: operand {index} needs {per_bank.max()} accesses to one bank in an iteration; "
                    f"the schedule allows {beats[index] * self.device.memory_ports}")
        return issues

    # ---- the model ---------------------------------------------------------

    def run(self, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], list[EngineRun], int]:
        values: dict[SSAValue, np.ndarray] = dict(zip(self.model.body.block.args, inputs))
        runs: list[EngineRun] = []
        finish: dict[SSAValue, int] = {}
        clock = 0
        for op in self.model.body.block.ops:
            if isinstance(op, func.ReturnOp):
                return [values[v] for v in op.operands], runs, max((r.start + r.cycles for r in runs), default=0)
            if not isinstance(op, hls.EngineOp):
                self.run_op(op, values)
                if isinstance(op, hls.StreamOp | tensor.CollapseShapeOp | tensor.ExpandShapeOp):
                    finish[op.results[0]] = finish.get(op.operands[0], 0)
                continue
            ready = max((finish.get(v, 0) for inner in op.walk() for v in inner.operands), default=0)
            start = ready if self.mode == "dataflow" else clock
            run = EngineRun(op.layer_name, start, 0)
            for inner in op.body.block.ops:
                if isinstance(inner, hls.YieldOp):
                    values[op.outputs[0]] = values[inner.operands[0]]
                    continue
                self.run_op(inner, values)
                if nest_of(inner) is not None:
                    run.nests.append(self.nest_cycles(inner))
            run.cycles = sum(n.cycles for n in run.nests)
            finish[op.outputs[0]] = start + run.cycles
            clock = start + run.cycles
            runs.append(run)
        raise InternalError("the model function has no func.return")
