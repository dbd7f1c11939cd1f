"""The `quant` dialect: integer tensors, and the ops that move values between
them and floats or compute on them as integer hardware does.

Tensors keep their storage type (`tensor<1x64xi8>`); how to read the
integers as reals is a `#quant.uniform` attribute carried by the op that
produces or consumes them. Keeping the builtin tensor types means every pass
below the nn level (linalg lowering, bufferization, the backends) handles
quantized values without knowing about quantization.

A `#quant.uniform` describes the affine map real = (q - zero_point) * scale:

    #quant.uniform<i8, bits = 8, scale = dense<0.0235> : tensor<f32>,
                   zero_point = dense<-128> : tensor<i32>, block = []>

`bits` gives the value range [-2^(bits-1), 2^(bits-1) - 1]: 8-bit and 4-bit
values are both stored in i8 (4-bit ones unpacked, one per byte). Scales
and zero points are per tensor (rank 0) or per block: a tensor of rank r
uses `scale[i0 // block[0], ..., ir // block[r-1]]` for element (i0..ir), so
per-axis quantization of a [K, N] weight along N is `block = [K, 1]` with a
[1, N] scale, and group-wise quantization in groups of 32 along K is
`block = [32, 1]` with a [ceil(K/32), N] scale.

The numpy functions at the end of the module define what each op computes,
bit for bit; the reference interpreter runs them and the linalg lowering
must agree with them exactly.
"""

from __future__ import annotations

import math
from abc import ABC
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from xdsl.dialects.builtin import (
    DenseArrayBase,
    DenseIntOrFPElementsAttr,
    Float32Type,
    IntAttr,
    IntegerAttr,
    IntegerType,
    TensorType,
    f32,
    i8,
    i32,
    i64,
)
from xdsl.ir import Attribute, Dialect, ParametrizedAttribute
from xdsl.irdl import (
    ParsePropInAttrDict,
    irdl_attr_definition,
    irdl_op_definition,
    prop_def,
    result_def,
    traits_def,
    var_operand_def,
)
from xdsl.parser import AttrParser
from xdsl.printer import Printer
from xdsl.traits import Pure
from xdsl.utils.exceptions import VerifyException

from dialects import nn
from dialects.nn import ShapeError, format_type, tensor

# --------------------------------------------------------------------------
# The quantized type
# --------------------------------------------------------------------------


def value_range(bits: int) -> tuple[int, int]:
    """The signed range of `bits`-bit integers."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _dense(array: np.ndarray, element_type: Attribute) -> DenseIntOrFPElementsAttr:
    """A dense attribute, stored as a splat when every element is equal."""
    array = np.asarray(array)
    if array.size > 1 and np.all(array == array.flat[0]):
        splat = nn.dense_from_array(array.reshape(-1)[:1], element_type)
        return DenseIntOrFPElementsAttr(tensor(element_type, array.shape), splat.data)
    return nn.dense_from_array(array, element_type)


@irdl_attr_definition
class UniformQuantAttr(ParametrizedAttribute):
    """How to read a tensor of integers as reals: (q - zero_point) * scale,
    with scales and zero points per tensor or per block (see the module
    docstring)."""

    name = "quant.uniform"

    storage: IntegerType
    bits: IntAttr
    scale: DenseIntOrFPElementsAttr
    zero_point: DenseIntOrFPElementsAttr
    block: DenseArrayBase

    @staticmethod
    def get(
        scale: np.ndarray | float,
        zero_point: np.ndarray | int,
        bits: int,
        block: Sequence[int] = (),
    ) -> UniformQuantAttr:
        """Scales and zero points of equal shape; storage i8 up to 8 bits, else i32."""
        scale = np.asarray(scale, dtype=np.float32)
        zero_point = np.broadcast_to(np.asarray(zero_point, dtype=np.int32), scale.shape)
        storage = i8 if bits <= 8 else i32
        return UniformQuantAttr(
            storage,
            IntAttr(bits),
            _dense(scale, f32),
            _dense(zero_point, i32),
            DenseArrayBase.from_list(i64, [int(b) for b in block]),
        )

    # ---- reading ------------------------------------------------------------

    def scales(self) -> np.ndarray:
        return nn.array_from_dense(self.scale)

    def zero_points(self) -> np.ndarray:
        return nn.array_from_dense(self.zero_point).astype(np.int64)

    def block_sizes(self) -> list[int]:
        return [int(b) for b in self.block.get_values()]

    def value_range(self) -> tuple[int, int]:
        return value_range(self.bits.data)

    @property
    def per_tensor(self) -> bool:
        return not self.scale.get_shape()

    def expanded(self, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Scales and zero points for every element of a tensor of `shape`."""
        return (
            expand_blocks(self.scales(), self.block_sizes(), shape),
            expand_blocks(self.zero_points(), self.block_sizes(), shape),
        )

    def block_roles(self, shape: Sequence[int]) -> list[str]:
        """Per dim of a tensor of `shape`: its scale index is 0 ('all'), the
        element's index ('each') or that index // block ('group')."""
        if self.per_tensor:
            return ["all"] * len(shape)
        return [
            "all" if blocks == 1 else "each" if size == 1 else "group"
            for size, blocks in zip(self.block_sizes(), self.scale.get_shape())
        ]

    # ---- checking -----------------------------------------------------------

    def check_shape(self, shape: Sequence[int]) -> None:
        """Raise ShapeError unless these params can describe a tensor of `shape`."""
        blocks = list(self.scale.get_shape())
        if not blocks:
            return
        if len(blocks) != len(shape):
            raise ShapeError(f"quantization scales of rank {len(blocks)} do not fit a rank-{len(shape)} tensor")
        want = [math.ceil(d / b) for d, b in zip(shape, self.block_sizes())]
        if blocks != want:
            raise ShapeError(
                f"quantization scales of shape {blocks} with blocks {self.block_sizes()} "
                f"do not fit a tensor of shape {list(shape)} (expected {want})"
            )

    def verify(self) -> None:
        super().verify()
        bits, width = self.bits.data, self.storage.width.data
        if width not in (8, 32) or not 2 <= bits <= width:
            raise VerifyException(f"#quant.uniform: {bits}-bit values cannot be stored in i{width}")
        if not isinstance(self.scale.get_element_type(), Float32Type) or self.zero_point.get_element_type() != i32:
            raise VerifyException("#quant.uniform: scales must be f32 and zero points i32")
        if self.scale.get_shape() != self.zero_point.get_shape():
            raise VerifyException("#quant.uniform: scales and zero points must have the same shape")
        if len(self.block.get_values()) != len(self.scale.get_shape()):
            raise VerifyException("#quant.uniform: one block size per dim of the scales is needed")
        if any(b < 1 for b in self.block_sizes()):
            raise VerifyException("#quant.uniform: block sizes must be positive")
        scales = self.scales()
        if not np.all(np.isfinite(scales) & (scales > 0)):
            raise VerifyException("#quant.uniform: scales must be finite and positive")
        lo, hi = self.value_range()
        zero_points = self.zero_points()
        if np.any(zero_points < lo) or np.any(zero_points > hi) or (width == 32 and np.any(zero_points)):
            raise VerifyException(f"#quant.uniform: zero points must lie in [{lo}, {hi}] (and be 0 for i32)")

    # ---- syntax -------------------------------------------------------------

    def print_parameters(self, printer: Printer) -> None:
        with printer.in_angle_brackets():
            printer.print_attribute(self.storage)
            printer.print_string(f", bits = {self.bits.data}, scale = ")
            printer.print_attribute(self.scale)
            printer.print_string(", zero_point = ")
            printer.print_attribute(self.zero_point)
            printer.print_string(f", block = [{', '.join(str(b) for b in self.block_sizes())}]")

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> list[Attribute]:
        def keyword(name: str) -> None:
            parser.parse_punctuation(",")
            parser.parse_keyword(name)
            parser.parse_punctuation("=")

        with parser.in_angle_brackets():
            storage = parser.parse_type()
            keyword("bits")
            bits = parser.parse_integer(allow_boolean=False)
            keyword("scale")
            scale = parser.parse_attribute()
            keyword("zero_point")
            zero_point = parser.parse_attribute()
            keyword("block")
            block = parser.parse_comma_separated_list(
                parser.Delimiter.SQUARE, lambda: parser.parse_integer(allow_boolean=False)
            )
        return [storage, IntAttr(bits), scale, zero_point, DenseArrayBase.from_list(i64, block)]


# --------------------------------------------------------------------------
# Ops
# --------------------------------------------------------------------------


class QuantOperation(nn.InferredOperation, ABC):
    """Base of the quant ops, with the nn ops' protocol: `PARAMS` names the
    properties (kinds as in nn, plus "quant" for a `#quant.uniform` and
    "f32s" for an array of f32 values), `infer` gives the result type and
    canonical params and is the verifier too."""

    inputs = var_operand_def(TensorType)
    result = result_def(TensorType)
    traits = traits_def(Pure())

    assembly_format = "$inputs attr-dict `:` functional-type($inputs, $result)"
    irdl_options = (ParsePropInAttrDict(),)

    @classmethod
    def param_to_attr(cls, kind: str, value: Any) -> Attribute:
        if kind == "quant":
            return value
        if kind == "f32s":
            return DenseArrayBase.from_list(f32, [float(v) for v in np.asarray(value, np.float32).reshape(-1)])
        return nn._to_attr(kind, value)

    @classmethod
    def param_from_attr(cls, kind: str, attr: Attribute) -> Any:
        if kind == "quant":
            return attr
        if kind == "f32s":
            assert isinstance(attr, DenseArrayBase)
            return [float(v) for v in attr.get_values()]
        return nn._from_attr(kind, attr)


def _require(op: str, t: TensorType, element_type: Attribute) -> None:
    if t.element_type != element_type:
        raise ShapeError(f"{op} expects {nn.dtype_name(element_type)} values, got {format_type(t)}")


def _require_zero_point(what: str, value: int) -> int:
    lo, hi = value_range(8)
    if not lo <= value <= hi:
        raise ShapeError(f"{what} {value} is outside the i8 range [{lo}, {hi}]")
    return int(value)


@irdl_op_definition
class QuantizeOp(QuantOperation):
    """f32 -> integers: clamp(round_half_even(x / scale) + zero_point).
    NaN becomes the lowest value, infinities saturate."""

    name = "quant.quantize"
    PARAMS: ClassVar[dict[str, str]] = {"quant_type": "quant"}
    quant_type = prop_def(UniformQuantAttr)

    @classmethod
    def infer(cls, types, quant_type: UniformQuantAttr):
        (x,) = types
        _require("quantize", x, f32)
        if quant_type.storage != i8:
            raise ShapeError("quantize produces i8 storage")
        quant_type.check_shape(x.get_shape())
        return tensor(quant_type.storage, x.get_shape()), {"quant_type": quant_type}


@irdl_op_definition
class DequantizeOp(QuantOperation):
    """integers -> f32: float(q - zero_point) * scale, one f32 rounding."""

    name = "quant.dequantize"
    PARAMS: ClassVar[dict[str, str]] = {"quant_type": "quant"}
    quant_type = prop_def(UniformQuantAttr)

    @classmethod
    def infer(cls, types, quant_type: UniformQuantAttr):
        (q,) = types
        _require("dequantize", q, quant_type.storage)
        quant_type.check_shape(q.get_shape())
        return tensor(f32, q.get_shape()), {"quant_type": quant_type}


@irdl_op_definition
class MatmulOp(QuantOperation):
    """i8 x i8 -> i32: sum_k (a[i,k] - lhs_zero_point) * (b[k,j] - rhs_zero_point),
    accumulated in i32 (wrapping), with nn.matmul's shape rules."""

    name = "quant.matmul"
    PARAMS: ClassVar[dict[str, str]] = {"lhs_zero_point": "int", "rhs_zero_point": "int"}
    lhs_zero_point = prop_def(IntegerAttr)
    rhs_zero_point = prop_def(IntegerAttr)

    @classmethod
    def infer(cls, types, lhs_zero_point=0, rhs_zero_point=0):
        if len(types) != 2:
            raise ShapeError("quant.matmul takes two operands")
        for t in types:
            _require("quant.matmul", t, i8)
        out, _ = nn.MatmulOp.infer(types)
        return tensor(i32, out.get_shape()), {
            "lhs_zero_point": _require_zero_point("lhs_zero_point", lhs_zero_point),
            "rhs_zero_point": _require_zero_point("rhs_zero_point", rhs_zero_point),
        }


@irdl_op_definition
class Conv2dOp(QuantOperation):
    """i8 NCHW input x i8 OIHW weights (+ i32 bias) -> i32, nn.conv2d's
    windows and shape rules; the input is padded with its zero point, so
    padding contributes nothing, as padding with 0.0 does in float."""

    name = "quant.conv2d"
    PARAMS: ClassVar[dict[str, str]] = {
        "stride": "ints", "padding": "ints", "dilation": "ints", "groups": "int",
        "input_zero_point": "int", "weight_zero_point": "int",
    }
    stride = prop_def(DenseArrayBase)
    padding = prop_def(DenseArrayBase)
    dilation = prop_def(DenseArrayBase)
    groups = prop_def(IntegerAttr)
    input_zero_point = prop_def(IntegerAttr)
    weight_zero_point = prop_def(IntegerAttr)

    @classmethod
    def infer(cls, types, stride=1, padding=0, dilation=1, groups=1, input_zero_point=0, weight_zero_point=0):
        if len(types) not in (2, 3):
            raise ShapeError("quant.conv2d takes x, w and an optional bias")
        x, w, *bias = types
        _require("quant.conv2d", x, i8)
        _require("quant.conv2d", w, i8)
        for b in bias:
            _require("quant.conv2d bias", b, i32)
        # nn's rules on the storage types, the bias viewed with the operands' dtype
        shapes = [x, w, *(tensor(i8, b.get_shape()) for b in bias)]
        out, canonical = nn.Conv2dOp.infer(shapes, stride=stride, padding=padding, dilation=dilation, groups=groups)
        canonical["input_zero_point"] = _require_zero_point("input_zero_point", input_zero_point)
        canonical["weight_zero_point"] = _require_zero_point("weight_zero_point", weight_zero_point)
        return tensor(i32, out.get_shape()), canonical


MAX_SHIFT = 62


@irdl_op_definition
class RequantizeOp(QuantOperation):
    """i32 -> i8 with a fixed-point multiplier, as integer hardware does:

        clamp(round_half_away((acc * multiplier) / 2^shift) + zero_point, clamp[0], clamp[1])

    computed exactly in i64. `multiplier` and `shift` hold one value, or one
    per index of dim `axis` (per output channel)."""

    name = "quant.requantize"
    PARAMS: ClassVar[dict[str, str]] = {
        "multiplier": "ints", "shift": "ints", "axis": "int", "zero_point": "int", "clamp": "ints",
    }
    multiplier = prop_def(DenseArrayBase)
    shift = prop_def(DenseArrayBase)
    axis = prop_def(IntegerAttr)
    zero_point = prop_def(IntegerAttr)
    clamp = prop_def(DenseArrayBase)

    @classmethod
    def infer(cls, types, multiplier=(), shift=(), axis=0, zero_point=0, clamp=(-128, 127)):
        (acc,) = types
        _require("requantize", acc, i32)
        shape = acc.get_shape()
        axis = nn.normalize_axis(axis, len(shape)) if shape else 0
        count = len(multiplier)
        if count != len(shift) or not _per_channel_count(count, shape, axis):
            raise ShapeError(
                f"requantize needs one multiplier and shift, or one per index of dim {axis} of {format_type(acc)}"
            )
        if any(not 0 <= m < 1 << 31 for m in multiplier) or any(not 1 <= s <= MAX_SHIFT for s in shift):
            raise ShapeError(f"requantize multipliers must lie in [0, 2^31) and shifts in [1, {MAX_SHIFT}]")
        return tensor(i8, shape), {
            "multiplier": [int(m) for m in multiplier],
            "shift": [int(s) for s in shift],
            "axis": axis,
        } | _requantize_output("requantize", zero_point, clamp)


def _per_channel_count(count: int, shape: Sequence[int], axis: int) -> bool:
    """Whether `count` values are one, or one per index of dim `axis`."""
    return count in {1, shape[axis] if shape else 1}


def _requantize_output(op: str, zero_point: int, clamp: Sequence[int]) -> dict[str, Any]:
    """The checked zero point and clamp of an op producing i8 values."""
    lo, hi = value_range(8)
    if len(clamp) != 2 or not lo <= clamp[0] <= clamp[1] <= hi:
        raise ShapeError(f"{op} clamp must be [min, max] within [{lo}, {hi}], got {list(clamp)}")
    return {"zero_point": _require_zero_point(f"{op} zero_point", zero_point), "clamp": [int(c) for c in clamp]}


@irdl_op_definition
class FloatRequantizeOp(QuantOperation):
    """i32 -> i8 by an f32 factor, as onnxruntime's QLinear kernels and most
    CPU int8 libraries requantize:

        clamp(round_half_even(f32(acc) * scale) + zero_point, clamp[0], clamp[1])

    `f32(acc)` rounds to nearest (ties to even) and the product is one f32
    multiplication; `scale` holds one value, or one per index of dim `axis`.
    Integer-only hardware uses `quant.requantize` instead."""

    name = "quant.requantize_float"
    PARAMS: ClassVar[dict[str, str]] = {"scale": "f32s", "axis": "int", "zero_point": "int", "clamp": "ints"}
    scale = prop_def(DenseArrayBase)
    axis = prop_def(IntegerAttr)
    zero_point = prop_def(IntegerAttr)
    clamp = prop_def(DenseArrayBase)

    @classmethod
    def infer(cls, types, scale=(), axis=0, zero_point=0, clamp=(-128, 127)):
        (acc,) = types
        _require("requantize_float", acc, i32)
        shape = acc.get_shape()
        axis = nn.normalize_axis(axis, len(shape)) if shape else 0
        scale = np.asarray(scale, np.float32).reshape(-1)
        if not _per_channel_count(scale.size, shape, axis):
            raise ShapeError(f"requantize_float needs one scale, or one per index of dim {axis} of {format_type(acc)}")
        if not np.all(np.isfinite(scale) & (scale >= 0)):
            raise ShapeError("requantize_float scales must be finite and not negative")
        output = _requantize_output("requantize_float", zero_point, clamp)
        return tensor(i8, shape), {"scale": scale, "axis": axis} | output


QUANT = Dialect(
    "quant",
    [QuantizeOp, DequantizeOp, MatmulOp, Conv2dOp, RequantizeOp, FloatRequantizeOp],
    [UniformQuantAttr],
)


# --------------------------------------------------------------------------
# Semantics, in numpy: what every implementation must compute bit for bit
# --------------------------------------------------------------------------


def expand_blocks(values: np.ndarray, block: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Per-block `values` repeated to a tensor of `shape` (rank 0: broadcast)."""
    if values.ndim == 0:
        return np.broadcast_to(values, tuple(shape))
    for axis, (size, extent) in enumerate(zip(block, shape)):
        values = np.repeat(values, size, axis=axis)
        values = values[(slice(None),) * axis + (slice(0, extent),)]
    return values


def quantize_values(x: np.ndarray, quant_type: UniformQuantAttr) -> np.ndarray:
    """quant.quantize on float32 values; int64 results in the value range."""
    scale, zero_point = quant_type.expanded(x.shape)
    lo, hi = quant_type.value_range()
    with np.errstate(all="ignore"):
        scaled = np.rint(np.asarray(x, np.float32) / scale) + zero_point.astype(np.float32)
        return np.fmin(np.fmax(scaled, np.float32(lo)), np.float32(hi)).astype(np.int64)


def dequantize_values(q: np.ndarray, quant_type: UniformQuantAttr) -> np.ndarray:
    """quant.dequantize: float32 results."""
    scale, zero_point = quant_type.expanded(q.shape)
    return (np.asarray(q, np.int64) - zero_point).astype(np.float32) * scale


def rounding_shift(product: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """product / 2^shift rounded half away from zero, on int64 (|product| < 2^62).

    Adding 2^(shift-1), less one for negative products, then shifting right
    (which floors) rounds ties away from zero."""
    shift = np.asarray(shift, np.int64)
    negative = (product < 0).astype(np.int64)
    return (product + (np.int64(1) << (shift - 1)) - negative) >> shift


def requantize_values(acc: np.ndarray, op_params: dict[str, Any]) -> np.ndarray:
    """quant.requantize on int32 accumulators given the op's params."""
    acc = np.asarray(acc, np.int64)
    multiplier = np.asarray(op_params["multiplier"], np.int64)
    shift = np.asarray(op_params["shift"], np.int64)
    if multiplier.size > 1:  # per channel: broadcast along `axis`
        view = [1] * acc.ndim
        view[op_params["axis"]] = multiplier.size
        multiplier, shift = multiplier.reshape(view), shift.reshape(view)
    scaled = rounding_shift(acc * multiplier, shift) + op_params["zero_point"]
    lo, hi = op_params["clamp"]
    return np.clip(scaled, lo, hi)


def _along_axis(values: np.ndarray, rank: int, axis: int) -> np.ndarray:
    """Per-channel `values` shaped to broadcast along dim `axis` of a rank-`rank` tensor."""
    if values.size == 1:
        return values.reshape(())
    view = [1] * rank
    view[axis] = values.size
    return values.reshape(view)


def requantize_float_values(acc: np.ndarray, op_params: dict[str, Any]) -> np.ndarray:
    """quant.requantize_float on int32 accumulators given the op's params.

    Clamping before rounding, at bounds shifted by the zero point (integers),
    gives the same values as rounding first and keeps huge products finite."""
    acc = np.asarray(acc)
    scale = _along_axis(np.asarray(op_params["scale"], np.float32), acc.ndim, op_params["axis"])
    zero_point = op_params["zero_point"]
    lo, hi = op_params["clamp"]
    with np.errstate(over="ignore"):
        scaled = acc.astype(np.int32).astype(np.float32) * scale
    clamped = np.clip(scaled, np.float32(lo - zero_point), np.float32(hi - zero_point))
    return np.rint(clamped).astype(np.int64) + zero_point


def fixed_point(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(multiplier, shift) with real ~= multiplier * 2^-shift, the multiplier
    normalised to [2^30, 2^31) for 31 bits of precision. Factors too small
    for the largest shift become 0; factors of 2^30 and above are refused."""
    mantissa, exponent = np.frexp(np.asarray(real, np.float64))
    multiplier = np.round(mantissa * (1 << 31)).astype(np.int64)
    exponent = exponent.astype(np.int64)
    carry = multiplier == 1 << 31  # the mantissa rounded up to 1.0
    multiplier = np.where(carry, multiplier >> 1, multiplier)
    shift = 31 - np.where(carry, exponent + 1, exponent)
    if np.any(shift < 1):
        raise ValueError(f"requantization factor {float(np.max(real)):g} is too large for a fixed-point multiplier")
    vanishing = (shift > MAX_SHIFT) | (multiplier == 0)
    return np.where(vanishing, 0, multiplier), np.where(vanishing, MAX_SHIFT, shift)
