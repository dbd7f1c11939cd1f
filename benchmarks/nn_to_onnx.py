"""Export an nn-level model to ONNX, so onnxruntime can run the very model Loom compiles.

    model = to_onnx(compiler.api.load_module("samples/lenet.loom"))

Each nn op becomes the ONNX op with the same meaning, parameters carried
over as attributes (or, where ONNX wants them, as int64 initializers);
`nn.constant`s become initializers. An op or dtype with no faithful ONNX
counterpart raises `UnsupportedError` rather than being approximated, so a
comparison against onnxruntime is always a comparison of the same function.

The default opset is 20, the first with `Gelu(approximate="tanh")`; older
opsets (down to 17, the first with `LayerNormalization`) are accepted, with
GELU written out in elementary ops and reduction axes given as attributes
where that opset wants them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, TensorType, f16, f32, i8, i32
from xdsl.ir import Attribute, SSAValue

from compiler.model import find_model, signature_of
from dialects import nn

DEFAULT_OPSET = 20
MIN_OPSET = 17

ONNX_ELEMENT_TYPES: dict[Attribute, int] = {
    f32: TensorProto.FLOAT,
    f16: TensorProto.FLOAT16,
    i8: TensorProto.INT8,
    i32: TensorProto.INT32,
}


class UnsupportedError(Exception):
    """The model uses an op or dtype that has no faithful ONNX mapping."""


class GraphBuilder:
    """Accumulates nodes and initializers and hands out unique value names."""

    def __init__(self, opset: int, reserved: set[str]):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.taken = set(reserved)

    def fresh(self, hint: str) -> str:
        name, suffix = hint, 0
        while name in self.taken:
            suffix += 1
            name = f"{hint}_{suffix}"
        self.taken.add(name)
        return name

    def constant(self, array: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op_type: str, inputs: list[str], hint: str = "", **attrs) -> str:
        output = self.fresh(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [output], **attrs))
        return output


Emitter = Callable[[GraphBuilder, nn.NNOperation, list[str]], str]

EMITTERS: dict[type[nn.NNOperation], Emitter] = {}


def emits(*op_classes: type[nn.NNOperation]) -> Callable[[Emitter], Emitter]:
    """Register the decorated function as the ONNX emitter of `op_classes`."""

    def register(fn: Emitter) -> Emitter:
        for cls in op_classes:
            EMITTERS[cls] = fn
        return fn

    return register


def result_dtype(op: nn.NNOperation) -> np.dtype:
    t = op.results[0].type
    assert isinstance(t, TensorType)
    return nn.numpy_dtype(t.element_type)


def scalar(b: GraphBuilder, op: nn.NNOperation, value: float, hint: str) -> str:
    """A rank-0 initializer of `op`'s result dtype, to broadcast against its operands."""
    return b.constant(np.asarray(value, dtype=result_dtype(op)), hint)


def int64s(b: GraphBuilder, values: list[int], hint: str) -> str:
    return b.constant(np.asarray(values, dtype=np.int64), hint)


# --------------------------------------------------------------------------
# Ops that map one-to-one, without parameters
# --------------------------------------------------------------------------

ONE_TO_ONE: dict[type[nn.NNOperation], str] = {
    nn.AddOp: "Add",
    nn.SubOp: "Sub",
    nn.MulOp: "Mul",
    nn.DivOp: "Div",
    nn.NegOp: "Neg",
    nn.ReluOp: "Relu",
    nn.SigmoidOp: "Sigmoid",
    nn.TanhOp: "Tanh",
    nn.ExpOp: "Exp",
    nn.SqrtOp: "Sqrt",
    nn.MatmulOp: "MatMul",
    nn.GlobalAvgPoolOp: "GlobalAveragePool",
}


def one_to_one(op_type: str) -> Emitter:
    return lambda b, op, args: b.node(op_type, args)


EMITTERS.update({cls: one_to_one(op_type) for cls, op_type in ONE_TO_ONE.items()})


# --------------------------------------------------------------------------
# Ops with parameters
# --------------------------------------------------------------------------


@emits(nn.GeluOp)
def _gelu(b, op, args):
    if b.opset >= 20:
        return b.node("Gelu", args, approximate="tanh")
    # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    (x,) = args
    cube = b.node("Mul", [x, b.node("Mul", [x, x])])
    inner = b.node("Add", [x, b.node("Mul", [cube, scalar(b, op, 0.044715, "gelu_k")])])
    scaled = b.node("Mul", [inner, scalar(b, op, math.sqrt(2 / math.pi), "gelu_c")])
    one_plus = b.node("Add", [b.node("Tanh", [scaled]), scalar(b, op, 1.0, "one")])
    half_x = b.node("Mul", [x, scalar(b, op, 0.5, "half")])
    return b.node("Mul", [half_x, one_plus])


@emits(nn.TrilOp)
def _tril(b, op, args):
    # ONNX Trilu fills with zero only; a constant mask and Where allow any fill.
    p = op.params()
    rows, cols = op.results[0].type.get_shape()[-2:]
    keep = np.arange(cols)[None, :] - np.arange(rows)[:, None] <= p["k"]
    return b.node("Where", [b.constant(keep, "tril_mask"), args[0],
                            scalar(b, op, p["fill"], "tril_fill")])


@emits(nn.SoftmaxOp)
def _softmax(b, op, args):
    return b.node("Softmax", args, axis=op.params()["axis"])


@emits(nn.LayerNormOp)
def _layernorm(b, op, args):
    p = op.params()
    return b.node("LayerNormalization", args, axis=p["axis"], epsilon=p["eps"])


@emits(nn.BatchNormOp)
def _batchnorm(b, op, args):
    x, mean, var, gamma, beta = args
    return b.node("BatchNormalization", [x, gamma, beta, mean, var], epsilon=op.params()["eps"])


@emits(nn.Conv2dOp)
def _conv2d(b, op, args):
    p = op.params()
    return b.node("Conv", args, strides=p["stride"], pads=p["padding"] * 2,
                  dilations=p["dilation"], group=p["groups"])


def pool_attributes(op: nn.NNOperation) -> dict:
    p = op.params()
    return {"kernel_shape": p["kernel"], "strides": p["stride"], "pads": p["padding"] * 2}


@emits(nn.MaxPool2dOp)
def _maxpool2d(b, op, args):
    return b.node("MaxPool", args, **pool_attributes(op))


@emits(nn.AvgPool2dOp)
def _avgpool2d(b, op, args):
    return b.node("AveragePool", args, count_include_pad=1, **pool_attributes(op))


@emits(nn.ReshapeOp)
def _reshape(b, op, args):
    return b.node("Reshape", [args[0], int64s(b, op.params()["shape"], "shape")])


@emits(nn.TransposeOp)
def _transpose(b, op, args):
    return b.node("Transpose", args, perm=op.params()["perm"])


@emits(nn.ConcatOp)
def _concat(b, op, args):
    return b.node("Concat", args, axis=op.params()["axis"])


# The opset from which each reduction takes its axes as an input, not an attribute.
AXES_AS_INPUT_SINCE = {"ReduceSum": 13, "ReduceMean": 18, "ReduceMax": 18}


def reduction(op_type: str) -> Emitter:
    def emit(b, op, args):
        p = op.params()
        keepdims = int(p["keepdims"])
        if not p["axes"]:  # a rank-0 operand: nothing to reduce
            return b.node("Identity", args)
        if b.opset >= AXES_AS_INPUT_SINCE[op_type]:
            return b.node(op_type, [args[0], int64s(b, p["axes"], "axes")], keepdims=keepdims)
        return b.node(op_type, args, axes=p["axes"], keepdims=keepdims)

    return emit


EMITTERS[nn.ReduceSumOp] = reduction("ReduceSum")
EMITTERS[nn.ReduceMeanOp] = reduction("ReduceMean")
EMITTERS[nn.ReduceMaxOp] = reduction("ReduceMax")


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def element_type_of(value: SSAValue) -> int:
    t = value.type
    assert isinstance(t, TensorType)
    if t.element_type not in ONNX_ELEMENT_TYPES:
        raise UnsupportedError(f"dtype {nn.dtype_name(t.element_type)} has no ONNX mapping here")
    return ONNX_ELEMENT_TYPES[t.element_type]


def value_info(name: str, value: SSAValue) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, element_type_of(value), value.type.get_shape())


def to_onnx(module_or_func: ModuleOp | func.FuncOp, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The model (the only one of a module, or the given function) as a checked ONNX model."""
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"opset {opset} is outside {MIN_OPSET}..{onnx.defs.onnx_opset_version()}")
    f = module_or_func if isinstance(module_or_func, func.FuncOp) else find_model(module_or_func, None)
    signature = signature_of(f)
    input_names = [spec.name for spec in signature.inputs]
    output_names = [spec.name for spec in signature.outputs]
    b = GraphBuilder(opset, set(input_names) | set(output_names))
    names: dict[SSAValue, str] = dict(zip(f.body.block.args, input_names))

    returned: list[SSAValue] = []
    for op in f.body.block.ops:
        if isinstance(op, func.ReturnOp):
            returned = list(op.arguments)
            break
        element_type_of(op.results[0])  # rejects dtypes ONNX cannot hold before emitting
        if isinstance(op, nn.ConstantOp):
            names[op.result] = b.constant(op.array(), op.param_name or "const")
            continue
        emitter = EMITTERS.get(type(op))
        if emitter is None:
            raise UnsupportedError(f"'{op.name}' has no ONNX mapping")
        names[op.results[0]] = emitter(b, op, [names[v] for v in op.operands])

    for name, value in zip(output_names, returned):
        if names[value] != name:
            b.nodes.append(helper.make_node("Identity", [names[value]], [name]))

    graph = helper.make_graph(
        b.nodes,
        signature.name,
        [value_info(n, v) for n, v in zip(input_names, f.body.block.args)],
        [value_info(n, v) for n, v in zip(output_names, returned)],
        b.initializers,
    )
    opset_ids = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opset_ids,
                              ir_version=helper.find_min_ir_version_for(opset_ids),
                              producer_name="loom")
    onnx.checker.check_model(model, full_check=True)
    return model
