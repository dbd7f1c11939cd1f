"""The `systolic` dialect: a weight-, output- or input-stationary systolic array.

Two levels live here. `systolic.gemm` is a tensor-level op: a matrix product
(or a convolution read as one through im2col) with its fused epilogue, placed
on the array by `convert-to-systolic`; every nn op left beside it runs on the
host, so the split is visible in the IR. `tile-systolic` then expands each
`systolic.gemm` into a `systolic.kernel`, whose region is the accelerator's
schedule: scratchpad buffers (`mem.alloc` in the `ifmap`, `filter` and `ofmap`
levels), tile moves from DRAM (`mem.dma_start` / `mem.dma_wait`) and the array
ops below, one fold at a time:

    systolic.configure {rows = 16, cols = 16, dataflow = "ws", ...}
    systolic.preload %w_tile {view = {...}}             // the stationary operand
    systolic.stream %x_tile {left = {...}}              // T rows through the array
    systolic.drain %acc {view = {...}, accumulate}      // partial sums to the ofmap scratchpad
    %done = systolic.postprocess %acc, %bias, %out {...} // bias, relu, requantize

What each dataflow keeps stationary (GEMM view: Y[M,N] = X[M,K] W[K,N], an
R x C array):

| dataflow | stationary in the PEs | streamed, T =   | one fold covers      |
|----------|-----------------------|-----------------|----------------------|
| ws       | W tile (k x n)        | X rows, T = M   | R values of k, C of n|
| is       | X tile (k x m)        | W cols, T = N   | R values of k, C of m|
| os       | Y tile (m x n)        | X and W, T = K  | R values of m, C of n|

Operands of the array ops are read through *views*: a matrix view
(`#systolic.matrix<...>`: element `offset + i * row_stride + j * col_stride`
of a buffer) or an im2col view (`#systolic.im2col<...>`) that forms
convolution windows from a band of an NCHW feature map on the fly, padding
included. `view_from_attr` and `to_attr` convert between the attributes and
the `MatrixView` / `Im2colView` dataclasses the passes compute with.

The array's configuration (size, dataflow, scratchpad sizes, DRAM bandwidth)
is the module attribute `systolic.config`, so a module carries what it was
compiled for and verifies the same way anywhere.
"""

from __future__ import annotations

import math
from abc import ABC
from collections.abc import Sequence
from dataclasses import asdict, astuple, dataclass, fields, replace
from functools import cache

from xdsl.dialects.builtin import (
    ArrayAttr,
    DenseArrayBase,
    DictionaryAttr,
    FloatAttr,
    IntegerAttr,
    MemRefType,
    ModuleOp,
    StringAttr,
    TensorType,
    UnitAttr,
    f64,
    i8,
    i32,
    i64,
)
from xdsl.ir import Attribute, Dialect, Operation, Region, SSAValue
from xdsl.irdl import (
    AttrSizedOperandSegments,
    IRDLOperation,
    ParsePropInAttrDict,
    irdl_attr_definition,
    irdl_op_definition,
    operand_def,
    opt_operand_def,
    opt_prop_def,
    prop_def,
    region_def,
    result_def,
    traits_def,
    var_operand_def,
    var_result_def,
)
from xdsl.traits import IsolatedFromAbove, IsTerminator, Pure
from xdsl.utils.exceptions import VerifyException

from dialects import nn
from dialects.mem import TokenType
from dialects.quant import MAX_SHIFT
from dialects.record_attr import RecordAttr

CONFIG_ATTR = "systolic.config"
HOST_ATTR = "systolic.host"  # on nn ops left for the host: why they are not on the array
DATAFLOWS = ("ws", "os", "is")
SCRATCHPADS = ("ifmap", "filter", "ofmap")
OFFSET_ATTR = "systolic.offset"  # on mem.alloc: the buffer's byte offset in its scratchpad

# What the hardware's address generators can express; the instruction
# encoding (backends/systolic/isa.py) is sized from these.
MAX_VIEW_EXTENT = (1 << 16) - 1  # rows or columns of one view
IM2COL_LIMITS = {"kernel": 15, "stride": 15, "dilation": 15, "padding": 255, "width": 4095, "height": 4095,
                 "pixels": (1 << 20) - 1, "window": (1 << 20) - 1}


# --------------------------------------------------------------------------
# The array's configuration
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ArrayConfig:
    """Everything the lowering and the simulator need to know about the hardware.

    `dtypes` are the operand types the multipliers take (products accumulate
    in i32 for integers, f32 for f32). Scratchpad sizes are bytes; DRAM moves
    `dram_bytes_per_cycle` after `dram_latency` cycles per transfer.
    """

    rows: int
    cols: int
    dataflow: str
    ifmap_bytes: int
    filter_bytes: int
    ofmap_bytes: int
    dram_bytes: int
    dram_bytes_per_cycle: float
    dram_latency: int
    clock_hz: float
    dtypes: tuple[str, ...]

    def scratchpad_bytes(self, level: str) -> int:
        return {"ifmap": self.ifmap_bytes, "filter": self.filter_bytes, "ofmap": self.ofmap_bytes}[level]

    def to_attr(self) -> DictionaryAttr:
        out: dict[str, Attribute] = {}
        for name, value in asdict(self).items():
            if isinstance(value, str):
                out[name] = StringAttr(value)
            elif isinstance(value, float):
                out[name] = FloatAttr(value, f64)
            elif isinstance(value, (tuple, list)):
                out[name] = ArrayAttr([StringAttr(v) for v in value])
            else:
                out[name] = IntegerAttr(value, i64)
        return DictionaryAttr(out)

    @staticmethod
    def from_attr(attr: Attribute) -> ArrayConfig:
        if not isinstance(attr, DictionaryAttr):
            raise VerifyException(f"{CONFIG_ATTR} must be a dictionary")
        values = {}
        for field in fields(ArrayConfig):
            if field.name not in attr.data:
                raise VerifyException(f"{CONFIG_ATTR} is missing '{field.name}'")
            value = attr.data[field.name]
            if isinstance(value, StringAttr):
                values[field.name] = value.data
            elif isinstance(value, FloatAttr):
                values[field.name] = float(value.value.data)
            elif isinstance(value, ArrayAttr):
                values[field.name] = tuple(v.data for v in value.data)  # type: ignore[union-attr]
            elif isinstance(value, IntegerAttr):
                values[field.name] = value.value.data
            else:
                raise VerifyException(f"{CONFIG_ATTR}.{field.name} has an unexpected value {value}")
        config = ArrayConfig(**values)
        if config.dataflow not in DATAFLOWS:
            raise VerifyException(f"{CONFIG_ATTR}: dataflow must be one of {', '.join(DATAFLOWS)}")
        return config


@cache
def _config_of(attr: Attribute) -> ArrayConfig:
    return ArrayConfig.from_attr(attr)


def module_config(op: Operation) -> ArrayConfig | None:
    """The `systolic.config` of the nearest enclosing module declaring one
    (decoded once per attribute: every array op's verifier asks)."""
    current: Operation | None = op
    while current is not None:
        if isinstance(current, ModuleOp) and CONFIG_ATTR in current.attributes:
            return _config_of(current.attributes[CONFIG_ATTR])
        current = current.parent_op()
    return None


# --------------------------------------------------------------------------
# Views: how an array op reads (or writes) a matrix in a scratchpad buffer
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class MatrixView:
    """Element (i, j), 0 <= i < rows, 0 <= j < cols, is element
    `offset + i * row_stride + j * col_stride` of the buffer."""

    rows: int
    cols: int
    offset: int
    row_stride: int
    col_stride: int

    def transposed(self) -> MatrixView:
        return MatrixView(self.cols, self.rows, self.offset, self.col_stride, self.row_stride)

    def shape(self) -> tuple[int, int]:
        return self.rows, self.cols

    def last_element(self) -> int:
        return self.offset + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride

    def to_attr(self) -> MatrixViewAttr:
        return MatrixViewAttr(astuple(self))


@dataclass(frozen=True)
class Im2colView:
    """Convolution windows formed from a band of an NCHW feature map.

    The buffer holds planes of `band_h` x `band_w` elements, `channel_stride`
    apart. Row i is output pixel p = pixel0 + i at (oh, ow) = divmod(p,
    out_w); column j is window element q = k0 + j at (c, kh, kw) in
    row-major order over (channels, kernel_h, kernel_w). It reads input row
    oh * stride_h + kh * dilation_h - row0 of the band and column ow *
    stride_w + kw * dilation_w - col0; outside the band it reads `pad_value`
    (zero, or the zero point of a quantized input), which is how padding is
    made. `transpose` swaps rows and columns (the input-stationary dataflow
    preloads X transposed).
    """

    rows: int
    cols: int
    offset: int
    pixel0: int
    k0: int
    out_w: int
    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    dilation_h: int
    dilation_w: int
    row0: int
    col0: int
    band_h: int
    band_w: int
    channel_stride: int
    transpose: int = 0
    pad_value: int = 0

    def transposed(self) -> Im2colView:
        return replace(self, transpose=1 - self.transpose)

    def start(self) -> dict[str, int]:
        """Row 0's output pixel (oh0, ow0) and column 0's window element (c0, kh0, kw0):
        what the instruction carries, so the hardware starts without dividing."""
        oh0, ow0 = divmod(self.pixel0, self.out_w)
        c0, within = divmod(self.k0, self.kernel_h * self.kernel_w)
        kh0, kw0 = divmod(within, self.kernel_w)
        return dict(oh0=oh0, ow0=ow0, c0=c0, kh0=kh0, kw0=kw0)

    @property
    def channels(self) -> int:
        return (self.k0 + self.cols - 1) // (self.kernel_h * self.kernel_w) + 1

    def shape(self) -> tuple[int, int]:
        return (self.cols, self.rows) if self.transpose else (self.rows, self.cols)

    def last_element(self) -> int:
        return self.offset + (self.channels - 1) * self.channel_stride + self.band_h * self.band_w - 1

    def to_attr(self) -> Im2colViewAttr:
        return Im2colViewAttr(astuple(self))


View = MatrixView | Im2colView


class ViewAttr(RecordAttr, ABC):
    """A view's integers, printed by name: `#systolic.matrix<rows = 4, cols = 8, ...>`."""

    def view(self) -> View:
        return self.record()


@irdl_attr_definition
class MatrixViewAttr(ViewAttr):
    name = "systolic.matrix"
    RECORD = MatrixView


@irdl_attr_definition
class Im2colViewAttr(ViewAttr):
    name = "systolic.im2col"
    RECORD = Im2colView


def view_shape(view: View) -> tuple[int, int]:
    return view.shape()


def view_from_attr(attr: Attribute) -> View:
    if not isinstance(attr, ViewAttr):
        raise VerifyException(f"expected a #systolic.matrix or #systolic.im2col view, got {attr}")
    if len(attr.data) != len(attr.field_names()):
        raise VerifyException(f"#{attr.name} needs {len(attr.field_names())} values, got {len(attr.data)}")
    view = attr.view()
    if min(view.shape()) < 1 or (isinstance(view, Im2colView) and min(
            view.out_w, view.kernel_h, view.kernel_w, view.stride_h, view.stride_w,
            view.dilation_h, view.dilation_w, view.band_h, view.band_w) < 1):
        raise VerifyException(f"#{attr.name} has a non-positive extent: {view}")
    if view.offset < 0 or (isinstance(view, MatrixView) and min(view.row_stride, view.col_stride) < 0):
        raise VerifyException(f"#{attr.name} has a negative offset or stride: {view}")
    return view


def _check_view(op: Operation, buffer: SSAValue, attr: Attribute, what: str) -> View:
    view = view_from_attr(attr)
    memref = buffer.type
    assert isinstance(memref, MemRefType)
    elements = math.prod(memref.get_shape())
    if view.last_element() >= elements:
        raise VerifyException(
            f"{op.name}: the {what} view reaches element {view.last_element()} of a {elements}-element buffer"
        )
    return view


# --------------------------------------------------------------------------
# Tensor level: a matrix product or convolution placed on the array
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvGeometry:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int


@dataclass(frozen=True)
class GemmProblem:
    """The matrix product a `systolic.gemm` computes, per group:
    M output rows (pixels), K reduction length, N output columns."""

    m: int
    k: int
    n: int
    groups: int
    conv: ConvGeometry | None
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]

    @property
    def macs(self) -> int:
        return self.m * self.k * self.n * self.groups

    @staticmethod
    def of(x_shape: Sequence[int], w_shape: Sequence[int], y_shape: Sequence[int],
           conv: ConvGeometry | None) -> GemmProblem:
        """The product behind a gemm with these operand shapes (see `GemmOp`)."""
        xs, ws, ys = tuple(x_shape), tuple(w_shape), tuple(y_shape)
        if conv is None:
            return GemmProblem(math.prod(xs[:-1]), xs[-1], ws[-1], 1, None, xs, ys)
        batch, _, out_h, out_w = ys
        return GemmProblem(batch * out_h * out_w, ws[1], ws[2], conv.groups, conv, xs, ys)


def _pair(attr: DenseArrayBase | None) -> tuple[int, int] | None:
    return None if attr is None else tuple(attr.get_values())  # type: ignore[return-value]


@dataclass(frozen=True)
class Requantization:
    """What the output unit does to a quantized gemm's i32 sums (see
    `quant.requantize`): `multipliers` and `shifts` hold one value, or one
    per output column or channel; relu clamps at `zero_point`."""

    multipliers: tuple[int, ...]
    shifts: tuple[int, ...]
    zero_point: int

    @property
    def per_channel(self) -> bool:
        return len(self.multipliers) > 1


@irdl_op_definition
class GemmOp(IRDLOperation):
    """`y = epilogue(x @ w)` on the array, or a convolution through im2col.

    Matmul: x is [..., M, K] (leading dims are rows too), w is [K, N].
    Convolution (`kernel` set): x is NCHW, w is the weight matrix
    [groups, K, N] with K = C/groups * kh * kw in (c, kh, kw) order and N
    output channels per group; y is NCHW; padding reads `pad_value` (0 unless
    set). The epilogue adds `bias` (groups * N values along the output
    columns or channels, any shape holding them in order) and applies
    `relu`, in that order. `fused` lists the ops this one replaced, for
    reports.

    Types: all f32; or i8 operands, whose products sum in i32 and then

    - wrap to an i8 result with an i8 bias (nn's integer ops), or
    - are the result, i32, with an i32 bias (a quantized layer's accumulator), or
    - are requantized to an i8 result (`multiplier`, `shift`, `zero_point`:
      `quant.requantize` with one multiplier or one per output column), with
      an i32 bias; relu then clamps at the zero point.
    """

    name = "systolic.gemm"

    x = operand_def(TensorType)
    w = operand_def(TensorType)
    bias = opt_operand_def(TensorType)
    result = result_def(TensorType)

    kernel = opt_prop_def(DenseArrayBase)
    stride = opt_prop_def(DenseArrayBase)
    padding = opt_prop_def(DenseArrayBase)
    dilation = opt_prop_def(DenseArrayBase)
    groups = opt_prop_def(IntegerAttr)
    pad_value = opt_prop_def(IntegerAttr)
    multiplier = opt_prop_def(DenseArrayBase)
    shift = opt_prop_def(DenseArrayBase)
    zero_point = opt_prop_def(IntegerAttr)
    relu = opt_prop_def(UnitAttr)
    layer = prop_def(StringAttr)
    fused = prop_def(ArrayAttr[StringAttr])

    traits = traits_def(Pure())
    assembly_format = "$x `,` $w (`,` $bias^)? attr-dict `:` functional-type(operands, results)"
    irdl_options = (ParsePropInAttrDict(),)

    def __init__(self, x: SSAValue, w: SSAValue, bias: SSAValue | None, result_type: TensorType, *,
                 layer: str, fused: Sequence[str], relu: bool, conv: ConvGeometry | None = None,
                 pad_value: int = 0, requant: Requantization | None = None):
        properties: dict[str, Attribute] = {
            "layer": StringAttr(layer),
            "fused": ArrayAttr([StringAttr(k) for k in fused]),
        }
        if relu:
            properties["relu"] = UnitAttr()
        if conv is not None:
            for key in ("kernel", "stride", "padding", "dilation"):
                properties[key] = DenseArrayBase.from_list(i64, list(getattr(conv, key)))
            properties["groups"] = IntegerAttr(conv.groups, i64)
        if pad_value:
            properties["pad_value"] = IntegerAttr(pad_value, i64)
        if requant is not None:
            properties["multiplier"] = DenseArrayBase.from_list(i64, list(requant.multipliers))
            properties["shift"] = DenseArrayBase.from_list(i64, list(requant.shifts))
            properties["zero_point"] = IntegerAttr(requant.zero_point, i64)
        super().__init__(operands=[x, w, bias], result_types=[result_type], properties=properties)

    def conv_geometry(self) -> ConvGeometry | None:
        if self.kernel is None:
            return None
        return ConvGeometry(_pair(self.kernel), _pair(self.stride), _pair(self.padding),  # type: ignore[arg-type]
                            _pair(self.dilation), self.groups.value.data if self.groups else 1)

    def requantization(self) -> Requantization | None:
        if self.zero_point is None or self.multiplier is None or self.shift is None:
            return None
        return Requantization(tuple(self.multiplier.get_values()), tuple(self.shift.get_values()),  # type: ignore[arg-type]
                              self.zero_point.value.data)

    def padding_value(self) -> int:
        return self.pad_value.value.data if self.pad_value is not None else 0

    def problem(self) -> GemmProblem:
        x, w, y = (v.type for v in (self.x, self.w, self.result))
        assert isinstance(x, TensorType) and isinstance(w, TensorType) and isinstance(y, TensorType)
        return GemmProblem.of(x.get_shape(), w.get_shape(), y.get_shape(), self.conv_geometry())

    def bias_type(self) -> Attribute:
        """The element type the bias must have: the sums' (i32) before a
        requantization, else the result's."""
        y = self.result.type
        assert isinstance(y, TensorType)
        return i32 if self.requantization() is not None else y.element_type

    def _verify_types(self) -> None:
        x, w, y = (v.type for v in (self.x, self.w, self.result))
        assert isinstance(x, TensorType) and isinstance(w, TensorType) and isinstance(y, TensorType)
        operands, result = x.element_type, y.element_type
        if w.element_type != operands:
            raise VerifyException(f"{self.name}: x and w must share one element type")
        requant = self.requantization()
        if operands == i8:
            allowed = [i8] if requant is not None else [i8, i32]
        elif requant is not None:
            raise VerifyException(f"{self.name}: only i8 products are requantized")
        else:
            allowed = [operands]
        if result not in allowed:
            raise VerifyException(f"{self.name}: {nn.dtype_name(operands)} operands give "
                                  f"{' or '.join(nn.dtype_name(t) for t in allowed)} results"
                                  + (" when requantized" if requant is not None else ""))
        if (self.zero_point is None, self.multiplier is None, self.shift is None).count(True) not in (0, 3):
            raise VerifyException(f"{self.name}: multiplier, shift and zero_point go together")
        if self.pad_value is not None and (operands != i8 or self.kernel is None):
            raise VerifyException(f"{self.name}: only i8 convolutions take a pad_value")

    def verify_(self) -> None:
        self._verify_types()
        x, w, y = (v.type for v in (self.x, self.w, self.result))
        assert isinstance(x, TensorType) and isinstance(w, TensorType) and isinstance(y, TensorType)
        if any(p is None for p in (self.stride, self.padding, self.dilation)) != (self.kernel is None):
            raise VerifyException(f"{self.name}: kernel, stride, padding and dilation go together")
        p = self.problem()
        xs, ws, ys = x.get_shape(), w.get_shape(), y.get_shape()
        if p.conv is None:
            if len(ws) != 2 or len(xs) < 2 or ws[0] != xs[-1] or list(ys) != [*xs[:-1], ws[1]]:
                raise VerifyException(f"{self.name}: expected x [..., M, K], w [K, N], y [..., M, N]")
        else:
            c = xs[1]
            kh, kw = p.conv.kernel
            if len(xs) != 4 or len(ws) != 3 or len(ys) != 4 or ws[0] != p.groups or c % p.groups \
                    or ws[1] != c // p.groups * kh * kw or ys[1] != p.groups * ws[2] or ys[0] != xs[0]:
                raise VerifyException(f"{self.name}: expected x NCHW, w [groups, C/groups*kh*kw, N], y NCHW")
        if self.bias is not None:
            b = self.bias.type
            assert isinstance(b, TensorType)
            if b.element_type != self.bias_type() or math.prod(b.get_shape()) != p.n * p.groups:
                raise VerifyException(f"{self.name}: the bias must hold {p.n * p.groups} "
                                      f"{nn.dtype_name(self.bias_type())} values")
        requant = self.requantization()
        if requant is not None:
            if len(requant.multipliers) != len(requant.shifts) or len(requant.shifts) not in (1, p.n * p.groups):
                raise VerifyException(f"{self.name}: one multiplier and shift, or one per output column "
                                      f"({p.n * p.groups}), are needed")
            if not all(0 <= m < 1 << 31 for m in requant.multipliers) or not all(
                    1 <= s <= MAX_SHIFT for s in requant.shifts) or not -128 <= requant.zero_point <= 127:
                raise VerifyException(f"{self.name}: multipliers must lie in [0, 2^31), shifts in [1, {MAX_SHIFT}] "
                                      "and the zero point in [-128, 127]")


# --------------------------------------------------------------------------
# The accelerator's schedule
# --------------------------------------------------------------------------


@irdl_op_definition
class YieldOp(IRDLOperation):
    """Ends a `systolic.kernel` region."""

    name = "systolic.yield"
    traits = traits_def(IsTerminator())
    assembly_format = "attr-dict"


@irdl_op_definition
class KernelOp(IRDLOperation):
    """One layer run on the accelerator, in destination-passing style inside.

    The region's arguments are the DRAM buffers of the operands, then of the
    results; each has its tensor's element type and element count but may be
    reshaped (contiguously) to whatever the schedule indexes most simply.
    """

    name = "systolic.kernel"

    inputs = var_operand_def(TensorType)
    outputs = var_result_def(TensorType)
    body = region_def("single_block")
    layer = prop_def(StringAttr)
    fused = prop_def(ArrayAttr[StringAttr])
    problem = prop_def(DictionaryAttr)

    traits = traits_def(IsolatedFromAbove())
    irdl_options = (ParsePropInAttrDict(),)

    def __init__(self, inputs: Sequence[SSAValue], output_types: Sequence[TensorType], body: Region,
                 layer: str, fused: ArrayAttr, problem: dict[str, int]):
        super().__init__(
            operands=[inputs], result_types=[output_types], regions=[body],
            properties={"layer": StringAttr(layer), "fused": fused,
                        "problem": DictionaryAttr({k: IntegerAttr(v, i64) for k, v in problem.items()})},
        )

    def problem_values(self) -> dict[str, int]:
        return {k: v.value.data for k, v in self.problem.data.items()}  # type: ignore[union-attr]

    def verify_(self) -> None:
        block = self.body.block
        tensors = [*self.inputs, *self.outputs]
        if len(block.args) != len(tensors):
            raise VerifyException(f"{self.name}: the region takes one DRAM buffer per operand and result")
        for value, arg in zip(tensors, block.args):
            t, m = value.type, arg.type
            assert isinstance(t, TensorType)
            if not isinstance(m, MemRefType) or m.get_element_type() != t.element_type \
                    or math.prod(m.get_shape()) != math.prod(t.get_shape()):
                raise VerifyException(f"{self.name}: region argument {m} does not hold a {t}")
        if not isinstance(block.last_op, YieldOp):
            raise VerifyException(f"{self.name}: the region must end with systolic.yield")


@irdl_op_definition
class ConfigureOp(IRDLOperation):
    """Sets the array's dataflow and operand/accumulator types for what follows."""

    name = "systolic.configure"

    rows = prop_def(IntegerAttr)
    cols = prop_def(IntegerAttr)
    dataflow = prop_def(StringAttr)
    operand_type = prop_def(Attribute)
    acc_type = prop_def(Attribute)

    assembly_format = "attr-dict"
    irdl_options = (ParsePropInAttrDict(),)

    def __init__(self, rows: int, cols: int, dataflow: str, operand_type: Attribute, acc_type: Attribute):
        super().__init__(properties={
            "rows": IntegerAttr(rows, i64), "cols": IntegerAttr(cols, i64),
            "dataflow": StringAttr(dataflow), "operand_type": operand_type, "acc_type": acc_type,
        })

    def verify_(self) -> None:
        if self.dataflow.data not in DATAFLOWS:
            raise VerifyException(f"{self.name}: dataflow must be one of {', '.join(DATAFLOWS)}")
        config = module_config(self)
        if config is not None and (self.rows.value.data, self.cols.value.data) != (config.rows, config.cols):
            raise VerifyException(f"{self.name}: the module's array is {config.rows}x{config.cols}")


def _check_array_fit(op: Operation, view: View, what: str, rows: int | None, cols: int | None) -> None:
    config = module_config(op)
    if config is None:
        return
    r, c = view_shape(view)
    if (rows is not None and r > rows) or (cols is not None and c > cols):
        raise VerifyException(f"{op.name}: the {r}x{c} {what} does not fit the {config.rows}x{config.cols} array")


@irdl_op_definition
class PreloadOp(IRDLOperation):
    """Shifts the stationary operand into the PEs: a weight tile (ws, k x n) or
    an input tile (is, k x m). Takes `rows` cycles."""

    name = "systolic.preload"

    source = operand_def(MemRefType)
    view = prop_def(Attribute)

    assembly_format = "$source attr-dict `:` type($source)"
    irdl_options = (ParsePropInAttrDict(),)

    def __init__(self, source: SSAValue, view: View):
        super().__init__(operands=[source], properties={"view": view.to_attr()})

    def verify_(self) -> None:
        view = _check_view(self, self.source, self.view, "preload")
        config = module_config(self)
        if config is not None:
            _check_array_fit(self, view, "stationary tile", config.rows, config.cols)


@irdl_op_definition
class StreamOp(IRDLOperation):
    """Streams a tile through the array. Weight- and input-stationary: `left`
    is T rows of k values entering the array rows, one row per cycle, and the
    products leave the columns into the output queue. Output-stationary:
    `left` (m x T) and `top` (T x n) enter from two edges and accumulate in
    the PEs. Consecutive streams of one fold form one uninterrupted stream."""

    name = "systolic.stream"

    left = operand_def(MemRefType)
    top = opt_operand_def(MemRefType)
    left_view = prop_def(Attribute)
    top_view = opt_prop_def(Attribute)

    irdl_options = (AttrSizedOperandSegments(as_property=True), ParsePropInAttrDict())
    assembly_format = "$left (`,` $top^)? attr-dict `:` type($left) (`,` type($top)^)?"

    def __init__(self, left: SSAValue, left_view: View, top: SSAValue | None = None, top_view: View | None = None):
        properties = {"left_view": left_view.to_attr()}
        if top_view is not None:
            properties["top_view"] = top_view.to_attr()
        super().__init__(operands=[left, top], properties=properties)

    def verify_(self) -> None:
        left = _check_view(self, self.left, self.left_view, "left")
        if (self.top is None) != (self.top_view is None):
            raise VerifyException(f"{self.name}: top and top_view go together")
        if self.top is not None:
            top = _check_view(self, self.top, self.top_view, "top")  # type: ignore[arg-type]
            if view_shape(left)[1] != view_shape(top)[0]:
                raise VerifyException(f"{self.name}: left and top disagree on the stream length")
            config = module_config(self)
            if config is not None:
                _check_array_fit(self, left, "left operand", config.rows, None)
                _check_array_fit(self, top, "top operand", None, config.cols)
        else:
            config = module_config(self)
            if config is not None:
                _check_array_fit(self, left, "streamed tile", None, config.rows)


@irdl_op_definition
class DrainOp(IRDLOperation):
    """Writes the fold's results to an accumulator buffer through `view`,
    adding them to what is there when `accumulate` is set. Covers the
    pipeline's drain: rows + cols - 2 cycles after the last stream."""

    name = "systolic.drain"

    target = operand_def(MemRefType)
    view = prop_def(Attribute)
    accumulate = opt_prop_def(UnitAttr)

    assembly_format = "$target attr-dict `:` type($target)"
    irdl_options = (ParsePropInAttrDict(),)

    def __init__(self, target: SSAValue, view: MatrixView, accumulate: bool):
        properties: dict[str, Attribute] = {"view": view.to_attr()}
        if accumulate:
            properties["accumulate"] = UnitAttr()
        super().__init__(operands=[target], properties=properties)

    def verify_(self) -> None:
        if not isinstance(_check_view(self, self.target, self.view, "drain"), MatrixView):
            raise VerifyException(f"{self.name}: drains write through a matrix view")


REQUANT_MODES = ("none", "wrap", "requant")


@irdl_op_definition
class PostprocessOp(IRDLOperation):
    """The output unit: `out = relu(convert(acc + bias))` element by element.

    `convert` is `none` (f32 to f32), `wrap` (keep the low bits of the i32
    sum, as integer nn ops wrap) or `requant` (v * multiplier / 2^shift
    rounded half away from zero, plus zero_point, saturated:
    quant.requantize). The multiplier and shift are one pair (`multiplier`,
    `shift`) or one per column, read from `scales` through `scales_view`
    (row 0 multipliers, row 1 shifts, i32). `relu` clamps at the zero point.
    Runs beside the array; its token completes when `out` is written."""

    name = "systolic.postprocess"

    acc = operand_def(MemRefType)
    bias = opt_operand_def(MemRefType)
    out = operand_def(MemRefType)
    scales = opt_operand_def(MemRefType)
    token = result_def(TokenType)
    acc_view = prop_def(Attribute)
    bias_view = opt_prop_def(Attribute)
    out_view = prop_def(Attribute)
    scales_view = opt_prop_def(Attribute)
    mode = prop_def(StringAttr)
    relu = opt_prop_def(UnitAttr)
    multiplier = opt_prop_def(IntegerAttr)
    shift = opt_prop_def(IntegerAttr)
    zero_point = opt_prop_def(IntegerAttr)

    irdl_options = (AttrSizedOperandSegments(as_property=True), ParsePropInAttrDict())
    assembly_format = (
        "$acc `to` $out (`bias` $bias^)? (`scales` $scales^)? attr-dict `:` type($acc) `to` type($out) "
        "(`bias` type($bias)^)? (`scales` type($scales)^)?"
    )

    def __init__(self, acc: SSAValue, acc_view: MatrixView, out: SSAValue, out_view: MatrixView, *,
                 mode: str, relu: bool, bias: SSAValue | None = None, bias_view: MatrixView | None = None,
                 requant: tuple[int, int, int] | None = None,
                 channel_requant: tuple[SSAValue, MatrixView, int] | None = None):
        """`requant` is (multiplier, shift, zero point); `channel_requant`
        (scales buffer, its 2 x columns view, zero point)."""
        properties: dict[str, Attribute] = {
            "acc_view": acc_view.to_attr(), "out_view": out_view.to_attr(), "mode": StringAttr(mode)}
        if bias_view is not None:
            properties["bias_view"] = bias_view.to_attr()
        if relu:
            properties["relu"] = UnitAttr()
        if requant is not None:
            for key, value in zip(("multiplier", "shift", "zero_point"), requant):
                properties[key] = IntegerAttr(value, i64)
        scales = None
        if channel_requant is not None:
            scales, scales_view, zero_point = channel_requant
            properties["scales_view"] = scales_view.to_attr()
            properties["zero_point"] = IntegerAttr(zero_point, i64)
        super().__init__(operands=[acc, bias, out, scales], result_types=[TokenType()], properties=properties)

    def verify_(self) -> None:
        acc = _check_view(self, self.acc, self.acc_view, "accumulator")
        out = _check_view(self, self.out, self.out_view, "output")
        if view_shape(acc) != view_shape(out):
            raise VerifyException(f"{self.name}: accumulator and output views differ in shape")
        if (self.bias is None) != (self.bias_view is None):
            raise VerifyException(f"{self.name}: bias and bias_view go together")
        if self.bias is not None:
            bias = _check_view(self, self.bias, self.bias_view, "bias")  # type: ignore[arg-type]
            if view_shape(bias) != (1, view_shape(acc)[1]):
                raise VerifyException(f"{self.name}: the bias view must be one row per output column")
        if self.mode.data not in REQUANT_MODES:
            raise VerifyException(f"{self.name}: mode must be one of {', '.join(REQUANT_MODES)}")
        if (self.scales is None) != (self.scales_view is None):
            raise VerifyException(f"{self.name}: scales and scales_view go together")
        sources = int(self.multiplier is not None and self.shift is not None) + int(self.scales is not None)
        if sources != int(self.mode.data == "requant"):
            raise VerifyException(f"{self.name}: requant mode takes multiplier and shift, or per-column scales")
        if self.scales is not None:
            scales = _check_view(self, self.scales, self.scales_view, "scales")  # type: ignore[arg-type]
            if view_shape(scales) != (2, view_shape(acc)[1]) or self.scales.type.get_element_type() != i32:  # type: ignore[attr-defined]
                raise VerifyException(f"{self.name}: the scales view must be 2 i32 rows, one column per output column")


SYSTOLIC = Dialect(
    "systolic",
    [GemmOp, KernelOp, YieldOp, ConfigureOp, PreloadOp, StreamOp, DrainOp, PostprocessOp],
    [MatrixViewAttr, Im2colViewAttr],
)

