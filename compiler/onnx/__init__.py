"""The ONNX front door: an ONNX model becomes an nn module like the one the
.loom frontend builds, so every target, pass and the reference interpreter
take it as they take a .loom file.

    module = import_onnx("model.onnx", dims={"N": 1})
    compiler.compile(module, target="cpu")

The graph becomes one model function: graph inputs that are not
initializers are its inputs (static shapes; a named dynamic dim takes its
size from `dims`), initializers are named params, graph outputs its outputs,
all named by DSL identifiers made from the ONNX names. A model is checked
as a whole before any node is converted: every unsupported operator is
listed in one error.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from xdsl.dialects.builtin import ModuleOp
from xdsl.utils.exceptions import VerifyException

from compiler.context import make_context
from compiler.diagnostics import InternalError, LoomError
from compiler.files import write_atomic
from compiler.loom_writer import is_identifier, to_identifier, write_loom
from compiler.onnx import quant_ops  # noqa: F401  (registers the quantization converters)
from compiler.onnx.fold import foldable_nodes
from compiler.onnx.graph import GraphImporter
from compiler.onnx.model import (
    Source,
    check_supported,
    check_valid,
    default_opset,
    graph_inputs,
    inferred_shapes,
    load,
)
from compiler.onnx.ops import CONVERTERS, PLANNED
from dialects.quant import QuantOperation
from passes.fuse_qdq import FuseQdqPass

__all__ = ["import_onnx", "import_to_loom", "supported_operators"]


def supported_operators() -> list[str]:
    return sorted(CONVERTERS)


def import_onnx(
    source: Source, model_name: str | None = None, dims: Mapping[str, int] | None = None
) -> ModuleOp:
    """Convert an ONNX model (a path, serialized bytes or a ModelProto) to an nn module.

    `model_name` names the model function (default: the file's stem, else
    the graph's name); `dims` sizes named dynamic input dims, e.g. {"N": 1}.
    """
    model, stem = load(source)
    opset = default_opset(model)
    folded = foldable_nodes(model)
    check_supported(model, CONVERTERS, PLANNED, folded)
    check_valid(model)
    inputs = graph_inputs(model, dims)
    shapes = inferred_shapes(model, inputs)
    name = _model_name(model_name, stem or model.graph.name)
    function = GraphImporter(model, opset, inputs, shapes, name, CONVERTERS, folded).build()
    module = ModuleOp([function])
    FuseQdqPass().apply(make_context(), module)  # QDQ models compute on integers
    try:
        module.verify()
    except VerifyException as e:
        raise InternalError(f"the ONNX importer built invalid IR: {e}") from e
    return module


def _model_name(explicit: str | None, fallback: str) -> str:
    if explicit is None:
        return to_identifier(fallback or "model")
    if not is_identifier(explicit):
        raise LoomError(f"model name '{explicit}' is not a .loom identifier")
    return explicit


def import_to_loom(
    onnx_path: str | Path,
    loom_path: str | Path,
    weights_path: str | Path | None = None,
    *,
    model_name: str | None = None,
    dims: Mapping[str, int] | None = None,
) -> list[Path]:
    """`loom import`: write the model as .loom source and its params as an
    .npz file (default: beside the source, with the suffix .npz), or, for an
    output ending in .mlir, as nn-level IR with its params inline (quantized
    models can only be written so). Returns the files written."""
    module = import_onnx(onnx_path, model_name, dims)
    loom_path = Path(loom_path)
    if loom_path.suffix == ".mlir":
        write_atomic(loom_path, str(module) + "\n")
        return [loom_path]
    if any(isinstance(op, QuantOperation) for op in module.walk()):
        raise LoomError(
            "the model computes with quantized integers, which .loom source cannot express; "
            f"write its IR instead (-o {loom_path.with_suffix('.mlir')})"
        )
    weights = Path(weights_path) if weights_path is not None else loom_path.with_suffix(".npz")
    write_atomic(loom_path, write_loom(module, weights))
    return [loom_path, weights]
