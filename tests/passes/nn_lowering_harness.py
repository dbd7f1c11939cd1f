"""Build small nn model functions, lower them and run them.

Models are built from nn ops directly (`XOp.make`), so these tests depend on
neither the frontend nor a backend: lowered IR runs on xDSL's interpreter
(see xdsl_interpreter_shim) and is compared with numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from xdsl.dialects import func
from xdsl.dialects.builtin import ArrayAttr, MemRefType, ModuleOp, StringAttr, TensorType, UnitAttr
from xdsl.ir import Block, Operation, Region, SSAValue
from xdsl.parser import Parser

from compiler.context import make_context
from compiler.pass_manager import PassManager
from dialects import nn
from xdsl_interpreter_shim import call, from_shaped, to_shaped

TO_LINALG = "convert-nn-to-linalg"
TO_BUFFERS = "convert-nn-to-linalg,bufferize"
TO_LOOPS = "convert-nn-to-linalg,bufferize,convert-linalg-to-loops,lower-affine,canonicalize,cse"

Emit = Callable[[Operation], SSAValue]


def model(
    inputs: dict[str, tuple[Sequence[int], str]],
    build: Callable[..., Sequence[SSAValue]],
    outputs: Sequence[str] | None = None,
    name: str = "model",
) -> ModuleOp:
    """A module holding one model function.

    `inputs` maps names to (shape, dtype); `build(emit, *args)` creates nn ops
    through `emit(op) -> result` and returns the values to return.
    """
    types = [TensorType(nn.DTYPES[dtype], list(shape)) for shape, dtype in inputs.values()]
    block = Block(arg_types=types)
    for arg, arg_name in zip(block.args, inputs):
        arg.name_hint = arg_name

    def emit(op: Operation) -> SSAValue:
        block.add_op(op)
        return op.results[0]

    results = list(build(emit, *block.args))
    block.add_op(func.ReturnOp(*results))
    function = func.FuncOp(name, (types, [r.type for r in results]), Region(block))
    output_names = list(outputs) if outputs is not None else [f"out{i}" for i in range(len(results))]
    function.attributes[nn.MODEL_ATTR] = UnitAttr()
    function.attributes[nn.INPUTS_ATTR] = ArrayAttr([StringAttr(n) for n in inputs])
    function.attributes[nn.OUTPUTS_ATTR] = ArrayAttr([StringAttr(n) for n in output_names])
    module = ModuleOp([function])
    module.verify()
    return module


def lower(module: ModuleOp, pipeline: str) -> ModuleOp:
    """Run `pipeline` (verifying after each pass) and check the printed IR
    parses back in Loom's context."""
    ctx = make_context()
    PassManager.from_pipeline(ctx, pipeline).run(module)
    text = str(module)
    reparsed = Parser(ctx, text).parse_module()
    reparsed.verify()
    return module


def ops_named(module: ModuleOp, name: str) -> list[Operation]:
    return [op for op in module.walk() if op.name == name]


def dialects_used(module: ModuleOp) -> set[str]:
    return {op.name for op in module.walk()}


def run(module: ModuleOp, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run the bufferized model function of `module` on `inputs`."""
    function = next(op for op in module.ops if isinstance(op, func.FuncOp))
    types = [arg.type for arg in function.body.block.args]
    assert all(isinstance(t, MemRefType) for t in types)
    arguments = [to_shaped(a, t.element_type) for a, t in zip(inputs, types)]
    outputs = [to_shaped(np.zeros(t.get_shape(), nn.numpy_dtype(t.element_type)), t.element_type) for t in types[len(inputs) :]]
    call(module, function.sym_name.data, arguments + outputs)
    return [from_shaped(o, nn.numpy_dtype(t.element_type)) for o, t in zip(outputs, types[len(inputs) :])]


# --------------------------------------------------------------------------
# numpy side
# --------------------------------------------------------------------------


def rounded(array: np.ndarray, dtype: str) -> np.ndarray:
    """`array` as values of `dtype` (bf16 held in float32)."""
    if dtype == "bf16":
        return nn.round_to_bf16(np.asarray(array, dtype=np.float32))
    if dtype in ("i8", "i32"):
        info = np.iinfo(nn.numpy_dtype(nn.DTYPES[dtype]))
        wrapped = (np.asarray(array).astype(np.int64) - info.min) % (1 << info.bits) + info.min
        return wrapped.astype(nn.numpy_dtype(nn.DTYPES[dtype]))
    return np.asarray(array).astype(nn.numpy_dtype(nn.DTYPES[dtype]))


def random_input(rng: np.random.Generator, shape: Sequence[int], dtype: str, low: float = -2, high: float = 2) -> np.ndarray:
    if dtype in ("i8", "i32"):
        return rng.integers(int(low), int(high) + 1, size=tuple(shape)).astype(nn.numpy_dtype(nn.DTYPES[dtype]))
    return rounded(rng.uniform(low, high, size=tuple(shape)), dtype)


TOLERANCE = {"f32": (1e-5, 1e-5), "f16": (2e-3, 2e-3), "bf16": (1.6e-2, 1.6e-2)}


def assert_matches(actual: np.ndarray, expected: np.ndarray, dtype: str) -> None:
    """Integers exactly; floats within one or two units in the last place."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if dtype in ("i8", "i32"):
        np.testing.assert_array_equal(actual, expected)
    else:
        rtol, atol = TOLERANCE[dtype]
        np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64), rtol=rtol, atol=atol)
