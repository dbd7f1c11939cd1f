"""Run a compiled model with its integer region on the Verilog under Verilator.

The host computes the nests before the region with the schedule simulator,
writes what the region reads as memory images, runs the simulator binary,
reads the region's outputs back and finishes the nests after it. The
Verilog depends on the design, not on the weights or inputs (those are
image files), so one Verilator build serves every run of a design.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from xdsl.dialects import func
from xdsl.ir import Operation, SSAValue

from backends.fpga.design import DesignEstimate, buffer_root
from backends.fpga.rtl import top
from backends.fpga.rtl.images import buffer_images, write_images
from backends.fpga.rtl.region import Region, find_region
from backends.fpga.simulator import Simulator
from backends.rtl import verilator
from backends.rtl.export import export_verilog
from backends.rtl.netlist import design as hw_design
from compiler.diagnostics import InternalError
from dialects import hls
from passes.hls_directives import nest_of

HARNESS = verilator.Harness(top.TOP, scalars=("cycles",), readout_address="rd_addr", readout_data="rd_data")


@dataclass
class RtlDesign:
    """A model's region as Verilog, with the weights' memory images."""

    region: Region
    sources: dict[str, str]
    weight_images: dict[str, str]

    def initial_images(self) -> dict[str, str]:
        """Every bank image the design loads: the weights, and zeros where the host's values go."""
        images = dict(self.weight_images)
        for root in self.region.host_inputs:
            layout = self.region.layouts[root]
            images.update(buffer_images(layout, np.zeros(layout.shape, np.int64)))
        return images

    def lint(self) -> None:
        verilator.lint(self.sources, top.TOP)

    def build(self) -> verilator.Build:
        return verilator.build(self.sources, HARNESS)


def generate(model: func.FuncOp, design: DesignEstimate) -> RtlDesign:
    region = find_region(model, design)
    sources = export_verilog(hw_design(*top.build_modules(region)))
    images: dict[str, str] = {}
    for root, constant in region.constants.items():
        images.update(buffer_images(region.layouts[root], constant.array()))
    return RtlDesign(region, sources, images)


@dataclass
class RtlRun:
    outputs: list[np.ndarray]
    rtl_cycles: int  # the region, counted by the design
    host_cycles: int  # the nests around it, from their schedules
    simulated_nests: list[str] = field(default_factory=list)

    @property
    def cycles(self) -> int:
        return self.rtl_cycles + self.host_cycles


def _program(model: func.FuncOp) -> Iterator[Operation]:
    """The model's ops in execution order, engines opened up (their yields included)."""
    for op in model.body.block.ops:
        if isinstance(op, hls.EngineOp):
            yield from op.body.block.ops
            yield op
        else:
            yield op


def run(rtl: RtlDesign, model: func.FuncOp, simulator: Simulator, inputs: list[np.ndarray]) -> RtlRun:
    region = rtl.region
    region_ops = {ns.op for ns in region.nests}
    read_back = set(region.outputs)
    values: dict[SSAValue, np.ndarray] = dict(zip(model.body.block.args, inputs))
    latest: dict[SSAValue, np.ndarray] = {}  # buffer root -> its contents after the last op that wrote it
    host_cycles, rtl_cycles, ran = 0, 0, False

    def operand(value: SSAValue) -> np.ndarray:
        if value not in values:
            values[value] = latest[buffer_root(value)].reshape(value.type.get_shape())  # type: ignore[attr-defined]
        return values[value]

    for op in _program(model):
        if op in region_ops:
            if not ran:
                rtl_cycles = _run_region(rtl, latest, values, latest)
                ran = True
            continue
        if isinstance(op, func.ReturnOp):
            return RtlRun([operand(v) for v in op.operands], rtl_cycles, host_cycles)
        if isinstance(op, hls.YieldOp):
            continue
        if isinstance(op, hls.EngineOp):
            yielded = op.body.block.last_op.operands[0]  # type: ignore[union-attr]
            if yielded in values:
                values[op.outputs[0]] = values[yielded]
            continue
        for v in op.operands:
            operand(v)
        simulator.run_op(op, values)
        if nest_of(op) is not None:
            host_cycles += simulator.nest_cycles(op).cycles
        for result in op.results:
            if buffer_root(result) not in read_back:  # the region's results stand
                latest[buffer_root(result)] = values[result]
    raise InternalError("the model function has no func.return")


def _run_region(rtl: RtlDesign, latest: dict[SSAValue, np.ndarray], values: dict[SSAValue, np.ndarray],
                into: dict[SSAValue, np.ndarray]) -> int:
    region = rtl.region
    build = rtl.build()
    with tempfile.TemporaryDirectory(prefix="loom-fpga-rtl-") as work:
        workdir = Path(work)
        images = dict(rtl.weight_images)
        for root in region.host_inputs:
            images.update(buffer_images(region.layouts[root], latest[root] if root in latest else values[root]))
        write_images(images, workdir)
        _, bank_bits, row_bits = top.readout_fields(region)
        span = len(region.outputs) << (bank_bits + row_bits)
        result = build.run(workdir, limit=4 * region.expected_cycles() + 1000, first=0, count=span)
    if not result.done:
        raise InternalError(f"the FPGA RTL did not finish within {result.ticks} cycles")
    for number, root in enumerate(region.outputs):
        layout = region.layouts[root]
        flat = np.arange(int(np.prod(layout.shape)))
        bank, row = layout.place(flat)
        raw = np.array([result.words[top.readout_address(region, number, int(b), int(r))] for b, r in zip(bank, row)],
                       np.uint64)
        signed = raw.astype(np.int64) - ((raw >> np.uint64(layout.width - 1)) & np.uint64(1)).astype(np.int64) \
            * (1 << layout.width)
        dtype = {8: np.int8, 16: np.int16, 32: np.int32, 64: np.int64}[layout.width]
        into[root] = signed.astype(dtype).reshape(layout.shape)
    return result.scalars["cycles"]
