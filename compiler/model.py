"""Models inside a module: finding them and reading their signatures.

A model is a `func.func` tagged with the `loom.model` unit attribute; its
`loom.inputs` / `loom.outputs` string arrays name the arguments and results
in declaration order.
"""

from __future__ import annotations

from xdsl.dialects import func
from xdsl.dialects.builtin import ArrayAttr, MemRefType, ModuleOp, StringAttr, TensorType

from compiler.artifact import ModelSignature, TensorSpec
from compiler.diagnostics import LoomError
from dialects.nn import INPUTS_ATTR, MODEL_ATTR, OUTPUTS_ATTR, dtype_name


def models(module: ModuleOp) -> list[func.FuncOp]:
    return [
        op for op in module.ops
        if isinstance(op, func.FuncOp) and MODEL_ATTR in op.attributes
    ]


def find_model(module: ModuleOp, name: str | None) -> func.FuncOp:
    """The model called `name`, or the only model when `name` is None."""
    found = models(module)
    if not found:
        raise LoomError("the input defines no model")
    if name is None:
        if len(found) > 1:
            names = ", ".join(f.sym_name.data for f in found)
            raise LoomError(f"the input defines several models ({names}); choose one with --model")
        return found[0]
    for f in found:
        if f.sym_name.data == name:
            return f
    names = ", ".join(f.sym_name.data for f in found)
    raise LoomError(f"no model named '{name}' (defined: {names})")


def _names(f: func.FuncOp, attr: str) -> list[str]:
    value = f.attributes[attr]
    assert isinstance(value, ArrayAttr)
    return [s.data for s in value.data if isinstance(s, StringAttr)]


def _spec(name: str, t) -> TensorSpec:
    assert isinstance(t, TensorType | MemRefType)
    return TensorSpec(name, tuple(t.get_shape()), dtype_name(t.element_type))


def signature_of(f: func.FuncOp) -> ModelSignature:
    """Read the signature of a tensor-level model function."""
    ft = f.function_type
    inputs = tuple(_spec(n, t) for n, t in zip(_names(f, INPUTS_ATTR), ft.inputs.data))
    outputs = tuple(_spec(n, t) for n, t in zip(_names(f, OUTPUTS_ATTR), ft.outputs.data))
    return ModelSignature(f.sym_name.data, inputs, outputs)
