"""ONNX's quantization operators as quant-dialect ops.

- `QuantizeLinear` and `DequantizeLinear` become `quant.quantize` and
  `quant.dequantize`, with scales and zero points per tensor, per axis
  (`axis`) or per block (`block_size`).
- `QLinearMatMul` and `QLinearConv` become `quant.matmul` / `quant.conv2d`
  on the integers, then `quant.requantize_float`, which multiplies the i32
  sums by f32(f32(x_scale * w_scale) / y_scale) and rounds half to even:
  onnxruntime's arithmetic, so the outputs are the same integers.

QDQ models (float operators between DequantizeLinear and QuantizeLinear)
import as written; the `fuse-qdq` pass, which `import_onnx` runs, turns
them into the same integer ops.

Loom's quantized values are signed. An unsigned ONNX tensor (UINT8, UINT4)
is held as a signed one, less 2^(bits-1), with its zero point shifted by as
much, so that q - zero_point, and the real value it stands for, do not
change. Only the quantized operators, which read integers through their
zero point, and operators that only move or select elements may use such a
tensor; another use, or a graph output of an unsigned type, is an error.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from weakref import WeakKeyDictionary

import numpy as np
import onnx
from onnx import TensorProto
from xdsl.dialects.builtin import f32, i8, i32
from xdsl.ir import Attribute, SSAValue

from compiler.onnx.graph import Constant, GraphImporter, NodeContext, Value, shape_of
from compiler.onnx.model import node_label, type_name
from compiler.onnx.ops import conv_window, converts
from dialects import nn, quant


@dataclass(frozen=True)
class IntegerFormat:
    """How Loom holds the integers of one ONNX type: `bits`-bit signed values
    (in i8, or i32 for 32 bits), `offset` below ONNX's."""

    elem_type: int
    bits: int
    offset: int = 0

    @property
    def storage(self) -> Attribute:
        return i32 if self.bits == 32 else i8

    @property
    def name(self) -> str:
        return type_name(self.elem_type)

    def stored(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values).astype(np.int64) - self.offset


FORMATS = {
    f.elem_type: f
    for f in (
        IntegerFormat(TensorProto.INT8, 8),
        IntegerFormat(TensorProto.UINT8, 8, 128),
        IntegerFormat(TensorProto.INT4, 4),
        IntegerFormat(TensorProto.UINT4, 4, 8),
        IntegerFormat(TensorProto.INT32, 32),
    )
}
QUANTIZATION_OPERATORS = {"QuantizeLinear", "DequantizeLinear", "QLinearMatMul", "QLinearConv"}
QUANTIZED_TYPES = (TensorProto.INT8, TensorProto.UINT8, TensorProto.INT4, TensorProto.UINT4)
QLINEAR_TYPES = (TensorProto.INT8, TensorProto.UINT8)

# Operators that read an unsigned tensor through its zero point.
QUANTIZED_READERS = QUANTIZATION_OPERATORS - {"QuantizeLinear"}
# Operators that only move, select or compare elements: on shifted integers
# they give the shifted result.
ORDER_PRESERVING = {
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Concat", "Slice", "Split",
    "MaxPool", "GlobalMaxPool", "ReduceMax",
}


# ---- what the graph says about its tensors ----------------------------------------------


class GraphFacts:
    """Element types (by ONNX type inference) and consumers of every tensor
    of the graph, worked out once per import."""

    def __init__(self, importer: GraphImporter):
        graph = importer.graph
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", importer.opset)])
        inferred = onnx.shape_inference.infer_shapes(model).graph
        self.types = {t.name: t.data_type for t in graph.initializer}
        for info in (*inferred.input, *inferred.value_info, *inferred.output):
            if info.type.HasField("tensor_type"):
                self.types[info.name] = info.type.tensor_type.elem_type
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.outputs = {o.name for o in graph.output}


_FACTS: WeakKeyDictionary[GraphImporter, GraphFacts] = WeakKeyDictionary()
# Constants of other integer types, converted to their i8 form once.
_STORED: WeakKeyDictionary[Constant, Constant] = WeakKeyDictionary()


def _facts(node: NodeContext) -> GraphFacts:
    if node.importer not in _FACTS:
        _FACTS[node.importer] = GraphFacts(node.importer)
    return _FACTS[node.importer]


def _elem_type(node: NodeContext, index: int) -> int:
    value = node.value(index)
    if isinstance(value, Constant):
        return value.elem_type
    name = node.node.input[index]
    if name not in _facts(node).types:
        raise node.error(f"ONNX type inference gives no element type for input '{name}'")
    return _facts(node).types[name]


def _format(node: NodeContext, elem_type: int, allowed: tuple[int, ...], what: str) -> IntegerFormat:
    if elem_type not in allowed:
        raise node.error(
            f"{what} of type {type_name(elem_type)} is not supported "
            f"(Loom supports {', '.join(type_name(t) for t in allowed)})"
        )
    return FORMATS[elem_type]


def _check_unsigned_uses(node: NodeContext, fmt: IntegerFormat) -> None:
    """An unsigned result may only reach quantized operators, through
    order-preserving ones (see the module docstring)."""
    if not fmt.offset:
        return
    facts = _facts(node)
    pending, seen = [node.node.output[0]], set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in facts.outputs:
            raise node.error(
                f"graph output '{name}' is {fmt.name}, which Loom does not have (it holds {fmt.name} "
                f"values as signed ones less {fmt.offset}); dequantize it in the graph, or quantize to a signed type"
            )
        for user in facts.consumers[name]:
            if user.op_type in ORDER_PRESERVING:
                pending.extend(o for o in user.output if o)
            elif user.op_type not in QUANTIZED_READERS:
                raise node.error(
                    f"its {fmt.name} result reaches {user.op_type} ({node_label(user)}); Loom holds {fmt.name} "
                    f"values as signed ones less {fmt.offset}, which only quantized operators and operators "
                    "that move elements read correctly"
                )


# ---- scales, zero points and integer inputs ---------------------------------------------


def _scale(node: NodeContext, index: int) -> np.ndarray:
    array = node.constant(index, "scale")
    if _elem_type(node, index) != TensorProto.FLOAT:
        raise node.error(f"a scale of type {type_name(_elem_type(node, index))} is not supported (only FLOAT)")
    scale = np.asarray(array, np.float32)
    if not np.all(np.isfinite(scale) & (scale > 0)):
        raise node.error(f"scales must be finite and positive, got {scale.reshape(-1)[:4].tolist()}")
    return scale


def _zero_point(node: NodeContext, index: int, fmt: IntegerFormat, scale: np.ndarray) -> np.ndarray:
    """The stored zero point(s) of input `index`, 0 when it is omitted."""
    if not node.has_input(index):
        return np.zeros(scale.shape, np.int64)
    zero_point = fmt.stored(node.constant(index, "zero point"))
    if zero_point.size == scale.size == 1:
        zero_point = zero_point.reshape(scale.shape)
    if zero_point.shape != scale.shape:
        raise node.error(f"zero point of shape {list(zero_point.shape)} and scale of shape {list(scale.shape)} differ")
    if fmt.bits == 32 and np.any(zero_point):
        raise node.error("INT32 values must have a zero point of 0")
    return zero_point


def _single(node: NodeContext, values: np.ndarray, what: str) -> float | int:
    if values.size != 1:
        raise node.error(f"{what} must be one value (per tensor), got shape {list(values.shape)}")
    return values.reshape(-1)[0].item()


def _uniform(node: NodeContext, values: np.ndarray, what: str) -> int:
    flat = values.reshape(-1)
    if np.any(flat != flat[0]):
        raise node.error(f"{what} that differ per channel are not supported")
    return int(flat[0])


def _integers(node: NodeContext, index: int, fmt: IntegerFormat) -> SSAValue:
    """Input `index` in Loom's signed storage (constants converted once)."""
    value = node.value(index)
    what = f"{node.label}: input '{node.node.input[index]}'"
    if isinstance(value, Constant):
        if value.elem_type != fmt.elem_type:
            raise node.error(f"input '{node.node.input[index]}' is {type_name(value.elem_type)}, expected {fmt.name}")
        if value.elem_type not in (TensorProto.INT8, TensorProto.INT32):
            if value not in _STORED:
                stored_type = TensorProto.INT32 if fmt.bits == 32 else TensorProto.INT8
                _STORED[value] = Constant(fmt.stored(value.array).astype(np.int32 if fmt.bits == 32 else np.int8),
                                          stored_type, value.name)
            value = _STORED[value]
        return node.importer.materialize(value, what)
    if value.type.element_type != fmt.storage:
        raise node.error(
            f"input '{node.node.input[index]}' is {nn.format_type(value.type)}, expected {fmt.name} values"
        )
    return value


def _quant_type(node: NodeContext, shape: list[int], fmt: IntegerFormat, scale: np.ndarray,
                zero_point: np.ndarray) -> quant.UniformQuantAttr:
    """Per tensor for one scale, per axis for a 1-D scale along `axis`, per
    block with `block_size`, as the ONNX operators define them."""
    axis = node.attr("axis", 1)
    block_size = node.attr("block_size", 0)
    rank = len(shape)
    if block_size == 0 and scale.size == 1:
        return quant.UniformQuantAttr.get(scale.reshape(()), zero_point.reshape(()), fmt.bits)
    if not -rank <= axis < rank:
        raise node.error(f"axis {axis} is out of range for a rank-{rank} tensor")
    axis %= rank
    if block_size < 0:
        raise node.error(f"block_size must not be negative, got {block_size}")
    if block_size:
        if scale.ndim != rank:
            raise node.error(f"blocked quantization needs scales of rank {rank}, got shape {list(scale.shape)}")
        block = [block_size if d == axis else 1 for d in range(rank)]
        return quant.UniformQuantAttr.get(scale, zero_point, fmt.bits, block)
    if scale.shape != (shape[axis],):
        raise node.error(
            f"per-axis scales must have one value per index of dim {axis} ({shape[axis]}), "
            f"got shape {list(scale.shape)}"
        )
    view = [shape[axis] if d == axis else 1 for d in range(rank)]
    block = [1 if d == axis else size for d, size in enumerate(shape)]
    return quant.UniformQuantAttr.get(scale.reshape(view), zero_point.reshape(view), fmt.bits, block)


def _float_only(node: NodeContext, attribute: str) -> None:
    """An opset 21+ type attribute: 0 (the default) or FLOAT."""
    elem_type = node.attr(attribute, 0)
    if elem_type not in (0, TensorProto.FLOAT):
        raise node.error(f"{attribute}={type_name(elem_type)} is not supported (only FLOAT)")


# ---- QuantizeLinear and DequantizeLinear ---------------------------------------------------


@converts("QuantizeLinear")
def _quantize_linear(node: NodeContext) -> Value:
    x = node.tensor(0)
    if x.type.element_type != f32:
        raise node.error(f"quantizing {nn.format_type(x.type)} values is not supported (only FLOAT)")
    _float_only(node, "precision")
    node.attr("saturate")  # applies to float8 outputs only
    output_dtype = node.attr("output_dtype", 0)
    if node.has_input(2):
        elem_type = _elem_type(node, 2)
        if output_dtype not in (0, elem_type):
            raise node.error(
                f"output_dtype {type_name(output_dtype)} differs from the zero point's {type_name(elem_type)}"
            )
    else:
        elem_type = output_dtype or TensorProto.UINT8
    fmt = _format(node, elem_type, QUANTIZED_TYPES, "quantizing to values")
    _check_unsigned_uses(node, fmt)
    scale = _scale(node, 1)
    zero_point = _zero_point(node, 2, fmt, scale)
    quant_type = _quant_type(node, shape_of(x), fmt, scale, zero_point)
    return node.emit(quant.QuantizeOp, [x], quant_type=quant_type)


@converts("DequantizeLinear")
def _dequantize_linear(node: NodeContext) -> Value:
    _float_only(node, "output_dtype")
    fmt = _format(node, _elem_type(node, 0), (*QUANTIZED_TYPES, TensorProto.INT32), "dequantizing values")
    q = _integers(node, 0, fmt)
    scale = _scale(node, 1)
    zero_point = _zero_point(node, 2, fmt, scale)
    quant_type = _quant_type(node, shape_of(q), fmt, scale, zero_point)
    return node.emit(quant.DequantizeOp, [q], quant_type=quant_type)


# ---- QLinearMatMul and QLinearConv ---------------------------------------------------------


@dataclass
class QuantizedOperand:
    """An input of a QLinear operator: its integers and quantization."""

    values: SSAValue
    fmt: IntegerFormat
    scale: np.ndarray
    zero_point: np.ndarray


def _operand(node: NodeContext, index: int) -> QuantizedOperand:
    """Input `index` with its scale and zero point, the next two inputs."""
    fmt = _format(node, _elem_type(node, index), QLINEAR_TYPES, f"input '{node.node.input[index]}'")
    scale = _scale(node, index + 1)
    return QuantizedOperand(_integers(node, index, fmt), fmt, scale, _zero_point(node, index + 2, fmt, scale))


def _per_tensor(node: NodeContext, operand: QuantizedOperand, name: str, layout: str) -> tuple[float, int]:
    """The one scale and zero point of `operand`."""
    if operand.scale.size != 1 or operand.zero_point.size != 1:
        raise node.error(
            f"{name}_scale of shape {list(operand.scale.shape)}: {layout} quantization of {name} is not "
            f"supported, only per tensor"
        )
    return operand.scale.item(), operand.zero_point.item()


def _output(node: NodeContext, index: int) -> tuple[float, int, IntegerFormat]:
    """The output's scale, stored zero point and format (inputs `index`, `index + 1`)."""
    fmt = _format(node, _elem_type(node, index + 1), QLINEAR_TYPES, "output")
    _check_unsigned_uses(node, fmt)
    scale = _scale(node, index)
    zero_point = _zero_point(node, index + 1, fmt, scale)
    return _single(node, scale, "y_scale"), _single(node, zero_point, "y_zero_point"), fmt


def _requantized(node: NodeContext, acc: SSAValue, input_scale: float, weight_scale: np.ndarray, axis: int,
                 output: tuple[float, int, IntegerFormat]) -> SSAValue:
    """The i32 sums rescaled as onnxruntime does: by the f32 factor
    f32(f32(input_scale * weight_scale) / output_scale), per channel of `axis`."""
    scale, zero_point, fmt = output
    factor = (np.float32(input_scale) * weight_scale.reshape(-1).astype(np.float32)) / np.float32(scale)
    return node.emit(
        quant.FloatRequantizeOp, [acc], scale=factor, axis=axis, zero_point=zero_point,
        clamp=list(quant.value_range(fmt.bits)),
    )


def _per_channel(node: NodeContext, values: np.ndarray, channels: int, what: str) -> np.ndarray:
    """One value, or one per channel given as a vector or a tensor with every other dim 1."""
    if values.size == 1 or (values.size == channels and math.prod(values.shape) == max(values.shape)):
        return values.reshape(-1)
    raise node.error(f"{what} must be one value or one per output channel ({channels}), got shape {list(values.shape)}")


@converts("QLinearMatMul")
def _qlinear_matmul(node: NodeContext) -> Value:
    """Per-tensor a; b per tensor or per column (its last dim)."""
    a, b = _operand(node, 0), _operand(node, 3)
    output = _output(node, 6)
    for operand, name in ((a, "a"), (b, "b")):
        if len(shape_of(operand.values)) < 2:
            raise node.error(f"a 1-D {name} is not supported (use a matrix)")
    columns = shape_of(b.values)[-1]
    if b.scale.size != 1 and b.scale.shape[-1] != columns:
        raise node.error(f"b_scale of shape {list(b.scale.shape)} is not per tensor or per column of b")
    b_scale = _per_channel(node, b.scale, columns, "b_scale")
    a_scale, a_zero_point = _per_tensor(node, a, "a", "per-row")
    acc = node.emit(
        quant.MatmulOp, [a.values, b.values],
        lhs_zero_point=a_zero_point, rhs_zero_point=_uniform(node, b.zero_point, "b_zero_points"),
    )
    return _requantized(node, acc, a_scale, b_scale, len(shape_of(acc)) - 1, output)


@converts("QLinearConv")
def _qlinear_conv(node: NodeContext) -> Value:
    """Per-tensor x; w per tensor or per output channel; an optional INT32
    bias at the scale x_scale * w_scale."""
    x, w = _operand(node, 0), _operand(node, 3)
    output = _output(node, 6)
    window = conv_window(node, x.values, w.values)
    bias = []
    if node.has_input(8):
        fmt = _format(node, _elem_type(node, 8), (TensorProto.INT32,), "bias")
        bias.append(_integers(node, 8, fmt))
    channels = shape_of(w.values)[0]
    x_scale, x_zero_point = _per_tensor(node, x, "x", "per-channel")
    acc = node.emit(
        quant.Conv2dOp, [x.values, w.values, *bias], **window, input_zero_point=x_zero_point,
        weight_zero_point=_uniform(node, w.zero_point, "w_zero_points"),
    )
    w_scale = _per_channel(node, w.scale, channels, "w_scale")
    return _requantized(node, acc, x_scale, w_scale, 1, output)
