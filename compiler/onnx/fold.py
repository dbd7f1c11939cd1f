"""Import-time evaluation of the nodes whose inputs are all known.

Exporters compute shapes and slice bounds inside the graph (Shape → Gather
→ Add → Div → Slice is how PyTorch spells `chunk`). With every input shape
static these sub-graphs are constants, so the importer evaluates them with
ONNX's own reference implementation instead of converting them: any
standard operator folds, with ONNX's exact semantics, and the nn module
never sees shape arithmetic.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import ModelProto, helper
from onnx.reference import ReferenceEvaluator

from compiler.diagnostics import LoomError
from compiler.onnx.model import node_label

# Operators whose result depends only on static input shapes.
SHAPE_OPERATORS = {"Shape", "Size"}
# Never folded: dequantized weights stay integers, which the fuse-qdq pass
# turns into integer matmuls and convolutions.
KEPT_OPERATORS = {"DequantizeLinear"}


def foldable_nodes(model: ModelProto) -> set[int]:
    """Indices of the nodes in `model.graph` computable at import time: every
    input is an initializer or the result of such a node, or the node only
    reads shapes. Nodes without inputs (Constant aside) are never folded, so
    that random generators stay random."""
    known = {t.name for t in model.graph.initializer}
    folded = set()
    for index, node in enumerate(model.graph.node):
        inputs = [name for name in node.input if name]
        if node.op_type == "Constant":
            known.update(node.output)
        elif (
            inputs
            and node.domain in ("", "ai.onnx")
            and node.op_type not in KEPT_OPERATORS
            and (node.op_type in SHAPE_OPERATORS or all(name in known for name in inputs))
            and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        ):
            known.update(node.output)
            folded.add(index)
    return folded


def evaluate_node(node: onnx.NodeProto, inputs: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    """Run one node on known inputs (None for an omitted optional input)."""
    names = [name if value is not None else "" for name, value in zip(node.input, inputs)]
    graph = helper.make_graph(
        [helper.make_node(node.op_type, names, list(node.output), domain=node.domain, **_attributes(node))],
        "fold",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for n, v in zip(node.input, inputs) if v is not None],
        [helper.make_empty_tensor_value_info(n) for n in node.output if n],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    feeds = {n: v for n, v in zip(node.input, inputs) if v is not None}
    try:
        return [np.asarray(r) for r in ReferenceEvaluator(model).run(None, feeds)]
    except Exception as e:  # the reference implementation raises anything
        raise LoomError(f"{node.op_type} ({node_label(node)}) could not be evaluated at import time: {e}") from None


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}
