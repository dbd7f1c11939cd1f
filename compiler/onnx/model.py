"""Reading an ONNX model and checking it before any conversion.

Everything that can be known about a model without converting a node is
checked here, so a user learns at once about every operator Loom lacks and
every input dimension it needs a size for.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import ModelProto, TensorProto

from compiler.diagnostics import LoomError
from dialects import nn

# The ONNX element types that have an nn dtype.
ELEMENT_TYPES = {
    TensorProto.FLOAT: nn.DTYPES["f32"],
    TensorProto.FLOAT16: nn.DTYPES["f16"],
    TensorProto.BFLOAT16: nn.DTYPES["bf16"],
    TensorProto.INT8: nn.DTYPES["i8"],
    TensorProto.INT32: nn.DTYPES["i32"],
}

# Multidirectional broadcasting, which the nn ops implement, arrived in opset 7.
MIN_OPSET = 7

_DEFAULT_DOMAINS = ("", "ai.onnx")

Source = str | Path | bytes | ModelProto


def type_name(elem_type: int) -> str:
    """`FLOAT`, `INT64`, ... as ONNX spells element types."""
    return TensorProto.DataType.Name(elem_type)


def load(source: Source) -> tuple[ModelProto, str | None]:
    """The model and, when read from a file, the file's stem."""
    if isinstance(source, ModelProto):
        return source, None
    if isinstance(source, bytes):
        try:
            return onnx.load_model_from_string(source), None
        except DecodeError as e:
            raise LoomError(f"cannot read the ONNX model: {e}") from None
    path = Path(source)
    if not path.is_file():
        raise LoomError(f"no such file: '{path}'")
    try:
        return onnx.load(str(path)), path.stem
    except (DecodeError, OSError, ValueError) as e:
        raise LoomError(f"cannot read '{path}' as an ONNX model: {e}") from None


def default_opset(model: ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in _DEFAULT_DOMAINS:
            if entry.version < MIN_OPSET:
                raise LoomError(
                    f"the model uses ONNX opset {entry.version}; Loom imports opset {MIN_OPSET} and newer"
                )
            return entry.version
    raise LoomError("the model imports no version of the default ONNX operator set")


def node_label(node: onnx.NodeProto) -> str:
    """How a node is named in messages: by its name, else by its first output."""
    if node.name:
        return f"node '{node.name}'"
    outputs = [o for o in node.output if o]
    return f"node with output '{outputs[0]}'" if outputs else "unnamed node"


def check_supported(
    model: ModelProto, supported: Mapping[str, object], reasons: Mapping[str, str], folded: Set[int] = frozenset()
) -> None:
    """Raise one LoomError listing every node whose operator has no converter
    (with the reason, for operators in `reasons`); the `folded` nodes are
    evaluated at import time and need none."""
    missing = []
    for index, node in enumerate(model.graph.node):
        if index in folded:
            continue
        if node.domain not in _DEFAULT_DOMAINS:
            missing.append(f"{node.domain}.{node.op_type} ({node_label(node)})")
        elif node.op_type not in supported:
            reason = f"; {reasons[node.op_type]}" if node.op_type in reasons else ""
            missing.append(f"{node.op_type} ({node_label(node)}{reason})")
    if missing:
        raise LoomError(f"unsupported ONNX operators: {', '.join(missing)}")
    if model.graph.sparse_initializer:
        names = ", ".join(f"'{t.values.name}'" for t in model.graph.sparse_initializer)
        raise LoomError(f"sparse initializers are not supported: {names}")


def check_valid(model: ModelProto) -> None:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise LoomError(f"invalid ONNX model: {str(e).strip()}") from None


@dataclass(frozen=True)
class GraphInput:
    """A graph input that is not an initializer, with every dim known."""

    name: str
    elem_type: int
    shape: tuple[int, ...]


def graph_inputs(model: ModelProto, dims: Mapping[str, int] | None) -> list[GraphInput]:
    """The model's runtime inputs with static shapes; named dynamic dims take
    their size from `dims` ({"N": 1})."""
    dims = dict(dims or {})
    for key, size in dims.items():
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise LoomError(f"dims['{key}'] must be a positive integer, got {size!r}")
    initializers = {t.name for t in model.graph.initializer}
    used_dims: set[str] = set()
    dynamic: list[tuple[str, int, str]] = []  # (dim name, index, input)
    inputs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        if not value.type.HasField("tensor_type"):
            raise LoomError(f"input '{value.name}' is not a tensor")
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type not in ELEMENT_TYPES:
            raise LoomError(
                f"input '{value.name}' has element type {type_name(tensor_type.elem_type)}; "
                f"Loom supports {', '.join(type_name(t) for t in ELEMENT_TYPES)}"
            )
        if not tensor_type.HasField("shape"):
            raise LoomError(f"input '{value.name}' has no shape; Loom needs static shapes")
        shape = []
        for index, dim in enumerate(tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(dim.dim_value)
            elif dim.dim_param and dim.dim_param in dims:
                used_dims.add(dim.dim_param)
                shape.append(dims[dim.dim_param])
            elif dim.dim_param:
                dynamic.append((dim.dim_param, index, value.name))
            else:
                raise LoomError(
                    f"input '{value.name}' has a dimension of unknown size (dim {index}); "
                    "Loom needs static shapes"
                )
        inputs.append(GraphInput(value.name, tensor_type.elem_type, tuple(shape)))
    if dynamic:
        listed = ", ".join(f"'{name}' (dim {index} of input '{input_name}')" for name, index, input_name in dynamic)
        raise LoomError(
            f"dynamic input dimensions {listed}; Loom needs static shapes: give each a size "
            f"(dims={{'{dynamic[0][0]}': 1}} in the API, --dim {dynamic[0][0]}=1 on the command line)"
        )
    unknown = sorted(set(dims) - used_dims)
    if unknown:
        raise LoomError(f"dims names {', '.join(repr(d) for d in unknown)}, which no input has")
    return inputs


def inferred_shapes(model: ModelProto, inputs: list[GraphInput]) -> dict[str, tuple[int, ...]]:
    """The static shape ONNX shape inference gives each tensor, with the
    inputs fixed to `inputs`. The importer checks its own shapes against these."""
    fixed = ModelProto()
    fixed.CopyFrom(model)
    by_name = {i.name: i for i in inputs}
    for value in fixed.graph.input:
        if value.name in by_name:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, by_name[value.name].shape):
                dim.Clear()
                dim.dim_value = size
    try:
        fixed = onnx.shape_inference.infer_shapes(fixed, strict_mode=True)
    except onnx.shape_inference.InferenceError as e:
        raise LoomError(f"ONNX shape inference rejects the model: {str(e).strip()}") from None
    shapes = {}
    for value in [*fixed.graph.value_info, *fixed.graph.output]:
        t = value.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[value.name] = tuple(d.dim_value for d in t.shape.dim)
    return shapes
