"""One ONNX graph to one nn model function.

Values are either SSA values already in the function or `Constant`s, known
at import time (initializers, Constant nodes, casts of those). A constant
enters the IR only where an op uses it as data; where ONNX passes a shape or
a list of axes as a tensor, the converter reads the constant's value instead.

Each node is converted through a `NodeContext`, which records the attributes
and inputs the converter read: one it did not read is an ONNX feature the
converter does not implement, so the node is rejected rather than silently
computed without it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, numpy_helper
from xdsl.dialects import func
from xdsl.dialects.builtin import ArrayAttr, StringAttr, TensorType, UnitAttr
from xdsl.ir import Attribute, Block, Region, SSAValue

from compiler.diagnostics import InternalError, LoomError
from compiler.loom_writer import Namer, to_identifier
from compiler.onnx.fold import evaluate_node
from compiler.onnx.model import ELEMENT_TYPES, GraphInput, node_label, type_name
from dialects import nn


@dataclass(eq=False)
class Constant:
    """A tensor known at import time. `name` is the ONNX name its param takes
    when it enters the IR; rank-0 constants without one become literals."""

    array: np.ndarray
    elem_type: int
    name: str | None


Value = SSAValue | Constant


def storage_array(array: np.ndarray, elem_type: int) -> np.ndarray:
    """`array` in the numpy dtype nn uses for `elem_type` (bf16 as float32)."""
    element_type = ELEMENT_TYPES.get(elem_type)
    if element_type is None:
        return np.asarray(array, dtype=onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    values = np.asarray(array).astype(nn.numpy_dtype(element_type))
    return nn.round_to_bf16(values) if elem_type == TensorProto.BFLOAT16 else values


def constant_from_tensor(tensor: onnx.TensorProto, name: str | None) -> Constant:
    try:
        array = numpy_helper.to_array(tensor)
    except (ValueError, OSError) as e:
        raise LoomError(f"cannot read the value of tensor '{tensor.name}': {e}") from None
    return Constant(storage_array(array, tensor.data_type), tensor.data_type, name)


def node_constant(array: np.ndarray, elem_type: int, name: str) -> Constant:
    """A constant computed by a node: a param named after its output, or a
    literal when it is rank 0 (as `x / 8.0` would be in .loom)."""
    return Constant(array, elem_type, name if np.ndim(array) else None)


def shape_of(value: SSAValue) -> list[int]:
    t = value.type
    assert isinstance(t, TensorType)
    return list(t.get_shape())


def _attribute_value(attribute: onnx.AttributeProto) -> Any:
    value = onnx.helper.get_attribute_value(attribute)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


# A converter returns the value of the node's first output, or a tuple with
# one value per output for operators with several (Split).
Converter = Callable[["NodeContext"], Value | tuple[Value, ...]]


class NodeContext:
    """What a converter sees of one node, and the only way it builds IR."""

    def __init__(self, importer: GraphImporter, node: onnx.NodeProto):
        self.importer = importer
        self.node = node
        self.opset = importer.opset
        self._attributes = {a.name: a for a in node.attribute}
        self._read_attributes: set[str] = set()
        self._read_inputs: set[int] = set()

    @property
    def label(self) -> str:
        return f"{self.node.op_type} {node_label(self.node)}"

    def error(self, message: str) -> LoomError:
        return LoomError(f"{self.label}: {message}")

    # ---- attributes -------------------------------------------------------------

    def attr(self, name: str, default: Any = None) -> Any:
        self._read_attributes.add(name)
        attribute = self._attributes.get(name)
        return default if attribute is None else _attribute_value(attribute)

    def required_attr(self, name: str) -> Any:
        value = self.attr(name)
        if value is None:
            raise self.error(f"attribute '{name}' is required")
        return value

    # ---- inputs ---------------------------------------------------------------------

    @property
    def input_count(self) -> int:
        return len(self.node.input)

    def has_input(self, index: int) -> bool:
        return index < len(self.node.input) and self.node.input[index] != ""

    def value(self, index: int) -> Value:
        if not self.has_input(index):
            raise self.error(f"input {index} is required")
        self._read_inputs.add(index)
        return self.importer.values[self.node.input[index]]

    def tensor(self, index: int) -> SSAValue:
        """Input `index` as an SSA value of the function."""
        return self.importer.materialize(
            self.value(index), f"{self.label}: input '{self.node.input[index]}'"
        )

    def optional_tensor(self, index: int) -> SSAValue | None:
        return self.tensor(index) if self.has_input(index) else None

    def constant(self, index: int, what: str) -> np.ndarray:
        """The value of input `index`, which must be known at import time."""
        value = self.value(index)
        if not isinstance(value, Constant):
            raise self.error(
                f"the {what} (input '{self.node.input[index]}') must be a constant "
                "(an initializer or the output of a Constant node)"
            )
        return value.array

    def ints(self, index: int, what: str) -> list[int]:
        return [int(v) for v in np.asarray(self.constant(index, what)).reshape(-1)]

    # ---- building -------------------------------------------------------------------

    def emit(self, op_class: type[nn.NNOperation], operands: Sequence[SSAValue], **params: Any) -> SSAValue:
        try:
            op = op_class.make(operands, **params)
        except nn.ShapeError as e:
            raise self.error(str(e)) from None
        self.importer.block.add_op(op)
        return op.results[0]

    def scalar(self, value: float, like: SSAValue) -> SSAValue:
        """A rank-0 literal holding `value` in the dtype of `like`."""
        t = like.type
        assert isinstance(t, TensorType)
        if not nn.is_float(t) and value != int(value):
            raise self.error(f"{value} cannot be applied to integer tensors exactly")
        op = nn.ConstantOp(np.array(value, dtype=nn.numpy_dtype(t.element_type)), t.element_type)
        self.importer.block.add_op(op)
        return op.result

    def new_param(self, array: np.ndarray, like: SSAValue, role: str) -> SSAValue:
        """A param created by the importer (such as a missing bias), named after the node."""
        t = like.type
        assert isinstance(t, TensorType)
        owner = self.node.name or self.node.output[0]
        return self.importer.emit_param(array, t.element_type, f"{owner}_{role}")

    # ---- running the converter ------------------------------------------------------

    def convert(self, converter: Converter) -> None:
        result = converter(self)
        unread = sorted(set(self._attributes) - self._read_attributes)
        if unread:
            raise self.error(f"attribute {', '.join(repr(a) for a in unread)} is not supported")
        ignored = [
            self.node.input[i]
            for i in range(len(self.node.input))
            if self.has_input(i) and i not in self._read_inputs
        ]
        if ignored:
            raise self.error(f"input {', '.join(repr(n) for n in ignored)} is not supported")
        results = result if isinstance(result, tuple) else (result,)
        for name in self.node.output[len(results):]:
            if name and name in self.importer.consumed:
                raise self.error(
                    f"output '{name}' is used, but only the first output of {self.node.op_type} is supported"
                )
        for name, value in zip(self.node.output, results):
            self.importer.define(name, value, self)


class GraphImporter:
    """Builds the model function of one graph, node by node, in graph order."""

    def __init__(
        self,
        model: ModelProto,
        opset: int,
        inputs: Sequence[GraphInput],
        shapes: Mapping[str, tuple[int, ...]],
        model_name: str,
        converters: Mapping[str, Converter],
        folded: Set[int] = frozenset(),
    ):
        self.graph = model.graph
        self.opset = opset
        self.model_name = model_name
        self.converters = converters
        self.folded = folded
        self._inputs = inputs
        self._shapes = shapes
        self.namer = Namer()
        self.block = Block(arg_types=[self._input_type(i) for i in inputs])
        self.values: dict[str, Value] = {}
        self._emitted: dict[Constant, SSAValue] = {}
        self.consumed = {name for node in self.graph.node for name in node.input} | {
            o.name for o in self.graph.output
        }

    @staticmethod
    def _input_type(graph_input: GraphInput) -> TensorType:
        return TensorType(ELEMENT_TYPES[graph_input.elem_type], list(graph_input.shape))

    def build(self) -> func.FuncOp:
        input_names = []
        for graph_input, arg in zip(self._inputs, self.block.args):
            name = self.namer.fresh(graph_input.name)
            arg.name_hint = name
            input_names.append(name)
            self.values[graph_input.name] = arg
        # An output that is an input keeps the input's name; the others are
        # named before any param so that no param takes an output's name.
        by_onnx_name = {i.name: name for i, name in zip(self._inputs, input_names)}
        output_names = [by_onnx_name.get(o.name) or self.namer.fresh(o.name) for o in self.graph.output]
        for tensor in self.graph.initializer:
            self.values[tensor.name] = constant_from_tensor(tensor, tensor.name)
        for index, node in enumerate(self.graph.node):
            if index in self.folded and self._fold(node):
                continue
            NodeContext(self, node).convert(self.converters[node.op_type])
        results = []
        for output, name in zip(self.graph.output, output_names):
            result = self.materialize(self.values[output.name], f"output '{output.name}'")
            if isinstance(result.owner, nn.NNOperation):
                result.name_hint = name
            results.append(result)
        self.block.add_op(func.ReturnOp(*results))
        function = func.FuncOp(
            self.model_name,
            (list(self.block.arg_types), [r.type for r in results]),
            Region(self.block),
        )
        function.attributes[nn.MODEL_ATTR] = UnitAttr()
        function.attributes[nn.INPUTS_ATTR] = ArrayAttr([StringAttr(n) for n in input_names])
        function.attributes[nn.OUTPUTS_ATTR] = ArrayAttr([StringAttr(n) for n in output_names])
        return function

    def _fold(self, node: onnx.NodeProto) -> bool:
        """Evaluate a node whose inputs are known (see compiler.onnx.fold);
        False leaves it to its converter: bf16 constants are held in float32
        here, which the reference implementation would compute in."""
        inputs: list[np.ndarray | None] = []
        for name in node.input:
            value = self.values.get(name) if name else None
            if isinstance(value, Constant):
                if value.elem_type == TensorProto.BFLOAT16:
                    return False
                inputs.append(value.array)
            elif value is None:
                inputs.append(None)
            else:  # a shape operator's input: only its static shape matters
                inputs.append(np.zeros(shape_of(value), np.float32))
        for name, array in zip(node.output, evaluate_node(node, inputs, self.opset)):
            if name:
                constant = node_constant(array, onnx.helper.np_dtype_to_tensor_dtype(array.dtype), name)
                self.define(name, constant, NodeContext(self, node))
        return True

    def define(self, name: str, value: Value, node: NodeContext) -> None:
        """Bind a node's output, checked against ONNX's own shape inference."""
        if not name:
            return
        shape = tuple(value.array.shape) if isinstance(value, Constant) else tuple(shape_of(value))
        expected = self._shapes.get(name)
        if expected is not None and expected != shape:
            raise InternalError(
                f"the importer gives '{name}' (from {node.label}) the shape {list(shape)}, "
                f"ONNX infers {list(expected)}"
            )
        if isinstance(value, SSAValue) and value.name_hint is None:
            value.name_hint = to_identifier(name)
        self.values[name] = value

    def materialize(self, value: Value, what: str) -> SSAValue:
        """`value` as an SSA value: a constant enters the IR at its first use
        as a param, or at every use as a literal when it has no name."""
        if isinstance(value, SSAValue):
            return value
        element_type = self._element_type(value.elem_type, what)
        if value.name is None:
            op = nn.ConstantOp(value.array, element_type)
            self.block.add_op(op)
            return op.result
        if value not in self._emitted:
            self._emitted[value] = self.emit_param(value.array, element_type, value.name)
        return self._emitted[value]

    def emit_param(self, array: np.ndarray, element_type: Attribute, name: str) -> SSAValue:
        op = nn.ConstantOp(array, element_type, name=self.namer.fresh(name))
        op.result.name_hint = op.param_name
        self.block.add_op(op)
        return op.result

    @staticmethod
    def _element_type(elem_type: int, what: str) -> Attribute:
        element_type = ELEMENT_TYPES.get(elem_type)
        if element_type is None:
            raise LoomError(
                f"{what} is a constant of element type {type_name(elem_type)}, which Loom "
                f"cannot compute with (it supports {', '.join(type_name(t) for t in ELEMENT_TYPES)})"
            )
        return element_type
