"""Compile hand-written loop-level modules with the CPU backend.

The modules are in the form the CPU pipeline hands to `CpuBackend.build`:
`memref.global` constants plus one destination-passing model function whose
arguments are the inputs then the outputs.
"""

from __future__ import annotations

import numpy as np
from xdsl.dialects.builtin import MemRefType, ModuleOp
from xdsl.parser import Parser

from backends.cpu import CpuArtifact, CpuBackend
from compiler import CompileOptions, ModelSignature, TensorSpec
from compiler.context import make_context
from compiler.model import find_model
from dialects.nn import INPUTS_ATTR, OUTPUTS_ATTR, dtype_name


def loop_signature(module: ModuleOp) -> ModelSignature:
    """The signature of a destination-passing model: inputs first, then outputs."""
    model = find_model(module, None)
    inputs = [s.data for s in model.attributes[INPUTS_ATTR].data]
    outputs = [s.data for s in model.attributes[OUTPUTS_ATTR].data]
    specs = []
    for name, t in zip(inputs + outputs, model.function_type.inputs.data):
        assert isinstance(t, MemRefType)
        specs.append(TensorSpec(name, tuple(t.get_shape()), dtype_name(t.element_type)))
    return ModelSignature(model.sym_name.data, tuple(specs[:len(inputs)]), tuple(specs[len(inputs):]))


def parse_loops(text: str) -> ModuleOp:
    module = Parser(make_context(), text).parse_module()
    module.verify()
    return module


def compile_loops(text: str, opt_level: int = 3, threads: int | None = None) -> CpuArtifact:
    module = parse_loops(text)
    options = CompileOptions(opt_level=opt_level, threads=threads)
    return CpuBackend().build(module, loop_signature(module), options)


def dense_hex(array: np.ndarray) -> str:
    """A `dense<"0x...">` literal holding `array`'s bytes, as MLIR prints large constants."""
    return f'dense<"0x{np.ascontiguousarray(array).tobytes().hex().upper()}">'

