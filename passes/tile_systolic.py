"""Expand each `systolic.gemm` into the accelerator schedule that computes it.

The fold order, residency and tile sizes come from `systolic_schedule`
(`make_plan`). This pass writes them out as a `systolic.kernel` whose region
works on the DRAM buffers of the operands:

- every scratchpad buffer is a `mem.alloc` at a fixed offset of its level
  (`systolic.offset`): resident operands first, then rotating slots for each
  streamed operand, and accumulator and output panels in the ofmap
  scratchpad, so buffers never collide however the tiles vary in size;
- tiles move with `mem.dma_start`, issued as far ahead as the slots allow
  (double buffering or more), and `mem.dma_wait` right before first use;
- a finished panel is post-processed by the output unit while the array goes
  on; its write-back starts once the unit is done (checked when the array
  next needs the slot, or at the next panel's end), and its buffers are
  reused `panel_slots` panels later;
- a requantized gemm's per-column multipliers and shifts become a constant
  [2, columns] i32 operand of the kernel (`scales`), resident beside the bias
  for the output unit; one multiplier and shift are immediates of the post.

The schedule is fully unrolled: the backend turns it into the instruction
stream one op at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from xdsl.builder import Builder
from xdsl.context import Context
from xdsl.dialects import memref
from xdsl.dialects.builtin import (
    IntegerAttr,
    MemRefType,
    ModuleOp,
    TensorType,
    f32,
    i32,
    i64,
)
from xdsl.ir import Attribute, Block, Region, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

from compiler.diagnostics import InternalError, LoomError
from compiler.model import models
from dialects import mem, nn
from dialects.systolic import (
    OFFSET_ATTR,
    ConfigureOp,
    DrainOp,
    GemmOp,
    KernelOp,
    PostprocessOp,
    PreloadOp,
    StreamOp,
    YieldOp,
    module_config,
)
from passes.systolic_schedule import (
    Box,
    Drain,
    ElementBytes,
    NotOnArray,
    Panel,
    Plan,
    Preload,
    Step,
    Stream,
    bias_view,
    make_plan,
    output_box,
    output_view,
    scales_view,
    step_operands,
)


@cache
def _offset_attr(offset: int) -> IntegerAttr:
    """Attributes are immutable, so buffers at one offset share one (building them is slow)."""
    return IntegerAttr(offset, i64)


@dataclass
class Fetch:
    """One copy of a box into a scratchpad, needed first by step `step`."""

    step: int
    box: Box
    resident: bool
    buffer: SSAValue | None = None
    token: SSAValue | None = None
    waited: bool = False
    ahead: bool = False  # issued before the step that needs it


@dataclass
class PanelState:
    """A panel's buffers and the tokens of its post-processing and write-back."""

    acc: SSAValue | None
    out: SSAValue | None = None
    box: Box | None = None
    posted: SSAValue | None = None
    post_waited: bool = False
    stored: SSAValue | None = None


def _tensor_type(value: SSAValue) -> TensorType:
    assert isinstance(value.type, TensorType)
    return value.type


def element_bytes(gemm: GemmOp) -> ElementBytes:
    """The element sizes of a gemm's kernel operands."""
    requant = gemm.requantization()
    return ElementBytes.of_types(_tensor_type(gemm.x).element_type, _tensor_type(gemm.result).element_type,
                                 _tensor_type(gemm.bias).element_type if gemm.bias is not None else None,
                                 requant is not None and requant.per_channel)


def scales_constant(gemm: GemmOp) -> nn.ConstantOp | None:
    """The per-column multipliers (row 0) and shifts (row 1) of a gemm
    requantized per channel, as the constant the output unit reads."""
    requant = gemm.requantization()
    if requant is None or not requant.per_channel:
        return None
    name = f"{gemm.layer.data}.scales"
    return nn.ConstantOp(np.array([requant.multipliers, requant.shifts], np.int32), i32, name)


class KernelEmitter:
    """Writes one gemm's schedule into a new kernel region."""

    def __init__(self, gemm: GemmOp, plan: Plan, scales: SSAValue | None):
        self.gemm = gemm
        self.plan = plan
        self.layout = plan.layout
        self.scales = scales
        self.types: dict[str, Attribute] = {
            "x": _tensor_type(gemm.x).element_type, "w": _tensor_type(gemm.w).element_type,
            "scales": i32, "y": _tensor_type(gemm.result).element_type}
        if gemm.bias is not None:
            self.types["bias"] = _tensor_type(gemm.bias).element_type
        self.acc_type: Attribute = f32 if self.types["x"] == f32 else i32
        shapes = self.layout.shapes()
        self.operands = ["x", "w"] + [box.operand for box in plan.column_boxes()]
        self.block = Block(arg_types=[mem.memref_in("DRAM", list(shapes[name]), self.types[name])
                                      for name in [*self.operands, "y"]])
        self.dram = dict(zip([*self.operands, "y"], self.block.args))
        self.builder = Builder(InsertPoint.at_end(self.block))
        self.regions = {level: {r.name: r for r in placed} for level, placed in plan.regions().items()}
        self.slot_turn = {"ifmap": 0, "filter": 0}
        self.slots = {level: sum(name.startswith("slot") for name in self.regions[level])
                      for level in ("ifmap", "filter")}
        self.panels: dict[int, PanelState] = {}  # panels whose buffers are still held

    # -- buffers and moves ----------------------------------------------------

    def alloc(self, level: str, shape: tuple[int, ...], element_type: Attribute, region: str) -> SSAValue:
        placed = self.regions[level][region]
        memref_type = mem.memref_in(level, list(shape), element_type)
        if mem.buffer_bytes(memref_type) > placed.size:
            raise InternalError(f"a {shape} buffer overflows {level} region {region} ({placed.size} bytes)")
        op = mem.AllocOp(memref_type, alignment=64)
        op.attributes[OFFSET_ATTR] = _offset_attr(placed.offset)
        return self.builder.insert(op).memref

    def dram_box(self, box: Box) -> SSAValue:
        """The DRAM buffer of `box.operand`, or a subview of it when the box is smaller."""
        source = self.dram[box.operand]
        source_type = source.type
        assert isinstance(source_type, MemRefType)
        if tuple(source_type.get_shape()) == box.size:
            return source
        return self.builder.insert(memref.SubviewOp.from_static_parameters(
            source, source_type, list(box.start), list(box.size), [1] * len(box.size))).result

    def issue(self, fetch: Fetch) -> None:
        level = fetch.box.level
        if fetch.resident:
            region = fetch.box.operand
        else:
            region = f"slot{self.slot_turn[level] % self.slots[level]}"
            self.slot_turn[level] += 1
        source = self.dram_box(fetch.box)
        fetch.buffer = self.alloc(level, fetch.box.size, self.types[fetch.box.operand], region)
        fetch.token = self.builder.insert(mem.DmaStartOp(source, fetch.buffer)).token

    def wait(self, fetch: Fetch) -> None:
        if not fetch.waited:
            self.builder.insert(mem.DmaWaitOp(fetch.token))  # type: ignore[arg-type]
            fetch.waited = True

    # -- the schedule -----------------------------------------------------------

    def fetches(self, steps: list[Step]) -> tuple[list[Fetch], list[list[Fetch]], dict[Box, Fetch]]:
        """Every copy into a scratchpad in the order the steps need them, the
        copies each step reads (in `step_operands` order), and the resident
        ones (fetched once; the output unit's bias and scales first)."""
        resident_boxes = set(self.plan.resident_boxes())
        fetches: list[Fetch] = []
        resident: dict[Box, Fetch] = {}
        for box in self.plan.column_boxes():
            resident[box] = Fetch(0, box, True)
            fetches.append(resident[box])
        uses: list[list[Fetch]] = []
        for index, step in enumerate(steps):
            needed = []
            for operand in step_operands(step):
                if operand.box not in resident_boxes:
                    fetches.append(Fetch(index, operand.box, False))
                elif operand.box not in resident:
                    resident[operand.box] = Fetch(index, operand.box, True)
                    fetches.append(resident[operand.box])
                needed.append(resident.get(operand.box) or fetches[-1])
            uses.append(needed)
        return fetches, uses, resident

    def run(self) -> KernelOp:
        config = self.plan.config
        self.builder.insert(ConfigureOp(config.rows, config.cols, config.dataflow, self.types["x"], self.acc_type))
        steps = list(self.plan.steps())
        self.drain_panels = _drain_panels(steps)
        fetches, uses, resident = self.fetches(steps)
        columns = {box.operand: resident[box] for box in self.plan.column_boxes()}
        pending = 0  # fetches[pending:] are not issued yet
        ahead = {"ifmap": 0, "filter": 0}  # streamed tiles issued before the step that needs them
        for index, step in enumerate(steps):
            for fetch in uses[index]:
                if fetch.ahead:
                    fetch.ahead = False
                    ahead[fetch.box.level] -= 1
            while pending < len(fetches):
                fetch = fetches[pending]
                if fetch.step > index and not fetch.resident:  # a prefetch: only into a free slot
                    if ahead[fetch.box.level] >= self.slots[fetch.box.level] - 1:
                        break
                    fetch.ahead = True
                    ahead[fetch.box.level] += 1
                self.issue(fetch)
                pending += 1
            for fetch in uses[index]:
                self.wait(fetch)
            self.emit(index, step, [fetch.buffer for fetch in uses[index]], columns)  # type: ignore[misc]
            for fetch in uses[index]:
                if not fetch.resident:
                    self.builder.insert(mem.DeallocOp(fetch.buffer))  # type: ignore[arg-type]
        for index in list(self.panels):
            self.write_back(index)
        for index in list(self.panels):
            self.release_out(index)
        for fetch in resident.values():
            self.builder.insert(mem.DeallocOp(fetch.buffer))  # type: ignore[arg-type]
        self.builder.insert(YieldOp())
        return self.kernel(steps)

    def emit(self, index: int, step: Step, buffers: list[SSAValue], columns: dict[str, Fetch]) -> None:
        """The array op of step `index`, reading `buffers` (one per operand of
        the step); a panel's post-processing reads the `columns` operands."""
        if isinstance(step, Preload):
            self.builder.insert(PreloadOp(buffers[0], step.source.view))
        elif isinstance(step, Stream):
            # Results leave the array while it streams, so their accumulators must be free by then.
            self.accumulator(self.drain_panels[index])
            top = step.top
            self.builder.insert(StreamOp(buffers[0], step.left.view, buffers[1] if top else None,
                                         top.view if top else None))
        elif isinstance(step, Drain):
            self.builder.insert(DrainOp(self.accumulator(step.panel), step.view, step.accumulate))
        else:
            self.finish(step.panel, columns)

    def accumulator(self, panel: Panel) -> SSAValue:
        """The panel's accumulators, allocated at its first stream once the
        panel that used the slot before has been post-processed."""
        if panel.index not in self.panels:
            if panel.index - self.plan.panel_slots in self.panels:
                self.write_back(panel.index - self.plan.panel_slots)
            acc = self.alloc("ofmap", (panel.rows, panel.pitch), self.acc_type,
                             f"acc{panel.index % self.plan.panel_slots}")
            self.panels[panel.index] = PanelState(acc)
        acc = self.panels[panel.index].acc
        assert acc is not None
        return acc

    def finish(self, panel: Panel, columns: dict[str, Fetch]) -> None:
        """Post-process `panel` beside the array; write back the one before
        and free the output slot this panel reuses."""
        for fetch in columns.values():
            self.wait(fetch)
        if panel.index - 1 in self.panels:
            self.write_back(panel.index - 1)
        if panel.index - self.plan.panel_slots in self.panels:
            self.release_out(panel.index - self.plan.panel_slots)
        state = self.panels[panel.index]
        state.box = output_box(self.layout, panel)
        state.out = self.alloc("ofmap", state.box.size, self.types["y"],
                               f"out{panel.index % self.plan.panel_slots}")
        bias = columns.get("bias")
        post = PostprocessOp(state.acc, panel.acc_view(), state.out, output_view(self.layout, panel),  # type: ignore[arg-type]
                             relu=self.gemm.relu is not None, bias=bias.buffer if bias else None,
                             bias_view=bias_view(self.layout, panel) if bias else None,
                             **self.conversion(panel, columns.get("scales")))
        state.posted = self.builder.insert(post).token

    def conversion(self, panel: Panel, scales: Fetch | None) -> dict:
        """How the output unit converts the sums: requantized (with one
        multiplier and shift, or the panel's columns of `scales`), wrapped to
        the integer result type, or kept (f32)."""
        requant = self.gemm.requantization()
        if requant is None:
            return {"mode": "none" if self.acc_type == f32 else "wrap"}
        if scales is None:
            return {"mode": "requant", "requant": (requant.multipliers[0], requant.shifts[0], requant.zero_point)}
        assert scales.buffer is not None
        return {"mode": "requant",
                "channel_requant": (scales.buffer, scales_view(self.layout, panel), requant.zero_point)}

    def write_back(self, index: int) -> None:
        """Wait for the panel's post-processing, free its accumulators and
        start writing its outputs to DRAM (each at most once)."""
        state = self.panels[index]
        if state.posted is None:
            return
        if not state.post_waited:
            self.builder.insert(mem.DmaWaitOp(state.posted))
            state.post_waited = True
        if state.acc is not None:
            self.builder.insert(mem.DeallocOp(state.acc))
            state.acc = None
        if state.stored is None:
            assert state.out is not None and state.box is not None
            state.stored = self.builder.insert(mem.DmaStartOp(state.out, self.dram_box(state.box))).token

    def release_out(self, index: int) -> None:
        """Wait for the panel's write-back and free its output buffer."""
        self.write_back(index)
        state = self.panels.pop(index)
        self.builder.insert(mem.DmaWaitOp(state.stored))  # type: ignore[arg-type]
        self.builder.insert(mem.DeallocOp(state.out))  # type: ignore[arg-type]

    def kernel(self, steps: list[Step]) -> KernelOp:
        p = self.plan.problem
        gemm = self.gemm
        inputs = [gemm.x, gemm.w] + [v for v in (gemm.bias, self.scales) if v is not None]
        folds = sum(isinstance(step, Drain) for step in steps)
        result_type = gemm.result.type
        assert isinstance(result_type, TensorType)
        return KernelOp(inputs, [result_type], Region([self.block]), gemm.layer.data, gemm.fused,
                        {"m": p.m, "k": p.k, "n": p.n, "groups": p.groups, "folds": folds,
                         "x_resident": int(self.plan.x_resident), "w_resident": int(self.plan.w_resident)})


@dataclass(frozen=True)
class TileSystolicPass(ModulePass):
    """Expand systolic.gemm ops into folds, tile moves and array ops (systolic.kernel)."""

    name = "tile-systolic"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        config = module_config(op)
        if config is None:
            raise LoomError("tile-systolic needs a module placed on an array: run convert-to-systolic first")
        op.attributes[mem.TARGET_ATTR] = mem.target_attr(
            {"ifmap": config.ifmap_bytes, "filter": config.filter_bytes, "ofmap": config.ofmap_bytes,
             "DRAM": config.dram_bytes})
        for function in models(op):
            for gemm in [o for o in function.body.ops if isinstance(o, GemmOp)]:
                try:
                    plan = make_plan(gemm.problem(), config, element_bytes(gemm), gemm.padding_value())
                except NotOnArray as e:
                    raise LoomError(f"layer '{gemm.layer.data}' does not fit the array: {e}") from None
                scales = scales_constant(gemm)
                if scales is not None:
                    Rewriter.insert_op(scales, InsertPoint.before(gemm))
                kernel = KernelEmitter(gemm, plan, scales.result if scales else None).run()
                Rewriter.replace_op(gemm, kernel)


def _drain_panels(steps: list[Step]) -> dict[int, Panel]:
    """The panel each stream step's results are drained into."""
    panels: dict[int, Panel] = {}
    panel = None
    for index in reversed(range(len(steps))):
        step = steps[index]
        if isinstance(step, Drain):
            panel = step.panel
        elif isinstance(step, Stream) and panel is not None:
            panels[index] = panel
    return panels
