"""The `pim` dialect: matrix-vector products on bank-level processing-in-memory units.

The target is a DRAM stack whose banks each sit beside a small SIMD unit
(HBM-PIM, AiM, PIM-GPT): a unit reads a 32-byte column of its bank's open
row, multiplies it lane by lane with input values held in its register file
and accumulates the products in accumulator registers. Weights never cross
the external bus; only input vectors (in) and accumulators (out) do.

Two levels live here. `pim.gemv` is the placed op `pim-map` produces: a
matrix product whose matrix is resident in the banks in a given `#pim.layout`,
or, in `host` mode, read by the host over the external bus. `pim-expand`
splits each one into the steps the hardware takes, so the host/PIM boundary
and the data crossing it are explicit:

    %g   = pim.broadcast %x    // input vector chunks -> every unit's registers (GRF)
    %acc = pim.mac %g, %w      // row activate + MAC over each row, accumulating in the register file
    %out = pim.readout %acc    // accumulators -> host, over the bus
    %y   = pim.reduce %out     // host: sum lanes and K-splits, zero-point correction, cast

and a host-mode product becomes `pim.read` (the matrix streamed to the host)
followed by an ordinary `nn.matmul`.

`mode` says how commands address units: `all-bank` issues each command once
per channel and every unit of the channel executes it in lockstep (HBM-PIM's
all-bank mode); `per-bank` addresses units one at a time, which is cheaper in
energy when few units of a channel hold work.

The layout (`Layout`, printed as `#pim.layout<...>`) is the PIM-GPT mapping:
output columns are spread over channels first and units second so that every
unit works; when there are fewer outputs than units the reduction dimension
is split over channel groups too (`splits`), and the host adds the partial
results. Within a unit, K is cut into chunks that fill the input registers;
the weights a chunk meets are contiguous columns of a row, so one activation
serves `row_columns` MACs. Consecutive rows alternate between the unit's
banks so the next row opens while the current one is read.

The numpy functions at the end define what each op computes; the simulator
in backends/pim must agree with them (bit for bit on integers).
"""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass, fields
from functools import cached_property
from typing import ClassVar

import numpy as np
from xdsl.dialects.builtin import (
    DictionaryAttr,
    FloatAttr,
    IntegerAttr,
    IntegerType,
    ModuleOp,
    StringAttr,
    TensorType,
    f16,
    f32,
    f64,
    i8,
    i32,
    i64,
)
from xdsl.ir import Attribute, Dialect, Operation
from xdsl.irdl import (
    IRDLOperation,
    ParsePropInAttrDict,
    irdl_attr_definition,
    irdl_op_definition,
    operand_def,
    opt_prop_def,
    prop_def,
    result_def,
    traits_def,
    var_operand_def,
)
from xdsl.traits import Pure
from xdsl.utils.exceptions import VerifyException

from dialects import nn
from dialects.record_attr import RecordAttr

CONFIG_ATTR = "pim.config"
ENGINE_ATTR = "pim.engine"  # on nn ops left for the host: why they are not on PIM
LAYER_ATTR = "pim.layer"  # on pim.mac and pim.read: the product's name, for reports
MODES = ("all-bank", "per-bank", "host")
UNIT_DTYPES = {4: "f32", 2: "f16", 1: "i8"}  # bytes per stored element -> what the unit multiplies


# --------------------------------------------------------------------------
# The hardware
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class PimConfig:
    """One PIM stack as the mapping and the simulator see it.

    `channels` are independent command buses (HBM2 pseudo-channels), each
    with `banks` banks in `bank_groups` groups and `units` PIM units, so a
    unit owns `banks // units` banks. Timings are in command-clock cycles
    (`clock_hz`); energies in picojoules. `grf_registers` input registers and
    `acc_registers` accumulators per unit, one column wide (accumulators hold
    32-bit lanes). `overlap` is 1 when the host may use the memory while the
    units compute (a second row buffer per bank, as in NeuPIMs).
    """

    channels: int
    banks: int
    bank_groups: int
    units: int
    rows: int
    row_bytes: int
    column_bytes: int
    grf_registers: int
    acc_registers: int
    burst_cycles: int
    trcd: int
    trp: int
    tras: int
    trtp: int
    twr: int
    tccd_s: int
    tccd_l: int
    trrd_s: int
    trrd_l: int
    tfaw: int
    trefi: int
    trfc: int
    refresh_postpone: int
    clock_hz: float
    host_macs_per_cycle: float
    overlap: int
    activate_pj: float
    read_bit_pj: float
    move_bit_pj: float
    io_bit_pj: float
    refresh_pj: float
    mac_f32_pj: float
    mac_f16_pj: float
    mac_i8_pj: float

    @property
    def banks_per_unit(self) -> int:
        return self.banks // self.units

    @property
    def row_columns(self) -> int:
        return self.row_bytes // self.column_bytes

    @property
    def bus_bytes_per_cycle(self) -> float:
        """External bandwidth of the whole stack: one column per burst per channel."""
        return self.channels * self.column_bytes / self.burst_cycles

    def bank_group(self, bank: int) -> int:
        return bank // (self.banks // self.bank_groups)

    def mac_pj(self, dtype: str) -> float:
        return {"f32": self.mac_f32_pj, "f16": self.mac_f16_pj, "i8": self.mac_i8_pj}[dtype]

    def check(self) -> None:
        """A LoomError-free sanity check; raises ValueError naming the field."""
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"{f.name} must not be negative")
        if self.banks % self.units or self.banks % self.bank_groups:
            raise ValueError("banks must be a multiple of units and of bank_groups")
        if self.row_bytes % self.column_bytes or self.row_columns < self.grf_registers:
            raise ValueError("a row must hold whole columns, at least grf_registers of them")
        if min(self.channels, self.units, self.grf_registers, self.acc_registers, self.burst_cycles) < 1:
            raise ValueError("channels, units, registers and burst_cycles must be positive")

    def to_attr(self) -> DictionaryAttr:
        return DictionaryAttr({f.name: (FloatAttr(getattr(self, f.name), f64) if f.type == "float"
                                        else IntegerAttr(getattr(self, f.name), i64)) for f in fields(self)})

    @staticmethod
    def from_attr(attr: Attribute) -> PimConfig:
        if not isinstance(attr, DictionaryAttr):
            raise VerifyException(f"{CONFIG_ATTR} must be a dictionary")
        values = {}
        for f in fields(PimConfig):
            value = attr.data.get(f.name)
            if not isinstance(value, (IntegerAttr, FloatAttr)):
                raise VerifyException(f"{CONFIG_ATTR} is missing the number '{f.name}'")
            values[f.name] = float(value.value.data) if f.type == "float" else int(value.value.data)
        return PimConfig(**values)


def module_config(op: Operation) -> PimConfig | None:
    """The `pim.config` of the nearest enclosing module declaring one."""
    current: Operation | None = op
    while current is not None:
        if isinstance(current, ModuleOp) and CONFIG_ATTR in current.attributes:
            return PimConfig.from_attr(current.attributes[CONFIG_ATTR])
        current = current.parent_op()
    return None


# --------------------------------------------------------------------------
# The layout of one matrix in the banks
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where each element of a matrix is stored: arrays of the matrix's shape [K, N]."""

    channel: np.ndarray
    bank: np.ndarray
    row: np.ndarray
    byte: np.ndarray


@dataclass(frozen=True)
class Layout:
    """How a K x N matrix is spread over channels, units, banks and rows.

    `m` input rows are multiplied by it per call; `transposed` means the
    operand is given as [N, K]. `elem_bytes` is the stored element size
    (4: f32, 2: f16, 1: i8). The unit holds `grf` input registers and `accs`
    accumulators; a column is `column_bytes` wide and a row `row_columns`
    columns. The matrix occupies rows `row_base` .. `row_base + bank_rows`
    of every bank of the channels it uses.
    """

    m: int
    k: int
    n: int
    transposed: int
    elem_bytes: int
    splits: int
    channels_per_split: int
    units: int
    banks_per_unit: int
    column_bytes: int
    row_columns: int
    grf: int
    accs: int
    row_base: int

    @property
    def unit_dtype(self) -> str:
        return UNIT_DTYPES[self.elem_bytes]

    @property
    def lanes(self) -> int:
        return self.column_bytes // self.elem_bytes

    @property
    def chunk(self) -> int:
        """K elements one broadcast puts in the input registers."""
        return self.grf * self.lanes

    @property
    def chunks_per_split(self) -> int:
        return math.ceil(math.ceil(self.k / self.chunk) / self.splits)

    @property
    def k_padded(self) -> int:
        return self.splits * self.chunks_per_split * self.chunk

    @property
    def outputs_per_slot(self) -> int:
        """Output columns one split computes at once: one per unit of its channels."""
        return self.channels_per_split * self.units

    @property
    def slots(self) -> int:
        return math.ceil(self.n / self.outputs_per_slot)

    @property
    def group_size(self) -> int:
        """Accumulators in use at once: outputs per unit per group."""
        return min(self.accs, self.slots)

    @property
    def groups(self) -> int:
        return math.ceil(self.slots / self.group_size)

    @property
    def segments_per_row(self) -> int:
        return self.row_columns // self.grf

    @property
    def rows_per_block(self) -> int:
        """Rows holding one group's weights for one chunk."""
        return math.ceil(self.group_size / self.segments_per_row)

    @property
    def unit_rows(self) -> int:
        return self.groups * self.chunks_per_split * self.rows_per_block

    @property
    def bank_rows(self) -> int:
        return math.ceil(self.unit_rows / self.banks_per_unit)

    @property
    def channels_used(self) -> int:
        return self.splits * self.channels_per_split

    def check(self) -> None:
        if min(self.m, self.k, self.n, self.splits, self.channels_per_split, self.units, self.banks_per_unit,
               self.column_bytes, self.row_columns, self.grf, self.accs) < 1:
            raise VerifyException(f"#pim.layout has a non-positive extent: {self}")
        if self.elem_bytes not in UNIT_DTYPES or self.column_bytes % self.elem_bytes:
            raise VerifyException(f"#pim.layout: elem_bytes must be 4, 2 or 1 and divide the column, got {self}")
        if self.grf > self.row_columns or self.row_base < 0 or self.transposed not in (0, 1):
            raise VerifyException(f"#pim.layout: registers wider than a row, or a bad row_base/transposed: {self}")
        if self.splits > math.ceil(self.k / self.chunk):
            raise VerifyException(f"#pim.layout: {self.splits} splits of {math.ceil(self.k / self.chunk)} chunks")

    def matrix_shape(self) -> tuple[int, int]:
        return (self.n, self.k) if self.transposed else (self.k, self.n)

    def broadcast_shape(self) -> tuple[int, int]:
        return self.m, self.k_padded

    def accumulator_shape(self) -> tuple[int, int, int, int]:
        return self.m, self.splits, self.n, self.lanes

    def unit_of(self, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(channel offset within a split, unit, slot) of output columns `n`."""
        q, slot = n % self.outputs_per_slot, n // self.outputs_per_slot
        return q % self.channels_per_split, q // self.channels_per_split, slot

    @cached_property
    def placement(self) -> Placement:
        """Channel, bank, row and byte offset in the row of every element W[k, n]."""
        kk, nn_ = np.meshgrid(np.arange(self.k), np.arange(self.n), indexing="ij")
        chunk = kk // self.chunk
        split, local = chunk // self.chunks_per_split, chunk % self.chunks_per_split
        register, lane = (kk % self.chunk) // self.lanes, kk % self.lanes
        channel_offset, unit, slot = self.unit_of(nn_)
        group, acc = slot // self.group_size, slot % self.group_size
        row_in_unit = (group * self.chunks_per_split + local) * self.rows_per_block + acc // self.segments_per_row
        column = (acc % self.segments_per_row) * self.grf + register
        return Placement(
            channel=split * self.channels_per_split + channel_offset,
            bank=unit * self.banks_per_unit + row_in_unit % self.banks_per_unit,
            row=self.row_base + row_in_unit // self.banks_per_unit,
            byte=column * self.column_bytes + lane * self.elem_bytes,
        )

    def to_attr(self) -> LayoutAttr:
        return LayoutAttr(astuple(self))


@irdl_attr_definition
class LayoutAttr(RecordAttr):
    """A layout's integers, printed by name: `#pim.layout<m = 1, k = 784, ...>`."""

    name = "pim.layout"
    RECORD = Layout

    def layout(self) -> Layout:
        if len(self.data) != len(self.field_names()):
            raise VerifyException(f"#pim.layout needs {len(self.field_names())} values, got {len(self.data)}")
        layout = self.record()
        layout.check()
        return layout


# --------------------------------------------------------------------------
# Ops
# --------------------------------------------------------------------------


def _tensor(value_type: Attribute, op: Operation) -> TensorType:
    if not isinstance(value_type, TensorType):
        raise VerifyException(f"{op.name}: operands and results must be tensors")
    return value_type


def _expect(op: Operation, what: str, got: Attribute, element_type: Attribute, shape: tuple[int, ...]) -> None:
    t = _tensor(got, op)
    if tuple(t.get_shape()) != tuple(shape) or t.element_type != element_type:
        raise VerifyException(f"{op.name}: {what} must be {nn.format_type(nn.tensor(element_type, shape))}, "
                              f"got {nn.format_type(t)}")


def unit_element_type(layout: Layout) -> Attribute:
    return {"f32": f32, "f16": f16, "i8": i8}[layout.unit_dtype]


def accumulator_element_type(layout: Layout) -> Attribute:
    return i32 if layout.unit_dtype == "i8" else f32


def _operand_dtype_fits(op: Operation, element_type: Attribute, layout: Layout) -> None:
    """Floats go to a float unit (narrowed to f16 if it is one), i8 to the i8 unit."""
    integer = isinstance(element_type, IntegerType)
    if integer != (layout.unit_dtype == "i8") or (integer and element_type != i8):
        raise VerifyException(f"{op.name}: {nn.dtype_name(element_type)} operands cannot run on a "
                              f"{layout.unit_dtype} unit")


class LayoutOperation(IRDLOperation):
    """An op that carries the `#pim.layout` of the matrix it works on."""

    layout = prop_def(LayoutAttr)
    irdl_options = (ParsePropInAttrDict(),)

    def get_layout(self) -> Layout:
        return self.layout.layout()


class ModeOperation(LayoutOperation):
    mode = prop_def(StringAttr)
    MODES: ClassVar[tuple[str, ...]] = MODES[:2]

    def check_mode(self) -> None:
        if self.mode.data not in self.MODES:
            raise VerifyException(f"{self.name}: mode must be one of {', '.join(self.MODES)}, got '{self.mode.data}'")


@irdl_op_definition
class GemvOp(ModeOperation):
    """`y = x @ w` with `w` resident in the banks in `layout` (or `transpose(w)`
    when the layout says the operand is [N, K]). x is [..., K]: its leading
    dims are the `m` rows. Floats keep x's type; i8 operands (quant.matmul
    with its zero points) give i32. `host` mode reads `w` over the bus and
    multiplies on the host. `layer` names the product for reports."""

    name = "pim.gemv"
    MODES: ClassVar[tuple[str, ...]] = MODES

    x = operand_def(TensorType)
    w = operand_def(TensorType)
    result = result_def(TensorType)
    layer = prop_def(StringAttr)
    lhs_zero_point = opt_prop_def(IntegerAttr)
    rhs_zero_point = opt_prop_def(IntegerAttr)

    traits = traits_def(Pure())
    assembly_format = "$x `,` $w attr-dict `:` functional-type(operands, results)"

    def zero_points(self) -> tuple[int, int]:
        return tuple(0 if a is None else a.value.data for a in (self.lhs_zero_point, self.rhs_zero_point))

    def verify_(self) -> None:
        self.check_mode()
        layout = self.get_layout()
        x, w, y = (_tensor(v.type, self) for v in (self.x, self.w, self.result))
        _expect(self, "the matrix", w, w.element_type, layout.matrix_shape())
        _operand_dtype_fits(self, x.element_type, layout)
        if x.element_type != w.element_type or math.prod(x.get_shape()[:-1]) != layout.m or x.get_shape()[-1] != layout.k:
            raise VerifyException(f"{self.name}: x {nn.format_type(x)} does not fit the layout (m={layout.m}, "
                                  f"k={layout.k}) or the matrix type")
        out_type = i32 if x.element_type == i8 else x.element_type
        _expect(self, "the result", y, out_type, (*x.get_shape()[:-1], layout.n))


@irdl_op_definition
class BroadcastOp(ModeOperation):
    """Send the rows of x, chunk by chunk, to the input registers of every
    unit: [..., K] -> [m, k_padded] in the unit's type (f16 units round to
    f16; K is padded with zeros to whole chunks of every split)."""

    name = "pim.broadcast"
    x = operand_def(TensorType)
    result = result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "$x attr-dict `:` functional-type(operands, results)"

    def verify_(self) -> None:
        self.check_mode()
        layout = self.get_layout()
        x = _tensor(self.x.type, self)
        _operand_dtype_fits(self, x.element_type, layout)
        if math.prod(x.get_shape()[:-1]) != layout.m or x.get_shape()[-1] != layout.k:
            raise VerifyException(f"{self.name}: x {nn.format_type(x)} does not fit the layout")
        _expect(self, "the result", self.result.type, unit_element_type(layout), layout.broadcast_shape())


@irdl_op_definition
class MacOp(ModeOperation):
    """Row activate + MAC over every row of `w`'s layout: each unit multiplies
    the columns of its open row lane by lane with its input registers and
    accumulates in its register file across the chunks of its split.
    Result: [m, splits, n, lanes] partial sums (f32 for float units, i32
    wrapping for i8)."""

    name = "pim.mac"
    inputs = operand_def(TensorType)
    w = operand_def(TensorType)
    result = result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "$inputs `,` $w attr-dict `:` functional-type(operands, results)"

    def verify_(self) -> None:
        self.check_mode()
        layout = self.get_layout()
        _expect(self, "the inputs", self.inputs.type, unit_element_type(layout), layout.broadcast_shape())
        w = _tensor(self.w.type, self)
        _expect(self, "the matrix", w, w.element_type, layout.matrix_shape())
        _operand_dtype_fits(self, w.element_type, layout)
        _expect(self, "the result", self.result.type, accumulator_element_type(layout), layout.accumulator_shape())


@irdl_op_definition
class ReadoutOp(LayoutOperation):
    """Move the accumulators of every unit to the host over the external bus."""

    name = "pim.readout"
    acc = operand_def(TensorType)
    result = result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "$acc attr-dict `:` functional-type(operands, results)"

    def verify_(self) -> None:
        layout = self.get_layout()
        for what, t in (("the accumulators", self.acc.type), ("the result", self.result.type)):
            _expect(self, what, t, accumulator_element_type(layout), layout.accumulator_shape())


@irdl_op_definition
class ReduceOp(LayoutOperation):
    """Host-side reduction: sum the lanes and the K-splits of the read-out
    partial sums, subtract the zero-point terms of a quantized product
    (operands x and w are then given: sum_k (x - zx)(w - zw) = sum x w
    - zw sum x - zx sum w + K zx zw, in wrapping i32) and cast to the result
    type, whose shape is the product's."""

    name = "pim.reduce"
    operands_ = var_operand_def(TensorType)
    result = result_def(TensorType)
    lhs_zero_point = opt_prop_def(IntegerAttr)
    rhs_zero_point = opt_prop_def(IntegerAttr)
    traits = traits_def(Pure())
    assembly_format = "$operands_ attr-dict `:` functional-type(operands, results)"

    def zero_points(self) -> tuple[int, int]:
        return tuple(0 if a is None else a.value.data for a in (self.lhs_zero_point, self.rhs_zero_point))

    def verify_(self) -> None:
        layout = self.get_layout()
        if len(self.operands_) not in (1, 3):
            raise VerifyException(f"{self.name} takes the accumulators, and x and w for a zero-point correction")
        _expect(self, "the accumulators", self.operands_[0].type, accumulator_element_type(layout),
                layout.accumulator_shape())
        y = _tensor(self.result.type, self)
        if math.prod(y.get_shape()[:-1]) != layout.m or y.get_shape()[-1] != layout.n:
            raise VerifyException(f"{self.name}: result {nn.format_type(y)} does not fit the layout")


@irdl_op_definition
class ReadOp(LayoutOperation):
    """The host reads a resident matrix over the external bus (the baseline a
    PIM target is measured against); the result is the [K, N] matrix."""

    name = "pim.read"
    w = operand_def(TensorType)
    result = result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "$w attr-dict `:` functional-type(operands, results)"

    def verify_(self) -> None:
        layout = self.get_layout()
        w = _tensor(self.w.type, self)
        _expect(self, "the matrix", w, w.element_type, layout.matrix_shape())
        _expect(self, "the result", self.result.type, w.element_type, (layout.k, layout.n))


PIM = Dialect("pim", [GemvOp, BroadcastOp, MacOp, ReadoutOp, ReduceOp, ReadOp], [LayoutAttr])


# --------------------------------------------------------------------------
# Semantics, in numpy
# --------------------------------------------------------------------------


def unit_numpy_dtype(layout: Layout) -> np.dtype:
    return np.dtype({"f32": np.float32, "f16": np.float16, "i8": np.int8}[layout.unit_dtype])


def matrix_kn(w: np.ndarray, layout: Layout) -> np.ndarray:
    """The [K, N] matrix an operand stands for."""
    return w.T if layout.transposed else w


def broadcast_values(x: np.ndarray, layout: Layout) -> np.ndarray:
    """pim.broadcast: rows of x in the unit's type, zero-padded to k_padded."""
    rows = np.asarray(x).reshape(layout.m, layout.k).astype(unit_numpy_dtype(layout))
    out = np.zeros(layout.broadcast_shape(), rows.dtype)
    out[:, :layout.k] = rows
    return out


def mac_values(inputs: np.ndarray, w: np.ndarray, layout: Layout) -> np.ndarray:
    """pim.mac: lane-wise partial sums [m, splits, n, lanes]. Products of two
    f16 values are exact in f32 and accumulate in f32; f32 products round to
    f32; i8 x i8 products accumulate in wrapping i32."""
    integer = layout.unit_dtype == "i8"
    acc_dtype = np.int32 if integer else np.float32
    weights = np.zeros((layout.k_padded, layout.n), acc_dtype)
    weights[:layout.k] = matrix_kn(np.asarray(w), layout).astype(unit_numpy_dtype(layout)).astype(acc_dtype)
    shape = (layout.splits, layout.chunks_per_split * layout.grf, layout.lanes)
    x = inputs.astype(acc_dtype).reshape(layout.m, *shape)
    wk = weights.reshape(*shape, layout.n)
    with np.errstate(over="ignore"):
        return np.einsum("msrl,srln->msnl", x, wk).astype(acc_dtype)


def reduce_values(acc: np.ndarray, layout: Layout, result_shape: tuple[int, ...], result_dtype: np.dtype,
                  x: np.ndarray | None = None, w: np.ndarray | None = None,
                  zero_points: tuple[int, int] = (0, 0)) -> np.ndarray:
    """pim.reduce: lanes then splits summed (f32, or wrapping i32), the
    zero-point terms removed, the result cast to its dtype."""
    with np.errstate(over="ignore"):
        total = acc.sum(axis=3, dtype=acc.dtype).sum(axis=1, dtype=acc.dtype)
        zx, zw = zero_points
        if x is not None and w is not None and (zx or zw):
            rows = np.asarray(x, np.int64).reshape(layout.m, layout.k)
            matrix = matrix_kn(np.asarray(w, np.int64), layout)
            correction = (zw * rows.sum(axis=1, keepdims=True) + zx * matrix.sum(axis=0, keepdims=True)
                          - layout.k * zx * zw)
            total = (total.astype(np.int64) - correction).astype(np.int32)
    return total.reshape(result_shape).astype(result_dtype)

