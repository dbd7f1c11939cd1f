"""Whole-model estimates: engines, their buffers, and dataflow vs. time multiplexing.

In *dataflow* mode every engine has its own datapath and engines run as
soon as the channels they read are full, so independent layers overlap
and a new input can enter every `interval` cycles (the slowest engine).
When that does not fit the device, one *time-multiplexed* engine runs the
layers one after another on shared multipliers and logic: area is the
largest layer's, latency the sum of all. Multipliers that still do not
fit are bound to LUTs instead of DSP blocks.

Buffers are counted once each, wherever they are read or written: a
tensor passed between engines is one buffer (the channel), as is an
accumulator and the tensors it is initialised from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from xdsl.dialects import func, tensor
from xdsl.dialects.builtin import (
    DictionaryAttr,
    IntegerAttr,
    StringAttr,
    TensorType,
    i64,
)
from xdsl.dialects.linalg import ops as linalg
from xdsl.ir import BlockArgument, OpResult, SSAValue

from backends.fpga.device import FpgaDevice, type_bits
from backends.fpga.fabric import fabric_luts
from backends.fpga.hls_model import NestSchedule, annotate, schedule_nest
from compiler.diagnostics import LoomError
from dialects import hls, nn
from passes.hls_directives import nest_of

MODES = ("auto", "dataflow", "time-multiplexed")


def buffer_root(value: SSAValue) -> SSAValue:
    """The buffer holding `value` in hardware: through destination operands,
    reshapes, channels and engine boundaries back to where storage begins."""
    while isinstance(value, OpResult):
        op = value.op
        if isinstance(op, linalg.GenericOp | linalg.FillOp):
            value = op.outputs[0]
        elif isinstance(op, tensor.CollapseShapeOp | tensor.ExpandShapeOp | hls.StreamOp | nn.ReshapeOp):
            value = op.operands[0]
        elif isinstance(op, hls.EngineOp):
            value = op.body.block.last_op.operands[value.index]  # type: ignore[union-attr]
        else:
            break
    return value


@dataclass
class EngineEstimate:
    engine: hls.EngineOp
    nests: list[NestSchedule]
    producers: list[str]
    start: int = 0
    fabric_luts: int = 0  # control, address walkers and crossbars of its nests

    @property
    def name(self) -> str:
        return self.engine.layer_name

    @property
    def latency(self) -> int:
        return sum(n.latency for n in self.nests)

    @property
    def dsps(self) -> int:
        return sum(n.dsps for n in self.nests)

    @property
    def luts(self) -> int:
        return sum(n.luts for n in self.nests) + self.fabric_luts


@dataclass
class DesignEstimate:
    device: FpgaDevice
    engines: list[EngineEstimate]
    mode: str
    reason: str
    dsps: int
    luts: int
    brams: int
    latency: int
    interval: int
    buffers: dict[str, tuple[str, int]] = field(default_factory=dict)  # name -> (engine, EBR blocks)

    def engine_brams(self, name: str) -> int:
        return sum(blocks for owner, blocks in self.buffers.values() if owner == name)

    @property
    def fits(self) -> bool:
        d = self.device
        return self.dsps <= d.dsps and self.luts <= d.luts and self.brams <= d.ebr_blocks

    def utilization(self) -> dict[str, float]:
        d = self.device
        return {"dsp": self.dsps / d.dsps, "lut": self.luts / d.luts, "bram": self.brams / d.ebr_blocks}

    def summary(self) -> dict[str, Any]:
        return {"mode": self.mode, "mode_reason": self.reason, "latency_cycles": self.latency,
                "interval_cycles": self.interval, "dsp": self.dsps, "lut": self.luts, "bram": self.brams,
                "fits": self.fits}


def _producers(engine: hls.EngineOp, by_op: dict[hls.EngineOp, str]) -> list[str]:
    found: list[str] = []
    for op in engine.walk():
        for operand in op.operands:
            root = operand
            while isinstance(root, OpResult) and isinstance(root.op, hls.StreamOp | nn.ReshapeOp
                                                             | tensor.CollapseShapeOp | tensor.ExpandShapeOp):
                root = root.op.operands[0]
            if isinstance(root, OpResult) and isinstance(root.op, hls.EngineOp) and root.op is not engine:
                name = by_op[root.op]
                if name not in found:
                    found.append(name)
    return found


def _buffer_blocks(engines: list[tuple[str, list[NestSchedule]]], device: FpgaDevice) -> dict[str, tuple[str, int]]:
    """Every buffer a nest keeps in memory: readable name -> (engine first using it, EBR blocks)."""
    banks: dict[SSAValue, int] = {}
    owner: dict[SSAValue, str] = {}
    for engine, nests in engines:
        for ns in nests:
            operands = list(ns.op.operands)
            for access in ns.accesses:
                if access.in_registers:
                    continue
                root = buffer_root(operands[access.operand])
                banks[root] = max(banks.get(root, 1), access.banks())
                owner.setdefault(root, engine)
    blocks: dict[str, tuple[str, int]] = {}
    for number, (root, count) in enumerate(banks.items()):
        t = root.type
        assert isinstance(t, TensorType)
        depth = math.ceil(math.prod(t.get_shape()) / count)
        in_lut_ram = depth * type_bits(t) <= device.register_bits  # priced in LUTs (fabric.py)
        blocks[_buffer_name(root, number)] = (owner[root], 0 if in_lut_ram else
                                              count * device.ebr_blocks_for(depth, type_bits(t)))
    return blocks


def _buffer_name(root: SSAValue, number: int) -> str:
    if isinstance(root, OpResult) and isinstance(root.op, nn.ConstantOp) and root.op.param_name:
        return root.op.param_name
    if isinstance(root, BlockArgument):
        return f"input{root.index}"
    return root.name_hint or f"buffer{number}"


def _rebind(nests: list[NestSchedule], device: FpgaDevice, over: int) -> list[NestSchedule]:
    """Move the multipliers of the most DSP-hungry nests to LUTs until `over` DSPs are freed."""
    out = list(nests)
    for index in sorted(range(len(out)), key=lambda i: -out[i].dsps):
        if over <= 0 or out[index].dsps == 0:
            break
        over -= out[index].dsps
        out[index] = schedule_nest(out[index].op, device, muls_on_lut=True)
    return out


def nests_area(nests: list[NestSchedule], device: FpgaDevice, shared: bool) -> tuple[int, int]:
    """(DSP blocks, LUTs) of nests side by side, or `shared` on one engine as large as
    the largest nest with its control; buffers' LUT RAM and write merges count either way."""
    fabric = fabric_luts(nests, device, buffer_root)
    if not shared:
        return sum(n.dsps for n in nests), sum(n.luts for n in nests) + fabric.total
    largest = max((n.luts + fabric.per_nest[n.op] for n in nests), default=0)
    return max((n.dsps for n in nests), default=0), largest + fabric.total - sum(fabric.per_nest.values())


def estimate_design(model: func.FuncOp, device: FpgaDevice, mode: str = "auto") -> DesignEstimate:
    """Schedule every nest of every engine of `model` and choose (or apply) the mode."""
    if mode not in MODES:
        raise LoomError(f"hls-schedule: mode must be one of {', '.join(MODES)}, got '{mode}'")
    engines_ops = [op for op in model.body.block.ops if isinstance(op, hls.EngineOp)]
    by_op = {e: e.layer_name for e in engines_ops}
    nests = [[schedule_nest(op, device) for op in e.body.block.ops if nest_of(op) is not None] for e in engines_ops]
    flat = [n for group in nests for n in group]
    streams = sum(isinstance(op, hls.StreamOp) for op in model.body.block.ops)
    buffers = _buffer_blocks([(e.layer_name, group) for e, group in zip(engines_ops, nests)], device)
    brams = sum(blocks for _, blocks in buffers.values())

    def dataflow_area(all_nests: list[NestSchedule]) -> tuple[int, int]:
        dsps, luts = nests_area(all_nests, device, shared=False)
        return dsps, luts + streams * device.channel_luts

    def shared_area(all_nests: list[NestSchedule]) -> tuple[int, int]:
        return nests_area(all_nests, device, shared=True)

    dsps, luts = dataflow_area(flat)
    fits_dataflow = dsps <= device.dsps and luts <= device.luts and brams <= device.ebr_blocks
    if mode == "auto":
        chosen = "dataflow" if fits_dataflow else "time-multiplexed"
        reason = ("every engine fits the device side by side" if fits_dataflow else
                  f"engines side by side need {dsps} DSPs and {luts} LUTs of {device.dsps} and {device.luts}")
    else:
        chosen, reason = mode, "requested"
    area = dataflow_area if chosen == "dataflow" else shared_area
    dsps, luts = area(flat)
    if dsps > device.dsps:
        if chosen == "dataflow":
            flat = _rebind(flat, device, dsps - device.dsps)
        else:
            flat = [schedule_nest(n.op, device, muls_on_lut=True) if n.dsps > device.dsps else n for n in flat]
        dsps, luts = area(flat)
        reason += "; multipliers beyond the DSP blocks are bound to LUTs"
    estimates, position = [], 0
    per_nest = fabric_luts(flat, device, buffer_root).per_nest
    for engine, group in zip(engines_ops, nests):
        mine = flat[position:position + len(group)]
        estimates.append(EngineEstimate(engine, mine, _producers(engine, by_op), fabric_luts=sum(per_nest[n.op] for n in mine)))
        position += len(group)
    finish: dict[str, int] = {}
    clock = 0
    for e in estimates:
        e.start = max((finish[p] for p in e.producers), default=0) if chosen == "dataflow" else clock
        finish[e.name] = e.start + e.latency
        clock = finish[e.name]
    latency = max(finish.values(), default=0)
    interval = max((e.latency for e in estimates), default=0) if chosen == "dataflow" else latency
    return DesignEstimate(device, estimates, chosen, reason, dsps, luts, brams, latency, interval, buffers)


def _integers(values: dict[str, int]) -> DictionaryAttr:
    return DictionaryAttr({k: IntegerAttr(v, i64) for k, v in values.items()})


def schedule_model(model: func.FuncOp, device: FpgaDevice, mode: str = "auto") -> DesignEstimate:
    """Schedule `model`'s engines and write every figure onto the IR."""
    design = estimate_design(model, device, mode)
    for engine in design.engines:
        for nest in engine.nests:
            annotate(nest)
        engine.engine.attributes[hls.ESTIMATE_ATTR] = _integers(
            {"start": engine.start, "latency": engine.latency, "dsp": engine.dsps, "lut": engine.luts,
             "bram": design.engine_brams(engine.name)})
    model.attributes[hls.MODE_ATTR] = StringAttr(design.mode)
    model.attributes[hls.ESTIMATE_ATTR] = DictionaryAttr({
        **_integers({"latency": design.latency, "interval": design.interval, "dsp": design.dsps,
                     "lut": design.luts, "bram": design.brams}).data,
        "fits": IntegerAttr(int(design.fits), 1),
    })
    return design
