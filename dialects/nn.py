"""The `nn` dialect: tensor-level neural-network operations.

Every op is value-semantic on ranked, statically shaped tensors. Shape and
dtype rules live in one place per op, `infer`, which both the frontend (to
report errors at the offending source expression) and the op verifier (to
reject malformed IR, for instance after a buggy pass) call. Parameters that
describe an op (axis, stride, ...) are properties, canonicalised by `infer`
(negative axes made positive, defaults filled in) so later passes never have
to re-derive them.
"""

from __future__ import annotations

import math
from abc import ABC
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from xdsl.dialects.builtin import (
    BFloat16Type,
    BytesAttr,
    DenseArrayBase,
    DenseIntOrFPElementsAttr,
    Float16Type,
    Float32Type,
    FloatAttr,
    IntegerAttr,
    StringAttr,
    TensorType,
    bf16,
    f16,
    f32,
    f64,
    i1,
    i8,
    i32,
    i64,
)
from xdsl.ir import Attribute, Dialect, Operation, SSAValue
from xdsl.irdl import (
    ParsePropInAttrDict,
    IRDLOperation,
    irdl_op_definition,
    opt_prop_def,
    prop_def,
    result_def,
    traits_def,
    var_operand_def,
)
from xdsl.traits import Pure
from xdsl.utils.exceptions import VerifyException

# --------------------------------------------------------------------------
# Element types and tensor types
# --------------------------------------------------------------------------

DTYPES: dict[str, Attribute] = {"f32": f32, "f16": f16, "bf16": bf16, "i8": i8, "i32": i32}
FLOAT_TYPES = (Float32Type, Float16Type, BFloat16Type)


class ShapeError(Exception):
    """A shape or dtype rule was violated; the caller attaches a location."""


def dtype_name(element_type: Attribute) -> str:
    for name, t in DTYPES.items():
        if t == element_type:
            return name
    return str(element_type)


def format_type(t: Attribute) -> str:
    """Render a tensor type the way the DSL spells it: ``f32[1,784]``."""
    assert isinstance(t, TensorType)
    return f"{dtype_name(t.element_type)}[{','.join(str(d) for d in t.get_shape())}]"


def is_float(t: TensorType) -> bool:
    return isinstance(t.element_type, FLOAT_TYPES)


def tensor(element_type: Attribute, shape: Sequence[int]) -> TensorType:
    return TensorType(element_type, list(shape))


def numpy_dtype(element_type: Attribute) -> np.dtype:
    """The numpy dtype used to hold values of `element_type`.

    bf16 has no numpy dtype: values are held as float32 rounded to bf16.
    """
    if element_type == f16:
        return np.dtype(np.float16)
    if element_type in (f32, bf16):
        return np.dtype(np.float32)
    if element_type == i8:
        return np.dtype(np.int8)
    if element_type == i32:
        return np.dtype(np.int32)
    raise ShapeError(f"unsupported element type {element_type}")


def round_to_bf16(values: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest bf16 (ties to even), kept in float32."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    # ascontiguousarray makes 0-d arrays 1-d; give back the caller's shape.
    return (rounded & np.uint32(0xFFFF0000)).view(np.float32).reshape(np.shape(values))


def dense_from_array(array: np.ndarray, element_type: Attribute) -> DenseIntOrFPElementsAttr:
    """Build a dense attribute holding `array` in the storage layout of `element_type`."""
    t = tensor(element_type, array.shape)
    if element_type == bf16:
        raw = (round_to_bf16(array).view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    else:
        raw = np.ascontiguousarray(array, dtype=numpy_dtype(element_type))
    return DenseIntOrFPElementsAttr(t, BytesAttr(raw.tobytes()))


def array_from_dense(attr: DenseIntOrFPElementsAttr) -> np.ndarray:
    """The inverse of `dense_from_array`; splat attributes are expanded."""
    element_type = attr.get_element_type()
    shape = attr.get_shape()
    if element_type == bf16:
        raw = np.frombuffer(attr.data.data, dtype=np.uint16).astype(np.uint32) << np.uint32(16)
        flat = raw.view(np.float32)
    else:
        flat = np.frombuffer(attr.data.data, dtype=numpy_dtype(element_type))
    if flat.size == 1 and math.prod(shape) != 1:
        return np.full(shape, flat[0], dtype=flat.dtype)
    return flat.reshape(shape).copy()


# --------------------------------------------------------------------------
# Shape helpers shared by the rules below
# --------------------------------------------------------------------------


def broadcast_shapes(a: Sequence[int], b: Sequence[int]) -> list[int]:
    """numpy broadcasting of two shapes, or ShapeError naming the clash."""
    out: list[int] = []
    for i in range(1, max(len(a), len(b)) + 1):
        da = a[-i] if i <= len(a) else 1
        db = b[-i] if i <= len(b) else 1
        if da != db and da != 1 and db != 1:
            raise ShapeError(f"dimension {-i} is {da} on the left and {db} on the right")
        out.append(max(da, db) if 1 in (da, db) else da)
    return out[::-1]


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ShapeError(f"axis {axis} is out of range for a rank-{rank} tensor")
    return axis % rank


def pair(value: int | Sequence[int], what: str) -> list[int]:
    """A 2-D window parameter given as one int or as [h, w]."""
    values = [value, value] if isinstance(value, int) else list(value)
    if len(values) != 2:
        raise ShapeError(f"{what} must be one integer or a list of two, got {values}")
    if any(v < 0 for v in values):
        raise ShapeError(f"{what} must not be negative, got {values}")
    return [int(v) for v in values]


def window_output(size: int, kernel: int, stride: int, pad: int, dilation: int, what: str) -> int:
    span = dilation * (kernel - 1) + 1
    if stride < 1:
        raise ShapeError(f"stride must be at least 1, got {stride}")
    out = (size + 2 * pad - span) // stride + 1
    if out < 1:
        raise ShapeError(
            f"{what} window of {span} does not fit an input of {size} with padding {pad}"
        )
    return out


def same_dtype(op_name: str, types: Sequence[TensorType]) -> None:
    first = types[0].element_type
    for t in types[1:]:
        if t.element_type != first:
            raise ShapeError(
                f"{op_name} operands have different dtypes: "
                + ", ".join(format_type(x) for x in types)
            )


def require_float(op_name: str, t: TensorType) -> None:
    if not is_float(t):
        raise ShapeError(f"{op_name} needs a floating-point operand, got {format_type(t)}")


def require_rank(op_name: str, t: TensorType, rank: int, layout: str = "") -> None:
    if t.get_shape().__len__() != rank:
        suffix = f" ({layout})" if layout else ""
        raise ShapeError(f"{op_name} expects a rank-{rank} input{suffix}, got {format_type(t)}")


# --------------------------------------------------------------------------
# Parameters: python values <-> properties
# --------------------------------------------------------------------------


def _to_attr(kind: str, value: Any) -> Attribute:
    if kind == "int":
        return IntegerAttr(int(value), i64)
    if kind == "ints":
        return DenseArrayBase.from_list(i64, [int(v) for v in value])
    if kind == "float":
        return FloatAttr(float(value), f64)
    if kind == "bool":
        return IntegerAttr(int(bool(value)), i1)
    raise AssertionError(kind)


def _from_attr(kind: str, attr: Attribute) -> Any:
    if kind == "int":
        assert isinstance(attr, IntegerAttr)
        return attr.value.data
    if kind == "ints":
        assert isinstance(attr, DenseArrayBase)
        return list(attr.get_values())
    if kind == "float":
        assert isinstance(attr, FloatAttr)
        return attr.value.data
    if kind == "bool":
        assert isinstance(attr, IntegerAttr)
        return bool(attr.value.data)
    raise AssertionError(kind)


class InferredOperation(IRDLOperation, ABC):
    """Ops whose result type is inferred from operand types and parameters.

    Subclasses declare `PARAMS` (name -> "int" | "ints" | "float" | "bool")
    with matching properties, and `infer`, which returns the result type and
    the canonical parameters; `infer` is also the verifier. Dialects with
    other parameter kinds override `param_to_attr` / `param_from_attr`.
    """

    PARAMS: ClassVar[dict[str, str]] = {}

    @classmethod
    def infer(cls, types: Sequence[TensorType], **params: Any) -> tuple[TensorType, dict[str, Any]]:
        raise NotImplementedError

    @classmethod
    def param_to_attr(cls, kind: str, value: Any) -> Attribute:
        return _to_attr(kind, value)

    @classmethod
    def param_from_attr(cls, kind: str, attr: Attribute) -> Any:
        return _from_attr(kind, attr)

    @classmethod
    def make(cls, operands: Sequence[SSAValue | Operation], **params: Any) -> InferredOperation:
        """Create the op with its result type inferred; raises ShapeError."""
        values = [SSAValue.get(o) for o in operands]
        result_type, canonical = cls.infer([v.type for v in values], **params)  # type: ignore[misc]
        return cls.create(
            operands=values,
            result_types=[result_type],
            properties={k: cls.param_to_attr(cls.PARAMS[k], v) for k, v in canonical.items() if v is not None},
        )

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, kind in self.PARAMS.items():
            attr = self.properties.get(name)
            out[name] = None if attr is None else self.param_from_attr(kind, attr)
        return out

    def verify_(self) -> None:
        types = [o.type for o in self.operands]
        if not all(isinstance(t, TensorType) for t in types):
            raise VerifyException(f"{self.name} operands must be tensors")
        try:
            expected, _ = self.infer(types, **self.params())  # type: ignore[arg-type]
        except ShapeError as e:
            raise VerifyException(f"{self.name}: {e}") from e
        result = self.results[0]
        if expected != result.type:
            raise VerifyException(
                f"{self.name}: result type {result.type} does not match the inferred {expected}"
            )


class NNOperation(InferredOperation, ABC):
    """Base of every computing nn op."""

    result = result_def(TensorType)

    assembly_format = "$inputs attr-dict `:` functional-type($inputs, $result)"
    irdl_options = (ParsePropInAttrDict(),)


# --------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------


@irdl_op_definition
class ConstantOp(IRDLOperation):
    """A literal or a parameter with known value. `name` keeps the DSL name of
    a parameter so reports, quantization and weight files can refer to it."""

    name = "nn.constant"
    value = prop_def(DenseIntOrFPElementsAttr)
    sym_name = opt_prop_def(StringAttr)
    result = result_def(TensorType)
    traits = traits_def(Pure())

    assembly_format = "attr-dict `:` type($result)"
    irdl_options = (ParsePropInAttrDict(),)

    def __init__(self, array: np.ndarray, element_type: Attribute, name: str | None = None):
        attr = dense_from_array(np.asarray(array), element_type)
        super().__init__(
            properties={"value": attr} | ({"sym_name": StringAttr(name)} if name else {}),
            result_types=[attr.type],
        )

    @property
    def param_name(self) -> str | None:
        return self.sym_name.data if self.sym_name is not None else None

    def array(self) -> np.ndarray:
        return array_from_dense(self.value)

    def verify_(self) -> None:
        if self.value.type != self.result.type:
            raise VerifyException("nn.constant value type must equal its result type")


# --------------------------------------------------------------------------
# Elementwise
# --------------------------------------------------------------------------


class ElementwiseBinaryOp(NNOperation, ABC):
    """Binary arithmetic with numpy broadcasting and equal dtypes."""

    inputs = var_operand_def(TensorType)
    traits = traits_def(Pure())
    SYMBOL: ClassVar[str] = "?"

    @classmethod
    def infer(cls, types, **params):
        if len(types) != 2:
            raise ShapeError(f"{cls.name} takes two operands")
        a, b = types
        same_dtype(cls.name, types)
        try:
            shape = broadcast_shapes(a.get_shape(), b.get_shape())
        except ShapeError as e:
            raise ShapeError(
                f"cannot broadcast {format_type(a)} {cls.SYMBOL} {format_type(b)}: {e}"
            ) from None
        return tensor(a.element_type, shape), {}


@irdl_op_definition
class AddOp(ElementwiseBinaryOp):
    name = "nn.add"
    SYMBOL: ClassVar[str] = "+"


@irdl_op_definition
class SubOp(ElementwiseBinaryOp):
    name = "nn.sub"
    SYMBOL: ClassVar[str] = "-"


@irdl_op_definition
class MulOp(ElementwiseBinaryOp):
    name = "nn.mul"
    SYMBOL: ClassVar[str] = "*"


@irdl_op_definition
class DivOp(ElementwiseBinaryOp):
    name = "nn.div"
    SYMBOL: ClassVar[str] = "/"


class ElementwiseUnaryOp(NNOperation, ABC):
    """Unary op applied to every element; shape and dtype are unchanged."""

    inputs = var_operand_def(TensorType)
    traits = traits_def(Pure())
    FLOAT_ONLY: ClassVar[bool] = True

    @classmethod
    def infer(cls, types, **params):
        if len(types) != 1:
            raise ShapeError(f"{cls.name} takes one operand")
        if cls.FLOAT_ONLY:
            require_float(cls.name, types[0])
        return types[0], {}


@irdl_op_definition
class NegOp(ElementwiseUnaryOp):
    name = "nn.neg"
    FLOAT_ONLY: ClassVar[bool] = False


@irdl_op_definition
class ReluOp(ElementwiseUnaryOp):
    name = "nn.relu"
    FLOAT_ONLY: ClassVar[bool] = False


@irdl_op_definition
class GeluOp(ElementwiseUnaryOp):
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""

    name = "nn.gelu"


@irdl_op_definition
class SigmoidOp(ElementwiseUnaryOp):
    name = "nn.sigmoid"


@irdl_op_definition
class TanhOp(ElementwiseUnaryOp):
    name = "nn.tanh"


@irdl_op_definition
class ExpOp(ElementwiseUnaryOp):
    name = "nn.exp"


@irdl_op_definition
class SqrtOp(ElementwiseUnaryOp):
    name = "nn.sqrt"


@irdl_op_definition
class TrilOp(NNOperation):
    """Keep the lower triangle of the last two dims (j - i <= k), set the rest
    to `fill`. With fill=-1e9 before a softmax this is a causal mask."""

    name = "nn.tril"
    PARAMS: ClassVar[dict[str, str]] = {"k": "int", "fill": "float"}
    inputs = var_operand_def(TensorType)
    k = prop_def(IntegerAttr)
    fill = prop_def(FloatAttr)
    traits = traits_def(Pure())

    @classmethod
    def infer(cls, types, k=0, fill=0.0):
        (x,) = types
        if len(x.get_shape()) < 2:
            raise ShapeError(f"tril needs a tensor of rank 2 or more, got {format_type(x)}")
        return x, {"k": k, "fill": fill}


# --------------------------------------------------------------------------
# Linear algebra
# --------------------------------------------------------------------------


@irdl_op_definition
class MatmulOp(NNOperation):
    """numpy.matmul on operands of rank >= 2, batch dims broadcast."""

    name = "nn.matmul"
    inputs = var_operand_def(TensorType)
    traits = traits_def(Pure())

    @classmethod
    def infer(cls, types, **params):
        if len(types) != 2:
            raise ShapeError("matmul takes two operands")
        a, b = types
        same_dtype("matmul", types)
        sa, sb = a.get_shape(), b.get_shape()
        if len(sa) < 2 or len(sb) < 2:
            raise ShapeError(
                f"matmul operands must have rank 2 or more: {format_type(a)} @ {format_type(b)}"
            )
        if sa[-1] != sb[-2]:
            raise ShapeError(
                f"matmul inner dimensions differ: {format_type(a)} @ {format_type(b)} "
                f"({sa[-1]} != {sb[-2]})"
            )
        try:
            batch = broadcast_shapes(sa[:-2], sb[:-2])
        except ShapeError as e:
            raise ShapeError(
                f"matmul batch dimensions do not broadcast: {format_type(a)} @ {format_type(b)}: {e}"
            ) from None
        return tensor(a.element_type, [*batch, sa[-2], sb[-1]]), {}


# --------------------------------------------------------------------------
# Normalisation and softmax
# --------------------------------------------------------------------------


@irdl_op_definition
class SoftmaxOp(NNOperation):
    name = "nn.softmax"
    PARAMS: ClassVar[dict[str, str]] = {"axis": "int"}
    inputs = var_operand_def(TensorType)
    axis = prop_def(IntegerAttr)
    traits = traits_def(Pure())

    @classmethod
    def infer(cls, types, axis=-1):
        (x,) = types
        require_float("softmax", x)
        return x, {"axis": normalize_axis(axis, len(x.get_shape()))}


@irdl_op_definition
class LayerNormOp(NNOperation):
    """Normalise over dims axis..rank-1; gamma and beta have those dims' shape."""

    name = "nn.layernorm"
    PARAMS: ClassVar[dict[str, str]] = {"axis": "int", "eps": "float"}
    inputs = var_operand_def(TensorType)
    axis = prop_def(IntegerAttr)
    eps = prop_def(FloatAttr)
    traits = traits_def(Pure())

    @classmethod
    def infer(cls, types, axis=-1, eps=1e-5):
        if len(types) != 3:
            raise ShapeError("layernorm takes x, gamma and beta")
        x, gamma, beta = types
        require_float("layernorm", x)
        same_dtype("layernorm", types)
        axis = normalize_axis(axis, len(x.get_shape()))
        normalized = list(x.get_shape()[axis:])
        for what, t in (("gamma", gamma), ("beta", beta)):
            if list(t.get_shape()) != normalized:
                raise ShapeError(
                    f"layernorm {what} must have shape {normalized} (the normalised dims of "
                    f"{format_type(x)}), got {format_type(t)}"
                )
        return x, {"axis": axis, "eps": eps}


@irdl_op_definition
class BatchNormOp(NNOperation):
    """Inference batchnorm over the channel dim (dim 1) of an NC... tensor."""

    name = "nn.batchnorm"
    PARAMS: ClassVar[dict[str, str]] = {"eps": "float"}
    inputs = var_operand_def(TensorType)
    eps = prop_def(FloatAttr)
    traits = traits_def(Pure())

    @classmethod
    def infer(cls, types, eps=1e-5):
        if len(types) != 5:
            raise ShapeError("batchnorm takes x, mean, var, gamma and beta")
        x = types[0]
        require_float("batchnorm", x)
        same_dtype("batchnorm", types)
        if len(x.get_shape()) < 2:
            raise ShapeError(f"batchnorm needs an input of rank 2 or more, got {format_type(x)}")
        channels = x.get_shape()[1]
        for what, t in zip(("mean", "var", "gamma", "beta"), types[1:]):
            if list(t.get_shape()) != [channels]:
                raise ShapeError(
                    f"batchnorm {what} must have shape [{channels}] (channels of "
                    f"{format_type(x)}), got {format_type(t)}"
                )
        return x, {"eps": eps}


# --------------------------------------------------------------------------
# Convolution and pooling (NCHW activations, OIHW weights)
# --------------------------------------------------------------------------


@irdl_op_definition
class Conv2dOp(NNOperation):
    name = "nn.conv2d"
    PARAMS: ClassVar[dict[str, str]] = {"stride": "ints", "padding": "ints", "dilation": "ints", "groups": "int"}
    inputs = var_operand_def(TensorType)
    stride = prop_def(DenseArrayBase)
    padding = prop_def(DenseArrayBase)
    dilation = prop_def(DenseArrayBase)
    groups = prop_def(IntegerAttr)
    traits = traits_def(Pure())

    @classmethod
    def infer(cls, types, stride=1, padding=0, dilation=1, groups=1):
        if len(types) not in (2, 3):
            raise ShapeError("conv2d takes x, w and an optional bias b")
        x, w = types[0], types[1]
        same_dtype("conv2d", types)
        require_rank("conv2d", x, 4, "NCHW")
        if len(w.get_shape()) != 4:
            raise ShapeError(f"conv2d weights must be rank 4 (OIHW), got {format_type(w)}")
        stride, padding, dilation = (
            pair(stride, "stride"),
            pair(padding, "padding"),
            pair(dilation, "dilation"),
        )
        n, c, h, wd = x.get_shape()
        o, i, kh, kw = w.get_shape()
        if groups < 1 or c % groups or o % groups:
            raise ShapeError(
                f"conv2d groups={groups} must divide input channels {c} and output channels {o}"
            )
        if i * groups != c:
            raise ShapeError(
                f"conv2d weight expects {i * groups} input channels, input {format_type(x)} has {c}"
            )
        if len(types) == 3 and list(types[2].get_shape()) != [o]:
            raise ShapeError(f"conv2d bias must have shape [{o}], got {format_type(types[2])}")
        oh = window_output(h, kh, stride[0], padding[0], dilation[0], "conv2d")
        ow = window_output(wd, kw, stride[1], padding[1], dilation[1], "conv2d")
        return tensor(x.element_type, [n, o, oh, ow]), {
            "stride": stride,
            "padding": padding,
            "dilation": dilation,
            "groups": groups,
        }


class Pool2dOp(NNOperation, ABC):
    """Window pooling over H and W; stride defaults to the kernel size."""

    PARAMS: ClassVar[dict[str, str]] = {"kernel": "ints", "stride": "ints", "padding": "ints"}
    inputs = var_operand_def(TensorType)
    kernel = prop_def(DenseArrayBase)
    stride = prop_def(DenseArrayBase)
    padding = prop_def(DenseArrayBase)
    traits = traits_def(Pure())

    @classmethod
    def infer(cls, types, kernel=None, stride=None, padding=0):
        (x,) = types
        op = cls.name.removeprefix("nn.")
        require_rank(op, x, 4, "NCHW")
        if kernel is None:
            raise ShapeError(f"{op} needs kernel=")
        kernel = pair(kernel, "kernel")
        stride = pair(stride if stride is not None else kernel, "stride")
        padding = pair(padding, "padding")
        if any(p * 2 > k for p, k in zip(padding, kernel)):
            raise ShapeError(f"{op} padding {padding} must be at most half the kernel {kernel}")
        n, c, h, w = x.get_shape()
        oh = window_output(h, kernel[0], stride[0], padding[0], 1, op)
        ow = window_output(w, kernel[1], stride[1], padding[1], 1, op)
        return tensor(x.element_type, [n, c, oh, ow]), {
            "kernel": kernel,
            "stride": stride,
            "padding": padding,
        }


@irdl_op_definition
class MaxPool2dOp(Pool2dOp):
    """Padding cells never win (they are -inf)."""

    name = "nn.maxpool2d"


@irdl_op_definition
class AvgPool2dOp(Pool2dOp):
    """Padding cells count as zeros and the divisor is always kh*kw."""

    name = "nn.avgpool2d"


@irdl_op_definition
class GlobalAvgPoolOp(NNOperation):
    """Mean over H and W of an NCHW tensor, giving N x C x 1 x 1."""

    name = "nn.global_avgpool"
    inputs = var_operand_def(TensorType)
    traits = traits_def(Pure())

    @classmethod
    def infer(cls, types, **params):
        (x,) = types
        require_rank("global_avgpool", x, 4, "NCHW")
        require_float("global_avgpool", x)
        n, c, _, _ = x.get_shape()
        return tensor(x.element_type, [n, c, 1, 1]), {}


# --------------------------------------------------------------------------
# Data movement
# --------------------------------------------------------------------------


@irdl_op_definition
class ReshapeOp(NNOperation):
    """Row-major reshape; one dim of `shape` may be -1 and is inferred."""

    name = "nn.reshape"
    PARAMS: ClassVar[dict[str, str]] = {"shape": "ints"}
    inputs = var_operand_def(TensorType)
    shape = prop_def(DenseArrayBase)
    traits = traits_def(Pure())

    @classmethod
    def infer(cls, types, shape=None):
        (x,) = types
        if shape is None:
            raise ShapeError("reshape needs a target shape")
        size = math.prod(x.get_shape())
        shape = [int(d) for d in shape]
        unknown = [i for i, d in enumerate(shape) if d == -1]
        if len(unknown) > 1 or any(d < -1 or d == 0 for d in shape):
            raise ShapeError(f"reshape target {shape} may hold positive dims and at most one -1")
        known = math.prod(d for d in shape if d != -1)
        if unknown:
            if size % known:
                raise ShapeError(f"cannot reshape {format_type(x)} ({size} elements) to {shape}")
            shape[unknown[0]] = size // known
        if math.prod(shape) != size:
            raise ShapeError(
                f"cannot reshape {format_type(x)} ({size} elements) to {shape} "
                f"({math.prod(shape)} elements)"
            )
        return tensor(x.element_type, shape), {"shape": shape}


@irdl_op_definition
class TransposeOp(NNOperation):
    name = "nn.transpose"
    PARAMS: ClassVar[dict[str, str]] = {"perm": "ints"}
    inputs = var_operand_def(TensorType)
    perm = prop_def(DenseArrayBase)
    traits = traits_def(Pure())

    @classmethod
    def infer(cls, types, perm=None):
        (x,) = types
        rank = len(x.get_shape())
        perm = list(reversed(range(rank))) if perm is None else [normalize_axis(p, rank) for p in perm]
        if sorted(perm) != list(range(rank)):
            raise ShapeError(f"transpose perm {perm} is not a permutation of 0..{rank - 1}")
        return tensor(x.element_type, [x.get_shape()[p] for p in perm]), {"perm": perm}


@irdl_op_definition
class SliceOp(NNOperation):
    """x[start:end:step] on every dim, numpy semantics with a positive step.

    `axes` names the dims `starts`/`ends`/`steps` apply to (default: the
    leading ones); inference spells all of them out, one entry per dim with
    bounds clamped to the dim, so lowerings read a plain box.
    """

    name = "nn.slice"
    PARAMS: ClassVar[dict[str, str]] = {"starts": "ints", "ends": "ints", "axes": "ints", "steps": "ints"}
    inputs = var_operand_def(TensorType)
    starts = prop_def(DenseArrayBase)
    ends = prop_def(DenseArrayBase)
    axes = prop_def(DenseArrayBase)
    steps = prop_def(DenseArrayBase)
    traits = traits_def(Pure())

    @classmethod
    def infer(cls, types, starts=None, ends=None, axes=None, steps=None):
        (x,) = types
        shape = list(x.get_shape())
        rank = len(shape)
        if starts is None or ends is None:
            raise ShapeError("slice needs starts and ends")
        axes = list(range(len(starts))) if axes is None else [normalize_axis(a, rank) for a in axes]
        steps = [1] * len(axes) if steps is None else list(steps)
        if not len(starts) == len(ends) == len(axes) == len(steps):
            raise ShapeError(
                f"slice starts {list(starts)}, ends {list(ends)}, axes {axes} and steps {steps} differ in length"
            )
        if len(set(axes)) != len(axes):
            raise ShapeError(f"slice names an axis twice: {axes}")
        full = {a: (0, d, 1) for a, d in enumerate(shape)}
        for axis, start, end, step in zip(axes, starts, ends, steps):
            if step < 1:
                raise ShapeError(f"slice step {step} on axis {axis} must be positive")
            begin, stop, _ = slice(int(start), int(end)).indices(shape[axis])
            if stop <= begin:
                raise ShapeError(f"slice {start}:{end} of axis {axis} (size {shape[axis]}) is empty")
            full[axis] = (begin, stop, int(step))
        bounds = [full[a] for a in range(rank)]
        out = [-(-(stop - begin) // step) for begin, stop, step in bounds]
        return tensor(x.element_type, out), {
            "starts": [b[0] for b in bounds],
            "ends": [b[1] for b in bounds],
            "axes": list(range(rank)),
            "steps": [b[2] for b in bounds],
        }


@irdl_op_definition
class ConcatOp(NNOperation):
    name = "nn.concat"
    PARAMS: ClassVar[dict[str, str]] = {"axis": "int"}
    inputs = var_operand_def(TensorType)
    axis = prop_def(IntegerAttr)
    traits = traits_def(Pure())

    @classmethod
    def infer(cls, types, axis=0):
        if not types:
            raise ShapeError("concat needs at least one operand")
        same_dtype("concat", types)
        first = list(types[0].get_shape())
        axis = normalize_axis(axis, len(first))
        total = 0
        for t in types:
            shape = list(t.get_shape())
            if len(shape) != len(first) or shape[:axis] + shape[axis + 1 :] != first[:axis] + first[axis + 1 :]:
                raise ShapeError(
                    f"concat operands must agree on every dim but axis {axis}: "
                    + ", ".join(format_type(x) for x in types)
                )
            total += shape[axis]
        first[axis] = total
        return tensor(types[0].element_type, first), {"axis": axis}


# --------------------------------------------------------------------------
# Reductions
# --------------------------------------------------------------------------


class ReductionOp(NNOperation, ABC):
    """Reduce over `axes` (all dims when absent), optionally keeping them as 1."""

    PARAMS: ClassVar[dict[str, str]] = {"axes": "ints", "keepdims": "bool"}
    inputs = var_operand_def(TensorType)
    axes = prop_def(DenseArrayBase)
    keepdims = prop_def(IntegerAttr)
    traits = traits_def(Pure())

    @classmethod
    def infer(cls, types, axes=None, keepdims=False):
        (x,) = types
        shape = list(x.get_shape())
        if axes is None:
            axes = list(range(len(shape)))
        elif isinstance(axes, int):
            axes = [axes]
        axes = sorted({normalize_axis(a, len(shape)) for a in axes})
        if keepdims:
            out = [1 if i in axes else d for i, d in enumerate(shape)]
        else:
            out = [d for i, d in enumerate(shape) if i not in axes]
        return tensor(x.element_type, out), {"axes": axes, "keepdims": bool(keepdims)}


@irdl_op_definition
class ReduceSumOp(ReductionOp):
    name = "nn.sum"


@irdl_op_definition
class ReduceMeanOp(ReductionOp):
    name = "nn.mean"

    @classmethod
    def infer(cls, types, axes=None, keepdims=False):
        require_float("mean", types[0])
        return super().infer(types, axes=axes, keepdims=keepdims)


@irdl_op_definition
class ReduceMaxOp(ReductionOp):
    name = "nn.max"


NN = Dialect(
    "nn",
    [
        ConstantOp,
        AddOp,
        SubOp,
        MulOp,
        DivOp,
        NegOp,
        ReluOp,
        GeluOp,
        SigmoidOp,
        TanhOp,
        ExpOp,
        SqrtOp,
        TrilOp,
        MatmulOp,
        SoftmaxOp,
        LayerNormOp,
        BatchNormOp,
        Conv2dOp,
        MaxPool2dOp,
        AvgPool2dOp,
        GlobalAvgPoolOp,
        ReshapeOp,
        TransposeOp,
        SliceOp,
        ConcatOp,
        ReduceSumOp,
        ReduceMeanOp,
        ReduceMaxOp,
    ],
)

# Names of model-level function attributes shared by the frontend, the
# interpreter and the backends.
INPUTS_ATTR = "loom.inputs"
OUTPUTS_ATTR = "loom.outputs"
MODEL_ATTR = "loom.model"

