"""From the lowered module to an instruction stream and a DRAM image.

Every tensor of the model gets a place in DRAM (inputs, constants, each op's
result), allocated upwards in program order. Constants are written into the
initial DRAM image. Each `systolic.kernel` is translated op by op: buffers
live at the scratchpad offsets `tile-systolic` chose, a `mem.dma_start`
becomes one or more 2-D `dma.load`/`dma.store` (dims that are contiguous on
both sides are merged first), views become view-register loads, and the
array ops map one to one. An nn or quant op left for the host becomes a
`host` instruction naming an entry of the host-call table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from xdsl.dialects import func, memref
from xdsl.dialects.builtin import MemRefType, ModuleOp, TensorType
from xdsl.ir import Attribute, SSAValue

from backends.systolic import isa
from compiler.artifact import ModelSignature
from compiler.diagnostics import InternalError, LoomError
from compiler.model import find_model
from dialects import mem, nn
from dialects import systolic as sy

ALIGNMENT = 64
MAX_DMA_ROWS = (1 << 16) - 1
DTYPE_NAMES = {"i8": np.dtype(np.int8), "i32": np.dtype(np.int32), "f32": np.dtype(np.float32)}


@dataclass(frozen=True)
class Place:
    """A tensor in DRAM: contiguous, row-major."""

    address: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def read(self, dram: np.ndarray) -> np.ndarray:
        return dram[self.address:self.address + self.nbytes].view(self.dtype).reshape(self.shape).copy()

    def write(self, dram: np.ndarray, value: np.ndarray) -> None:
        data = np.ascontiguousarray(value, dtype=self.dtype).reshape(-1).view(np.uint8)
        dram[self.address:self.address + self.nbytes] = data


@dataclass
class HostCall:
    """An nn or quant op the host runs between accelerator instructions."""

    op: nn.InferredOperation
    operands: list[Place]
    result: Place

    @property
    def kind(self) -> str:
        return self.op.name.removeprefix("nn.")

    @property
    def reason(self) -> str:
        attr = self.op.attributes.get(sy.HOST_ATTR)
        return attr.data if attr is not None else ""  # type: ignore[union-attr]


@dataclass
class Layer:
    """A `systolic.kernel`: what the report says about it."""

    name: str
    fused: list[str]
    problem: dict[str, int]


@dataclass
class Compiled:
    config: sy.ArrayConfig
    program: list[isa.Instruction]
    image: np.ndarray  # initial DRAM contents up to the last constant
    dram_bytes: int
    inputs: dict[str, Place]
    outputs: dict[str, Place]
    host_calls: list[HostCall] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)


@dataclass(frozen=True)
class Ref:
    """Where a memref value lives: a space, a byte address and element strides."""

    space: str  # "DRAM" or a scratchpad
    address: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    itemsize: int


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def _dtype_code(element_type: Attribute) -> str:
    name = nn.dtype_name(element_type)
    if name not in DTYPE_NAMES:
        raise InternalError(f"the array has no {name} datapath")
    return name


def dma_rows(shape: tuple[int, ...], src: tuple[int, ...],
             dst: tuple[int, ...]) -> list[tuple[int, int, int, int, int, int]]:
    """A copy of `shape` elements between two strided layouts as 2-D transfers:
    (src offset, dst offset, rows, row elements, src row stride, dst row stride)
    in elements, dims contiguous on both sides merged first."""
    dims = [(n, s, d) for n, s, d in zip(shape, src, dst) if n != 1]
    if not dims or dims[-1][1:] != (1, 1):
        dims.append((1, 1, 1))  # rows of one element: a strided gather
    merged = [dims[-1]]
    for n, s, d in reversed(dims[:-1]):
        inner_n, inner_s, inner_d = merged[0]
        if s == inner_n * inner_s and d == inner_n * inner_d:
            merged[0] = (n * inner_n, inner_s, inner_d)
        else:
            merged.insert(0, (n, s, d))
    inner_n, inner_s, inner_d = merged[-1]
    if inner_s != 1 or inner_d != 1:
        raise InternalError(f"a DMA needs rows contiguous on both sides, got strides {src} and {dst}")
    rows = merged[-2] if len(merged) > 1 else (1, inner_n, inner_n)
    outer = merged[:-2]
    transfers = []
    for index in np.ndindex(*[n for n, _, _ in outer]):
        src_offset = sum(i * s for i, (_, s, _) in zip(index, outer))
        dst_offset = sum(i * d for i, (_, _, d) in zip(index, outer))
        for first in range(0, rows[0], MAX_DMA_ROWS):  # the rows field is 16 bits wide
            count = min(MAX_DMA_ROWS, rows[0] - first)
            transfers.append((src_offset + first * rows[1], dst_offset + first * rows[2], count, inner_n,
                              rows[1], rows[2]))
    return transfers


class KernelTranslator:
    """Translates one kernel region, sharing tags and view registers with the program."""

    def __init__(self, emitter: ProgramEmitter, kernel: sy.KernelOp, places: list[Place]):
        self.emitter = emitter
        self.refs: dict[SSAValue, Ref] = {}
        for arg, place in zip(kernel.body.block.args, places):
            shape = tuple(arg.type.get_shape())  # type: ignore[attr-defined]
            self.refs[arg] = Ref("DRAM", place.address, shape, _contiguous_strides(shape), place.dtype.itemsize)
        self.tokens: dict[SSAValue, list[int]] = {}

    def emit(self, instruction: isa.Instruction) -> None:
        self.emitter.program.append(instruction)

    def run(self, kernel: sy.KernelOp) -> None:
        handlers = {
            memref.SubviewOp: self.subview, mem.AllocOp: self.alloc, mem.DmaStartOp: self.dma,
            mem.DmaWaitOp: self.wait, sy.ConfigureOp: self.configure, sy.PreloadOp: self.preload,
            sy.StreamOp: self.stream, sy.DrainOp: self.drain, sy.PostprocessOp: self.post,
        }
        for op in kernel.body.block.ops:
            handler = handlers.get(type(op))
            if handler is not None:
                handler(op)
            elif not isinstance(op, (mem.DeallocOp, sy.YieldOp)):
                raise InternalError(f"the systolic backend cannot translate '{op.name}' inside a kernel")

    # -- memory ---------------------------------------------------------------

    def subview(self, op: memref.SubviewOp) -> None:
        source = self.refs[op.source]
        if op.offsets or op.sizes or op.strides:
            raise InternalError("subviews in kernels are static")
        offsets = op.static_offsets.get_values()
        steps = op.static_strides.get_values()
        address = source.address + sum(o * s for o, s in zip(offsets, source.strides)) * source.itemsize
        self.refs[op.result] = Ref(source.space, address, tuple(op.static_sizes.get_values()),
                                   tuple(s * t for s, t in zip(source.strides, steps)), source.itemsize)

    def alloc(self, op: mem.AllocOp) -> None:
        memref_type = op.memref.type
        assert isinstance(memref_type, MemRefType)
        level = memref_type.memory_space.level.data  # type: ignore[union-attr]
        offset = op.attributes.get(sy.OFFSET_ATTR)
        if offset is None:
            raise InternalError("scratchpad buffers need a systolic.offset")
        shape = tuple(memref_type.get_shape())
        itemsize = nn.numpy_dtype(memref_type.get_element_type()).itemsize
        self.refs[op.memref] = Ref(level, offset.value.data, shape, _contiguous_strides(shape), itemsize)  # type: ignore[attr-defined]

    def dma(self, op: mem.DmaStartOp) -> None:
        src, dst = self.refs[op.source], self.refs[op.destination]
        load = src.space == "DRAM"
        dram, spad = (src, dst) if load else (dst, src)
        if dram.space != "DRAM" or spad.space not in isa.SPADS:
            raise InternalError(f"a DMA runs between DRAM and a scratchpad, not {src.space} and {dst.space}")
        tags = []
        for dram_offset, spad_offset, rows, row_elements, dram_stride, spad_stride in dma_rows(
                dram.shape, dram.strides, spad.strides):
            tag = self.emitter.next_tag()
            size = dram.itemsize
            self.emit(isa.make(
                "dma.load" if load else "dma.store", tag=tag, spad=isa.SPADS.index(spad.space),
                spad_addr=spad.address + spad_offset * size, dram_addr=dram.address + dram_offset * size,
                rows=rows, row_bytes=row_elements * size, dram_stride=dram_stride * size,
                spad_stride=spad_stride * size))
            tags.append(tag)
        self.tokens[op.token] = tags

    def wait(self, op: mem.DmaWaitOp) -> None:
        for tag in self.tokens.pop(op.token):
            self.emit(isa.make("wait", tag=tag))

    # -- the array ------------------------------------------------------------

    def configure(self, op: sy.ConfigureOp) -> None:
        self.emit(isa.make("config", rows=op.rows.value.data, cols=op.cols.value.data,
                           dataflow=isa.DATAFLOWS.index(op.dataflow.data),
                           in_dtype=isa.DTYPES.index(_dtype_code(op.operand_type)),
                           acc_dtype=isa.DTYPES.index(_dtype_code(op.acc_type))))

    def view(self, slot: int, buffer: SSAValue, attr: Attribute) -> None:
        ref = self.refs[buffer]
        element_type = buffer.type.get_element_type()  # type: ignore[attr-defined]
        view = sy.view_from_attr(attr)
        common = dict(slot=slot, spad=isa.SPADS.index(ref.space), dtype=isa.DTYPES.index(_dtype_code(element_type)),
                      offset=ref.address + view.offset * ref.itemsize, rows=view.rows, cols=view.cols)
        if isinstance(view, sy.MatrixView):
            instruction = isa.make("view", **common, row_stride=view.row_stride, col_stride=view.col_stride)
        else:
            fields = view.start() | {k: getattr(view, k) for k in (
                "out_w", "kernel_h", "kernel_w", "stride_h", "stride_w", "dilation_h",
                "dilation_w", "row0", "col0", "band_h", "band_w", "channel_stride", "transpose", "pad_value")}
            instruction = isa.make("view.im2col", **common, **fields)
        self.emitter.set_view(slot, instruction)

    def preload(self, op: sy.PreloadOp) -> None:
        self.view(isa.SLOT_PRELOAD, op.source, op.view)
        self.emit(isa.make("preload"))

    def stream(self, op: sy.StreamOp) -> None:
        self.view(isa.SLOT_LEFT, op.left, op.left_view)
        if op.top is not None:
            self.view(isa.SLOT_TOP, op.top, op.top_view)  # type: ignore[arg-type]
        self.emit(isa.make("stream", top=int(op.top is not None)))

    def drain(self, op: sy.DrainOp) -> None:
        self.view(isa.SLOT_DRAIN, op.target, op.view)
        self.emit(isa.make("drain", accumulate=int(op.accumulate is not None)))

    def post(self, op: sy.PostprocessOp) -> None:
        self.view(isa.SLOT_ACC, op.acc, op.acc_view)
        if op.bias is not None:
            self.view(isa.SLOT_BIAS, op.bias, op.bias_view)  # type: ignore[arg-type]
        self.view(isa.SLOT_OUT, op.out, op.out_view)
        if op.scales is not None:
            self.view(isa.SLOT_SCALES, op.scales, op.scales_view)  # type: ignore[arg-type]
        tag = self.emitter.next_tag()
        out_type = op.out.type.get_element_type()  # type: ignore[attr-defined]
        self.emit(isa.make(
            "post", tag=tag, bias=int(op.bias is not None), relu=int(op.relu is not None),
            mode=isa.POST_MODES.index(op.mode.data), out_dtype=isa.DTYPES.index(_dtype_code(out_type)),
            multiplier=op.multiplier.value.data if op.multiplier else 0,
            shift=op.shift.value.data if op.shift else 0,
            zero_point=op.zero_point.value.data if op.zero_point else 0, per_channel=int(op.scales is not None)))
        self.tokens[op.token] = [tag]


class ProgramEmitter:
    """Walks the model function in order, placing tensors and emitting instructions."""

    def __init__(self, module: ModuleOp, signature: ModelSignature):
        self.module = module
        self.signature = signature
        self.config = sy.module_config(module)
        if self.config is None:
            raise LoomError("the systolic backend needs a module lowered by convert-to-systolic,tile-systolic")
        self.program: list[isa.Instruction] = []
        self.places: dict[SSAValue, Place] = {}
        self.top = 0
        self.constants: list[tuple[Place, np.ndarray]] = []
        self.tag = 0
        self.views: dict[int, isa.Instruction] = {}

    def next_tag(self) -> int:
        tag = self.tag
        self.tag = (self.tag + 1) % (1 << 16)
        return tag

    def set_view(self, slot: int, instruction: isa.Instruction) -> None:
        """Load a view register unless it already holds this view."""
        if self.views.get(slot) != instruction:
            self.views[slot] = instruction
            self.program.append(instruction)

    def place(self, value: SSAValue) -> Place:
        t = value.type
        assert isinstance(t, TensorType)
        place = Place(self.top, tuple(t.get_shape()), nn.numpy_dtype(t.element_type))
        self.top += -(-max(place.nbytes, 1) // ALIGNMENT) * ALIGNMENT
        self.places[value] = place
        return place

    def run(self) -> Compiled:
        function = find_model(self.module, self.signature.name)
        inputs = {spec.name: self.place(arg) for spec, arg in zip(self.signature.inputs, function.body.block.args)}
        compiled = Compiled(self.config, self.program, np.zeros(0, np.uint8), 0, inputs, {})  # type: ignore[arg-type]
        for op in function.body.block.ops:
            if isinstance(op, nn.ConstantOp):
                self.constants.append((self.place(op.result), op.array()))
            elif isinstance(op, sy.KernelOp):
                self.kernel(op, compiled)
            elif isinstance(op, nn.InferredOperation):
                self.host(op, compiled)
            elif isinstance(op, func.ReturnOp):
                compiled.outputs = {spec.name: self.places[v] for spec, v in zip(self.signature.outputs, op.arguments)}
            else:
                raise InternalError(f"the systolic backend cannot run '{op.name}' (was tile-systolic run?)")
        self.program.append(isa.make("halt"))
        image_end = max((p.address + p.nbytes for p, _ in self.constants), default=0)
        compiled.image = np.zeros(image_end, np.uint8)
        for place, array in self.constants:
            place.write(compiled.image, array)
        compiled.dram_bytes = self.top
        if self.top > self.config.dram_bytes:
            raise LoomError(f"the model needs {self.top} bytes of DRAM, the target has {self.config.dram_bytes}")
        return compiled

    def kernel(self, op: sy.KernelOp, compiled: Compiled) -> None:
        places = [self.places[v] for v in op.inputs] + [self.place(r) for r in op.outputs]
        self.program.append(isa.make("layer", id=len(compiled.layers)))
        compiled.layers.append(Layer(op.layer.data, [s.data for s in op.fused], op.problem_values()))
        KernelTranslator(self, op, places).run(op)

    def host(self, op: nn.InferredOperation, compiled: Compiled) -> None:
        call = HostCall(op, [self.places[v] for v in op.operands], self.place(op.result))
        self.program.append(isa.make("host", op=len(compiled.host_calls)))
        compiled.host_calls.append(call)


def compile_program(module: ModuleOp, signature: ModelSignature) -> Compiled:
    return ProgramEmitter(module, signature).run()
