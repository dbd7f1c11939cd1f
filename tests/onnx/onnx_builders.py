"""Building small ONNX models in tests and running them in onnxruntime."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime
from onnx import ModelProto, TensorProto, helper, numpy_helper
from xdsl.ir import BlockArgument, SSAValue

from compiler.model import models

IR_VERSION = 9  # understood by the installed onnxruntime

# The ONNX element type of each numpy dtype the tests feed.
ELEMENT_TYPES = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.int32): TensorProto.INT32,
}


def make_model(
    nodes: Sequence,
    inputs: Mapping[str, tuple[Sequence[int | str], int]] | Mapping[str, Sequence[int | str]],
    outputs: Sequence[str],
    initializers: Mapping[str, np.ndarray | TensorProto] | None = None,
    opset: int = 17,
    output_type: int = TensorProto.FLOAT,
    name: str = "test_graph",
) -> ModelProto:
    """A model over `nodes`; an input is given by its shape (f32) or (shape, type)."""
    graph_inputs = []
    for input_name, spec in inputs.items():
        shape, elem_type = spec if isinstance(spec, tuple) else (spec, TensorProto.FLOAT)
        graph_inputs.append(helper.make_tensor_value_info(input_name, elem_type, list(shape)))
    graph = helper.make_graph(
        list(nodes),
        name,
        graph_inputs,
        [helper.make_tensor_value_info(o, output_type, None) for o in outputs],
        [_initializer(n, a) for n, a in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)
    # Output shapes are left to ONNX's inference, as an exporter would record them.
    return onnx.shape_inference.infer_shapes(model)


def _initializer(name: str, value: np.ndarray | TensorProto) -> TensorProto:
    if isinstance(value, TensorProto):
        return value
    return numpy_helper.from_array(np.asarray(value), name)


def tensor(array: np.ndarray, name: str = "value") -> TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def run_onnxruntime(model: ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, dict(feeds))))


def max_abs_error(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> float:
    """Largest difference over all outputs; shapes and names must agree."""
    assert sorted(got) == sorted(want)
    error = 0.0
    for name, expected in want.items():
        assert got[name].shape == expected.shape, name
        diff = np.abs(got[name].astype(np.float64) - expected.astype(np.float64))
        error = max(error, float(diff.max()) if diff.size else 0.0)
    return error


def dataflow(module) -> list[str]:
    """Each model as a canonical listing of the ops its outputs depend on:
    ops numbered depth-first from the outputs, with properties (constant
    values included) and operands by number. Value names and the order of
    independent ops do not show, so two modules computing the same thing the
    same way give the same listing."""
    listing = []
    for f in models(module):
        numbers: dict[SSAValue, str] = {}
        lines = [f"model {f.sym_name.data}"]

        def visit(value: SSAValue) -> str:
            if value not in numbers:
                if isinstance(value, BlockArgument):
                    numbers[value] = f"arg{value.index}"
                else:
                    op = value.owner
                    operands = [visit(v) for v in op.operands]
                    props = {k: str(v) for k, v in sorted(op.properties.items())}
                    numbers[value] = f"%{len(lines)}"
                    lines.append(f"{numbers[value]} = {op.name} {props} ({', '.join(operands)})")
            return numbers[value]

        ret = f.body.block.last_op
        lines.append("return " + ", ".join(visit(v) for v in ret.operands))
        listing += lines
    return listing


def loom_feeds(module, model: ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`feeds`, keyed by ONNX input name, keyed by the module's input names
    (which are the ONNX names made into identifiers)."""
    (f,) = models(module)
    initializers = {t.name for t in model.graph.initializer}
    onnx_names = [i.name for i in model.graph.input if i.name not in initializers]
    loom_names = [s.data for s in f.attributes["loom.inputs"].data]
    return {loom: feeds[name] for loom, name in zip(loom_names, onnx_names)}
