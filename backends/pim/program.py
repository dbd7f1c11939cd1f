"""From the expanded module to a program: PIM kernels and host steps in order.

Each op of the model function becomes a `Step`: a PIM kernel (`pim.mac`
with its broadcast and read-out, or a `pim.read`), a host computation (any
nn or quant op, and `pim.reduce`), or a free step (constants, and the
broadcast and read-out values, whose bus traffic the kernel already
carries). The host's time for a step is its arithmetic at
`host_macs_per_cycle`, or the time to stream the constants it reads from the
stack over the bus, whichever is longer; a product whose matrix comes from a
`pim.read` overlaps its arithmetic with that read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, TensorType
from xdsl.ir import Operation, OpResult, SSAValue

from backends.pim.codegen import Kernel, host_read_kernel, pim_kernel
from compiler.diagnostics import InternalError
from compiler.model import find_model
from dialects import nn, quant
from dialects.pim import (
    BroadcastOp,
    Layout,
    MacOp,
    PimConfig,
    ReadOp,
    ReadoutOp,
    ReduceOp,
    module_config,
)

# Host arithmetic per result element of ops whose cost is not a product.
_TRANSCENDENTAL = (nn.GeluOp, nn.SigmoidOp, nn.TanhOp, nn.ExpOp, nn.SqrtOp, nn.SoftmaxOp, nn.LayerNormOp)
HOST_OPS_PER_ELEMENT = 8
HOST_OPS_PER_ELEMENT_SIMPLE = 1


@dataclass
class Step:
    op: Operation
    engine: str  # "pim", "host" or "free"
    kernel: Kernel | None = None
    host_cycles: int = 0
    host_macs: int = 0


@dataclass
class Program:
    config: PimConfig
    function: func.FuncOp
    steps: list[Step]
    rows: int  # bank rows the resident matrices occupy

    def resident(self) -> list[tuple[Layout, SSAValue]]:
        """Every matrix the units or the host read from the banks, with its layout."""
        return [(step.kernel.layout, step.op.operands[-1]) for step in self.steps
                if step.kernel is not None]


def _elements(value: SSAValue) -> int:
    t = value.type
    assert isinstance(t, TensorType)
    return math.prod(t.get_shape())


def _bytes(value: SSAValue) -> int:
    t = value.type
    assert isinstance(t, TensorType)
    return _elements(value) * nn.numpy_dtype(t.element_type).itemsize


def host_work(op: Operation, config: PimConfig) -> tuple[int, int]:
    """(cycles, arithmetic operations) of a host step."""
    if isinstance(op, (nn.MatmulOp, quant.MatmulOp)):
        k = op.operands[0].type.get_shape()[-1]  # type: ignore[attr-defined]
        work = _elements(op.results[0]) * k
    elif isinstance(op, ReduceOp):
        work = _elements(op.operands[0])
    else:
        per = HOST_OPS_PER_ELEMENT if isinstance(op, _TRANSCENDENTAL) else HOST_OPS_PER_ELEMENT_SIMPLE
        work = per * sum(_elements(r) for r in op.results)
    compute = work / config.host_macs_per_cycle
    streamed = sum(_bytes(v) for v in op.operands
                   if isinstance(v, OpResult) and isinstance(v.op, nn.ConstantOp) and _elements(v) > 1)
    read = sum(_bytes(v) for v in op.operands if isinstance(v, OpResult) and isinstance(v.op, ReadOp))
    # A product whose matrix the host reads from the stack multiplies as the
    # columns arrive: only arithmetic the read does not cover is left.
    cycles = max(compute - read / config.bus_bytes_per_cycle, streamed / config.bus_bytes_per_cycle, 0)
    return math.ceil(cycles), work


def build_program(module: ModuleOp) -> Program:
    function = find_model(module, None)
    config = module_config(module)
    if config is None:
        raise InternalError("the pim backend needs a module mapped by pim-map")
    steps: list[Step] = []
    rows = 0
    for op in function.body.ops:
        if isinstance(op, func.ReturnOp):
            continue
        if isinstance(op, (MacOp, ReadOp)):
            layout = op.get_layout()
            rows = max(rows, layout.row_base + layout.bank_rows)
            kernel = pim_kernel(layout, op.mode.data, config) if isinstance(op, MacOp) else \
                host_read_kernel(layout, config)
            steps.append(Step(op, "pim", kernel=kernel))
        elif isinstance(op, (nn.ConstantOp, BroadcastOp, ReadoutOp)):
            steps.append(Step(op, "free"))
        else:
            cycles, work = host_work(op, config)
            steps.append(Step(op, "host", host_cycles=cycles, host_macs=work))
    return Program(config, function, steps, rows)


def host_energy_pj(step: Step, config: PimConfig) -> float:
    """Host arithmetic at the MAC energy of its dtype (f32 for floats)."""
    if not step.host_macs:
        return 0.0
    element = step.op.operands[0].type.element_type if step.op.operands else None  # type: ignore[attr-defined]
    dtype = "i8" if element is not None and nn.dtype_name(element) in ("i8", "i32") else "f32"
    return step.host_macs * config.mac_pj(dtype)

