"""Which part of a scheduled model becomes RTL, and the buffers it touches.

The RTL builds integer datapaths: the run of loop nests, in program order,
from the first whose operands are all integer tensors to the last. A
quantized model's float edges (quantizing the input, dequantizing and a
softmax at the end) stay on the host, computed by the schedule simulator
the way numpy computes them (`simulator.host_nests`);
a float nest between integer ones is an error. Within the region, each
buffer gets a bank layout (`layout.py`) and each nest operand an access
plan. Buffers the region reads but does not write are memories loaded
from files: weights once (`nn.constant`), host values per run. Buffers the
host reads afterwards are the region's outputs, read back through a port.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from xdsl.dialects import arith, func
from xdsl.dialects.linalg import ops as linalg
from xdsl.ir import BlockArgument, Operation, OpResult, SSAValue

from backends.fpga.design import DesignEstimate, buffer_root
from backends.fpga.hls_model import NestSchedule
from backends.fpga.rtl.control import nest_cycles
from backends.fpga.rtl.layout import (
    AccessPlan,
    Layout,
    UnsupportedDesign,
    make_layout,
    plan_access,
)
from backends.fpga.simulator import integer_span, is_integer_nest
from dialects import hls, nn


@dataclass
class RtlEngine:
    name: str
    nests: list[NestSchedule]
    producers: list[str]  # engines of the region this one waits for (dataflow)


@dataclass
class Region:
    mode: str
    overhead: int
    engines: list[RtlEngine]
    layouts: dict[SSAValue, Layout]  # buffer root -> banks
    plans: dict[Operation, list[AccessPlan | None]]  # nest -> per operand
    scalars: dict[Operation, dict[int, int]]  # nest -> scalar operand values
    dsp_width: int  # signed operand bits of one DSP multiplier
    constants: dict[SSAValue, nn.ConstantOp] = field(default_factory=dict)  # weights: root -> constant
    host_inputs: list[SSAValue] = field(default_factory=list)  # roots the host fills per run
    outputs: list[SSAValue] = field(default_factory=list)  # roots the host reads back

    @property
    def nests(self) -> list[NestSchedule]:
        return [ns for engine in self.engines for ns in engine.nests]

    def expected_cycles(self) -> int:
        """What the schedule says the region takes: engines start as the mode says."""
        finish: dict[str, int] = {}
        clock = 0
        for engine in self.engines:
            start = max((finish[p] for p in engine.producers), default=0) if self.mode == "dataflow" else clock
            finish[engine.name] = start + sum(nest_cycles(ns, self.overhead)[1] for ns in engine.nests)
            clock = finish[engine.name]
        return max(finish.values(), default=0)


def buffer_name(root: SSAValue, number: int) -> str:
    if isinstance(root, OpResult) and isinstance(root.op, nn.ConstantOp) and root.op.param_name:
        return re.sub(r"\W", "_", root.op.param_name)
    if isinstance(root, BlockArgument):
        return f"input{root.index}"
    return f"buf{number}"


def _scalar(value: SSAValue) -> int:
    if isinstance(value, OpResult) and isinstance(value.op, arith.ConstantOp):
        return value.op.value.value.data  # type: ignore[union-attr]
    if isinstance(value, OpResult) and isinstance(value.op, nn.ConstantOp) and value.op.array().size == 1:
        return int(value.op.array().reshape(-1)[0])
    raise UnsupportedDesign("a scalar operand that is not a constant")


def _touched(op: Operation) -> list[bool]:
    """Per operand: whether the nest reads or writes it (a pooling window's shape operand is neither)."""
    if isinstance(op, linalg.GenericOp):
        output = len(op.operands) - 1
        return [bool(arg.uses) or k == output for k, arg in enumerate(op.body.block.args)]
    return [True] * len(op.operands)


def find_region(model: func.FuncOp, design: DesignEstimate) -> Region:
    flat = [(engine, ns) for engine in design.engines for ns in engine.nests]
    span = integer_span([ns.op for _, ns in flat])
    if span is None:
        raise UnsupportedDesign("the model has no integer loop nests (quantize it, e.g. --quantize int8)")
    first, last = span
    if not all(is_integer_nest(ns.op) for _, ns in flat[first:last + 1]):
        raise UnsupportedDesign("a float loop nest sits between integer ones; the RTL builds integer datapaths")
    chosen = flat[first:last + 1]
    engines: list[RtlEngine] = []
    for engine, ns in chosen:
        if not engines or engines[-1].name != engine.name:
            names = {e.name for e in engines}
            engines.append(RtlEngine(engine.name, [], [p for p in engine.producers if p in names]))
        engines[-1].nests.append(ns)

    accesses: dict[SSAValue, list[tuple[NestSchedule, int]]] = {}
    written: set[SSAValue] = set()
    scalars: dict[Operation, dict[int, int]] = {}
    touched: dict[Operation, list[bool]] = {}
    for _, ns in chosen:
        operands = list(ns.op.operands)
        scalars[ns.op] = {}
        touched[ns.op] = _touched(ns.op)
        for index, shape in enumerate(ns.nest.shapes):
            if not touched[ns.op][index]:
                continue
            if not shape:
                scalars[ns.op][index] = _scalar(operands[index])
                continue
            root = buffer_root(operands[index])
            accesses.setdefault(root, []).append((ns, index))
        written.add(buffer_root(operands[-1]))
    layouts = {root: make_layout(buffer_name(root, n), root, uses) for n, (root, uses) in enumerate(accesses.items())}
    plans = {ns.op: [plan_access(ns, k, layouts[buffer_root(v)]) if shape and touched[ns.op][k] else None
                     for k, (v, shape) in enumerate(zip(ns.op.operands, ns.nest.shapes))] for _, ns in chosen}
    region = Region(model.attributes[hls.MODE_ATTR].data, design.device.loop_overhead,  # type: ignore[union-attr]
                    engines, layouts, plans, scalars, design.device.dsp_width)
    for root in accesses:
        if root in written:
            continue
        if isinstance(root, OpResult) and isinstance(root.op, nn.ConstantOp):
            region.constants[root] = root.op
        else:
            region.host_inputs.append(root)
    region.outputs = [root for root in _read_after(model, {ns.op for _, ns in chosen}) if root in written]
    return region


def _read_after(model: func.FuncOp, region_ops: set[Operation]) -> list[SSAValue]:
    """Buffer roots read by host nests or returned, in first-use order."""
    roots: list[SSAValue] = []
    for op in model.walk():
        host_nest = isinstance(op, linalg.GenericOp | linalg.FillOp) and op not in region_ops
        if host_nest or isinstance(op, func.ReturnOp):
            for operand in (op.operands if isinstance(op, func.ReturnOp) else op.inputs):  # type: ignore[attr-defined]
                root = buffer_root(operand)
                if root not in roots:
                    roots.append(root)
    return roots
