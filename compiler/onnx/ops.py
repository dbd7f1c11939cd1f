"""ONNX operators as nn ops, one converter per operator.

Each converter reads the attributes and inputs it implements through its
`NodeContext` and checks their values; anything it cannot express exactly
in nn is a LoomError naming the node, never an approximation.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
from onnx import TensorProto
from xdsl.ir import SSAValue

from compiler.onnx.graph import (
    Constant,
    Converter,
    NodeContext,
    Value,
    constant_from_tensor,
    node_constant,
    shape_of,
    storage_array,
)
from compiler.onnx.model import ELEMENT_TYPES, type_name
from dialects import nn

CONVERTERS: dict[str, Converter] = {}


def converts(*op_types: str) -> Callable[[Converter], Converter]:
    def register(fn: Converter) -> Converter:
        for op_type in op_types:
            CONVERTERS[op_type] = fn
        return fn

    return register


# Operators without a converter yet, and why; the reason is shown to users.
PLANNED: dict[str, str] = {}


def _axis(node: NodeContext, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise node.error(f"axis {axis} is out of range for a rank-{rank} tensor")
    return axis % rank


def _reshape(node: NodeContext, x: SSAValue, shape: list[int]) -> SSAValue:
    return node.emit(nn.ReshapeOp, [x], shape=shape)


# ---- elementwise ------------------------------------------------------------------------


def _direct(op_class: type[nn.NNOperation], arity: int) -> Converter:
    """An operator that is one nn op with the same operands and no attributes."""

    def convert(node: NodeContext) -> Value:
        return node.emit(op_class, [node.tensor(i) for i in range(arity)])

    return convert


for _op_type, _op_class in {"Add": nn.AddOp, "Sub": nn.SubOp, "Mul": nn.MulOp, "Div": nn.DivOp}.items():
    CONVERTERS[_op_type] = _direct(_op_class, 2)

for _op_type, _op_class in {
    "Relu": nn.ReluOp,
    "Sigmoid": nn.SigmoidOp,
    "Tanh": nn.TanhOp,
    "Exp": nn.ExpOp,
    "Sqrt": nn.SqrtOp,
    "Neg": nn.NegOp,
}.items():
    CONVERTERS[_op_type] = _direct(_op_class, 1)


@converts("Gelu")
def _gelu(node: NodeContext) -> Value:
    if node.attr("approximate", "none") != "tanh":
        raise node.error("exact gelu not supported, export with approximate='tanh'")
    return node.emit(nn.GeluOp, [node.tensor(0)])


@converts("Identity")
def _identity(node: NodeContext) -> Value:
    return node.value(0)


@converts("Dropout")
def _dropout(node: NodeContext) -> Value:
    """Inference: the identity, whatever the ratio."""
    node.attr("ratio")
    node.attr("seed")
    if node.has_input(1):
        node.value(1)
    if node.has_input(2) and bool(np.any(node.constant(2, "training_mode"))):
        raise node.error("training mode is not supported")
    return node.value(0)


@converts("Cast")
def _cast(node: NodeContext) -> Value:
    """Constants are cast at import time; other values only when nothing changes."""
    target = node.required_attr("to")
    node.attr("saturate")
    value = node.value(0)
    if isinstance(value, Constant):
        return node_constant(storage_array(value.array, target), target, node.node.output[0])
    source = next(t for t, element_type in ELEMENT_TYPES.items() if element_type == value.type.element_type)
    if target != source:
        raise node.error(
            f"Cast from {type_name(source)} to {type_name(target)} is not supported; "
            "only casts that change nothing, or casts of constants"
        )
    return value


@converts("Constant")
def _constant(node: NodeContext) -> Value:
    name = node.node.output[0]
    tensor = node.attr("value")
    if tensor is not None:
        value = constant_from_tensor(tensor, name)
        return node_constant(value.array, value.elem_type, name)
    forms = {
        "value_float": TensorProto.FLOAT,
        "value_floats": TensorProto.FLOAT,
        "value_int": TensorProto.INT64,
        "value_ints": TensorProto.INT64,
    }
    given = [(node.attr(form), elem_type) for form, elem_type in forms.items()]
    given = [(raw, elem_type) for raw, elem_type in given if raw is not None]
    if len(given) != 1:
        raise node.error("only constants given by one 'value', 'value_float(s)' or 'value_int(s)' are supported")
    raw, elem_type = given[0]
    return node_constant(storage_array(np.array(raw), elem_type), elem_type, name)


# ---- linear algebra ---------------------------------------------------------------------


@converts("MatMul")
def _matmul(node: NodeContext) -> Value:
    """numpy.matmul: a 1-D operand gains a unit dim for the product and loses it after."""
    a, b = node.tensor(0), node.tensor(1)
    a_vector, b_vector = len(shape_of(a)) == 1, len(shape_of(b)) == 1
    if a_vector:
        a = _reshape(node, a, [1, *shape_of(a)])
    if b_vector:
        b = _reshape(node, b, [*shape_of(b), 1])
    y = node.emit(nn.MatmulOp, [a, b])
    if a_vector or b_vector:
        shape = shape_of(y)
        keep = shape[:-2] + ([] if a_vector else [shape[-2]]) + ([] if b_vector else [shape[-1]])
        y = _reshape(node, y, keep)
    return y


def _matrix(node: NodeContext, index: int, transposed: bool) -> SSAValue:
    x = node.tensor(index)
    if len(shape_of(x)) != 2:
        raise node.error(f"input '{node.node.input[index]}' must be a matrix, got {nn.format_type(x.type)}")
    return node.emit(nn.TransposeOp, [x], perm=[1, 0]) if transposed else x


@converts("Gemm")
def _gemm(node: NodeContext) -> Value:
    """alpha * A' @ B' + beta * C, with C broadcast to the product's shape."""
    a = _matrix(node, 0, bool(node.attr("transA", 0)))
    b = _matrix(node, 1, bool(node.attr("transB", 0)))
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    y = node.emit(nn.MatmulOp, [a, b])
    if alpha != 1.0:
        y = node.emit(nn.MulOp, [y, node.scalar(alpha, y)])
    c = node.optional_tensor(2)
    if c is None:
        return y
    if beta != 1.0:
        c = node.emit(nn.MulOp, [c, node.scalar(beta, c)])
    total = node.emit(nn.AddOp, [y, c])
    if shape_of(total) != shape_of(y):
        raise node.error(f"C {nn.format_type(c.type)} does not broadcast to the product {nn.format_type(y.type)}")
    return total


# ---- normalisation ----------------------------------------------------------------------


@converts("Softmax")
def _softmax(node: NodeContext) -> Value:
    """Before opset 13, softmax treats the dims from `axis` on as one row."""
    x = node.tensor(0)
    if node.opset >= 13:
        return node.emit(nn.SoftmaxOp, [x], axis=node.attr("axis", -1))
    shape = shape_of(x)
    axis = _axis(node, node.attr("axis", 1), len(shape))
    if axis == len(shape) - 1:
        return node.emit(nn.SoftmaxOp, [x], axis=axis)
    rows = _reshape(node, x, [math.prod(shape[:axis]), math.prod(shape[axis:])])
    return _reshape(node, node.emit(nn.SoftmaxOp, [rows], axis=1), shape)


@converts("LayerNormalization")
def _layernorm(node: NodeContext) -> Value:
    if node.attr("stash_type", 1) != 1:
        raise node.error("only stash_type=1 (statistics in float32) is supported")
    x, scale = node.tensor(0), node.tensor(1)
    bias = node.optional_tensor(2)
    if bias is None:
        bias = node.new_param(np.zeros(shape_of(scale)), scale, "bias")
    return node.emit(
        nn.LayerNormOp, [x, scale, bias], axis=node.attr("axis", -1), eps=node.attr("epsilon", 1e-5)
    )


@converts("BatchNormalization")
def _batchnorm(node: NodeContext) -> Value:
    """Inference form: the running mean and variance are the statistics."""
    if node.attr("training_mode", 0):
        raise node.error("training mode is not supported")
    if not node.attr("spatial", 1):
        raise node.error("spatial=0 (per-element statistics) is not supported")
    node.attr("momentum")  # updates running statistics in training only
    x, scale, bias, mean, var = (node.tensor(i) for i in range(5))
    return node.emit(nn.BatchNormOp, [x, mean, var, scale, bias], eps=node.attr("epsilon", 1e-5))


# ---- convolution and pooling ------------------------------------------------------------


def _spatial(node: NodeContext, x: SSAValue, what: str) -> list[int]:
    shape = shape_of(x)
    if len(shape) != 4:
        raise node.error(f"only 2-D {what} (NCHW input) is supported, got {nn.format_type(x.type)}")
    return shape[2:]


def _padding(
    node: NodeContext, sizes: list[int], kernel: list[int], strides: list[int], dilations: list[int]
) -> list[int]:
    """Per-dim padding from `pads` or `auto_pad`; nn pads both sides equally."""
    auto_pad = node.attr("auto_pad", "NOTSET")
    pads = list(node.attr("pads", [0] * 2 * len(sizes)))
    if auto_pad == "VALID":
        pads = [0] * 2 * len(sizes)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(sizes, kernel, strides, dilations):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        pads = begins + ends
    elif auto_pad != "NOTSET":
        raise node.error(f"unknown auto_pad '{auto_pad}'")
    if len(pads) != 2 * len(sizes):
        raise node.error(f"pads {pads} must hold a begin and an end for each of {len(sizes)} dims")
    begins, ends = pads[: len(sizes)], pads[len(sizes) :]
    if begins != ends:
        raise node.error(
            f"asymmetric padding (begin {begins}, end {ends}, auto_pad={auto_pad}) is not supported"
        )
    return begins


def conv_window(node: NodeContext, x: SSAValue, w: SSAValue) -> dict[str, list[int] | int]:
    """The nn conv2d parameters of a Conv-like node (Conv, QLinearConv):
    stride, padding, dilation and groups, checked against the weights."""
    sizes = _spatial(node, x, "convolution")
    kernel = shape_of(w)[2:]
    declared = node.attr("kernel_shape")
    if declared is not None and list(declared) != kernel:
        raise node.error(f"kernel_shape {list(declared)} does not match the weights' {kernel}")
    strides = list(node.attr("strides", [1, 1]))
    dilations = list(node.attr("dilations", [1, 1]))
    padding = _padding(node, sizes, kernel, strides, dilations)
    return {"stride": strides, "padding": padding, "dilation": dilations, "groups": node.attr("group", 1)}


@converts("Conv")
def _conv(node: NodeContext) -> Value:
    x, w = node.tensor(0), node.tensor(1)
    bias = node.optional_tensor(2)
    operands = [x, w] if bias is None else [x, w, bias]
    return node.emit(nn.Conv2dOp, operands, **conv_window(node, x, w))


def _pool_params(node: NodeContext, x: SSAValue) -> dict[str, list[int]]:
    sizes = _spatial(node, x, "pooling")
    kernel = list(node.required_attr("kernel_shape"))
    strides = list(node.attr("strides", [1] * len(kernel)))
    if any(d != 1 for d in node.attr("dilations", [1, 1])):
        raise node.error("dilated pooling is not supported")
    padding = _padding(node, sizes, kernel, strides, [1, 1])
    if node.attr("ceil_mode", 0):
        for size, k, s, p in zip(sizes, kernel, strides, padding):
            floor_out = (size + 2 * p - k) // s + 1
            ceil_out = math.ceil((size + 2 * p - k) / s) + 1
            if (ceil_out - 1) * s >= size + p:  # the last window would start in the padding
                ceil_out -= 1
            if ceil_out != floor_out:
                raise node.error("ceil_mode=1 is not supported where it adds a partial window")
    return {"kernel": kernel, "stride": strides, "padding": padding}


@converts("MaxPool")
def _maxpool(node: NodeContext) -> Value:
    node.attr("storage_order")  # the layout of the Indices output, which must be unused
    x = node.tensor(0)
    return node.emit(nn.MaxPool2dOp, [x], **_pool_params(node, x))


@converts("AveragePool")
def _avgpool(node: NodeContext) -> Value:
    x = node.tensor(0)
    params = _pool_params(node, x)
    count_include_pad = node.attr("count_include_pad", 0)
    if any(params["padding"]) and not count_include_pad:
        raise node.error(
            "count_include_pad=0 with padding is not supported: nn.avgpool2d counts padded cells "
            "(export with count_include_pad=1 or without padding)"
        )
    return node.emit(nn.AvgPool2dOp, [x], **params)


@converts("GlobalAveragePool")
def _global_avgpool(node: NodeContext) -> Value:
    x = node.tensor(0)
    rank = len(shape_of(x))
    if rank == 4:
        return node.emit(nn.GlobalAvgPoolOp, [x])
    return node.emit(nn.ReduceMeanOp, [x], axes=list(range(2, rank)), keepdims=True)


@converts("GlobalMaxPool")
def _global_maxpool(node: NodeContext) -> Value:
    x = node.tensor(0)
    return node.emit(nn.ReduceMaxOp, [x], axes=list(range(2, len(shape_of(x)))), keepdims=True)


# ---- data movement ----------------------------------------------------------------------


@converts("Reshape")
def _reshape_node(node: NodeContext) -> Value:
    """0 copies the input's dim at that position (unless allowzero), -1 is inferred."""
    x = node.tensor(0)
    allow_zero = node.attr("allowzero", 0)
    shape = shape_of(x)
    target = []
    for index, dim in enumerate(node.ints(1, "shape")):
        if dim == 0:
            if allow_zero:
                raise node.error("allowzero=1 with a 0 in the shape makes an empty tensor, which is not supported")
            if index >= len(shape):
                raise node.error(f"shape {index} is 0 but the input has only {len(shape)} dims")
            dim = shape[index]
        target.append(dim)
    return _reshape(node, x, target)


@converts("Flatten")
def _flatten(node: NodeContext) -> Value:
    x = node.tensor(0)
    shape = shape_of(x)
    axis = node.attr("axis", 1)
    if not -len(shape) <= axis <= len(shape):
        raise node.error(f"axis {axis} is out of range for a rank-{len(shape)} tensor")
    if axis < 0:
        axis += len(shape)
    return _reshape(node, x, [math.prod(shape[:axis]), math.prod(shape[axis:])])


def _axes(node: NodeContext, index: int) -> list[int] | None:
    """Axes from the attribute (older opsets) or the constant input `index`."""
    axes = node.attr("axes")
    if node.has_input(index):
        return node.ints(index, "axes")
    return None if axes is None else list(axes)


@converts("Squeeze")
def _squeeze(node: NodeContext) -> Value:
    x = node.tensor(0)
    shape = shape_of(x)
    axes = _axes(node, 1)
    if axes is None:
        axes = [i for i, d in enumerate(shape) if d == 1]
    axes = {_axis(node, a, len(shape)) for a in axes}
    if any(shape[a] != 1 for a in axes):
        raise node.error(f"cannot squeeze dims {sorted(axes)} of {nn.format_type(x.type)}: not all are 1")
    return _reshape(node, x, [d for i, d in enumerate(shape) if i not in axes])


@converts("Unsqueeze")
def _unsqueeze(node: NodeContext) -> Value:
    x = node.tensor(0)
    axes = _axes(node, 1)
    if axes is None:
        raise node.error("needs axes")
    dims = iter(shape_of(x))
    rank = len(shape_of(x)) + len(axes)
    inserted = {_axis(node, a, rank) for a in axes}
    return _reshape(node, x, [1 if i in inserted else next(dims) for i in range(rank)])


@converts("Transpose")
def _transpose(node: NodeContext) -> Value:
    perm = node.attr("perm")
    return node.emit(nn.TransposeOp, [node.tensor(0)], perm=None if perm is None else list(perm))


@converts("Slice")
def _slice(node: NodeContext) -> Value:
    """Opset 10+ takes starts/ends/axes/steps as constant inputs, opset 1 as attributes."""
    x = node.tensor(0)
    if node.opset < 10:
        starts, ends, axes = node.required_attr("starts"), node.required_attr("ends"), node.attr("axes")
        steps = None
    else:
        starts, ends = node.ints(1, "starts"), node.ints(2, "ends")
        axes = node.ints(3, "axes") if node.has_input(3) else None
        steps = node.ints(4, "steps") if node.has_input(4) else None
    if steps is not None and any(step < 1 for step in steps):
        raise node.error(f"steps {steps}: only positive steps are supported")
    return node.emit(nn.SliceOp, [x], starts=list(starts), ends=list(ends), axes=axes, steps=steps)


@converts("Split")
def _split(node: NodeContext) -> tuple[Value, ...]:
    """One slice per output; sizes from the `split` input (opset 13+) or
    attribute, else equal parts (the last one smaller under opset 18's
    num_outputs)."""
    x = node.tensor(0)
    shape = shape_of(x)
    axis = _axis(node, node.attr("axis", 0), len(shape))
    outputs = len(node.node.output)
    if node.has_input(1):
        sizes = node.ints(1, "split")
    elif node.attr("split") is not None:
        sizes = list(node.attr("split"))
    else:
        parts = node.attr("num_outputs", outputs)
        if parts != outputs:
            raise node.error(f"num_outputs={parts} but the node has {outputs} outputs")
        chunk = -(-shape[axis] // parts)
        sizes = [min(chunk, shape[axis] - i * chunk) for i in range(parts)]
    if len(sizes) != outputs or sum(sizes) != shape[axis] or min(sizes) < 1:
        raise node.error(f"cannot split axis {axis} of size {shape[axis]} into {sizes} for {outputs} outputs")
    offsets = np.cumsum([0, *sizes])
    return tuple(
        node.emit(nn.SliceOp, [x], starts=[int(start)], ends=[int(end)], axes=[axis])
        for start, end in itertools.pairwise(offsets)
    )


@converts("Concat")
def _concat(node: NodeContext) -> Value:
    tensors = [node.tensor(i) for i in range(node.input_count) if node.has_input(i)]
    return node.emit(nn.ConcatOp, tensors, axis=node.required_attr("axis"))


# ---- reductions -------------------------------------------------------------------------


def _reduction(op_class: type[nn.NNOperation]) -> Converter:
    """No axes (or empty axes) reduce every dim, unless noop_with_empty_axes."""

    def convert(node: NodeContext) -> Value:
        axes = _axes(node, 1)
        keepdims = bool(node.attr("keepdims", 1))
        noop_with_empty_axes = node.attr("noop_with_empty_axes", 0)
        if not axes and noop_with_empty_axes:
            return node.value(0)
        return node.emit(op_class, [node.tensor(0)], axes=axes or None, keepdims=keepdims)

    return convert


CONVERTERS["ReduceSum"] = _reduction(nn.ReduceSumOp)
CONVERTERS["ReduceMean"] = _reduction(nn.ReduceMeanOp)
CONVERTERS["ReduceMax"] = _reduction(nn.ReduceMaxOp)
