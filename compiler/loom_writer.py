"""nn-level modules back to .loom source text.

The text parses back (with the weights the writer returns) to a module that
computes exactly what the original does, op for op: every nn op is printed as
the DSL operator or builtin that builds it, with all of its parameters
spelled out. Params are declared without an initializer, so their values
travel in an .npz weights file keyed by param name, which `loom run
model.loom --weights model.npz` reads.

Rank-0 constants that only meet a tensor in `+ - * /` are written inline as
literals (the frontend gives a literal the dtype of the tensor it meets, as
the constant had); every other constant becomes a param. Infinities are
written `1e999`, which a float literal rounds to; a NaN can only be a param.

The writer also owns the rules for DSL identifiers (`to_identifier`,
`Namer`), which any producer of .loom names, such as the ONNX importer, uses.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, TensorType
from xdsl.ir import BlockArgument, Operation, SSAValue

from compiler.diagnostics import LoomError
from compiler.files import write_atomic
from compiler.frontend.builtins import BINARY_OPS, BUILTINS, Builtin
from compiler.frontend.signatures import TENSOR
from compiler.model import models
from dialects import nn
from dialects.nn import INPUTS_ATTR, OUTPUTS_ATTR, format_type, is_float

# ---- identifiers ---------------------------------------------------------------------

# Words the grammar claims for itself; they cannot name a value.
KEYWORDS = frozenset({"model", "def", "return", "input", "param", "output", "true", "false"})

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_identifier(name: str) -> bool:
    """Whether `name` can name a value, a param or a model in .loom source."""
    return _IDENTIFIER.fullmatch(name) is not None and name not in KEYWORDS


def to_identifier(name: str) -> str:
    """A readable identifier made from an arbitrary name: `fc.weight` → `fc_weight`,
    `/layer1/Conv_output_0` → `layer1_Conv_output_0`, `12` → `v12`. Builtin
    function names are avoided too, so `relu = relu(x)` never appears."""
    text = re.sub(r"[^A-Za-z0-9_]+", "_", name)
    text = re.sub(r"__+", "_", text).strip("_")
    if not text:
        return "v"
    if text[0].isdigit():
        text = "v" + text
    if text in KEYWORDS or text in BUILTINS:
        text += "_"
    return text


class Namer:
    """Hands out identifiers that are unique within one scope."""

    def __init__(self, taken: Iterable[str] = ()):
        self._taken = set(taken)

    def reserve(self, name: str) -> None:
        self._taken.add(name)

    def fresh(self, hint: str) -> str:
        """`to_identifier(hint)`, suffixed `_2`, `_3`, ... when already taken."""
        base = to_identifier(hint)
        candidate, n = base, 2
        while candidate in self._taken:
            candidate, n = f"{base}_{n}", n + 1
        self._taken.add(candidate)
        return candidate


# ---- how each op is spelled ----------------------------------------------------------

_OPERATORS: dict[type[nn.NNOperation], str] = {cls: symbol for symbol, cls in BINARY_OPS.items()}

# Each remaining op is built by exactly one builtin that maps its arguments
# straight to the op (`flatten` derives its shape, so `reshape` stands for it).
_BUILTIN_OF: dict[type[nn.NNOperation], Builtin] = {}
for _builtin in BUILTINS.values():
    if _builtin.derived is None and _builtin.op not in _OPERATORS:
        _BUILTIN_OF.setdefault(_builtin.op, _builtin)

# Ops that may take a literal operand: the frontend builds them from `a OP b`.
_ELEMENTWISE = (nn.AddOp, nn.SubOp, nn.MulOp, nn.DivOp)


def _number_text(value: float | int, integer: bool) -> str:
    """A literal the frontend reads back as exactly `value`."""
    if integer:
        return str(int(value))
    value = float(value)
    if math.isinf(value):
        return "1e999" if value > 0 else "-1e999"
    return repr(value)


def _param_text(value: Any, what: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            raise LoomError(f"{what} is NaN, which .loom source cannot express")
        return _number_text(value, integer=False)
    if isinstance(value, list):
        return "[" + ", ".join(_param_text(v, what) for v in value) + "]"
    raise AssertionError(value)


def _literal(constant: nn.ConstantOp) -> str | None:
    """The inline literal for a rank-0 unnamed constant, or None if it needs a param."""
    t = constant.result.type
    assert isinstance(t, TensorType)
    if constant.param_name is not None or t.get_shape():
        return None
    value = constant.array().item()
    if is_float(t) and math.isnan(value):
        return None
    text = _number_text(value, integer=not is_float(t))
    negative = math.copysign(1.0, value) < 0
    return f"({text})" if negative else text


# ---- writing ---------------------------------------------------------------------------


class _Writer:
    """Writes the models of one module; params share one namespace (the weights file)."""

    def __init__(self, module: ModuleOp):
        self.functions = models(module)
        if not self.functions:
            raise LoomError("the module defines no model to write")
        self.namer = Namer()
        for f in self.functions:
            for name in (*_names(f, INPUTS_ATTR), *_names(f, OUTPUTS_ATTR)):
                self.namer.reserve(name)
        self.weights: dict[str, np.ndarray] = {}

    def write(self, header: str) -> str:
        blocks = [self._model(f) for f in self.functions]
        return header + "\n\n".join(blocks) + "\n"

    def _model(self, f: func.FuncOp) -> str:
        model_name = f.sym_name.data
        inputs, outputs = _names(f, INPUTS_ATTR), _names(f, OUTPUTS_ATTR)
        for what, names in (("input", inputs), ("output", outputs)):
            for name in names:
                if not is_identifier(name):
                    raise LoomError(
                        f"model '{model_name}': {what} name '{name}' is not a .loom identifier"
                    )
        if not is_identifier(model_name):
            raise LoomError(f"model name '{model_name}' is not a .loom identifier")
        if len(set(outputs)) != len(outputs):
            raise LoomError(f"model '{model_name}' lists an output name twice")

        block = f.body.block
        ret = block.last_op
        assert isinstance(ret, func.ReturnOp)
        names: dict[SSAValue, str] = dict(zip(block.args, inputs))
        literals = _inline_literals(block.ops)
        returned_params = self._bind_outputs(model_name, names, inputs, outputs, ret.arguments)
        declared: set[str] = set()

        lines = [f"model {model_name} {{"]
        lines += [f"  input {name}: {format_type(arg.type)}" for name, arg in zip(inputs, block.args)]
        params: list[str] = []
        body: list[str] = []
        for op in block.ops:
            if op is ret:
                continue
            if isinstance(op, nn.ConstantOp):
                if op not in literals:
                    name = self._param_name(op, returned_params.get(op.result), declared)
                    names[op.result] = name
                    declared.add(name)
                    self.weights[name] = op.array()
                    params.append(f"  param {name}: {format_type(op.result.type)}")
                continue
            if not isinstance(op, nn.NNOperation):
                raise LoomError(
                    f"model '{model_name}': '{op.name}' is not an nn op; only nn-level modules "
                    "can be written as .loom"
                )
            operands = [literals.get(_defining_constant(v)) or names[v] for v in op.operands]
            result = op.results[0]
            if result not in names:
                names[result] = self.namer.fresh(result.name_hint or "t")
            body.append(f"  {names[result]} = {_expression(op, operands)}")
        for name, value in zip(outputs, ret.arguments):
            if names[value] != name:
                body.append(f"  {name} = {names[value]}")
        lines += params + body + [f"  output {', '.join(outputs)}", "}"]
        return "\n".join(lines)

    def _bind_outputs(
        self,
        model_name: str,
        names: dict[SSAValue, str],
        inputs: Sequence[str],
        outputs: Sequence[str],
        values: Sequence[SSAValue],
    ) -> dict[SSAValue, str]:
        """Name each returned op result after its (first) output, so that no
        alias is needed; an output that is an input keeps the input's name.
        Returns the output name each returned param would rather have."""
        returned_params: dict[SSAValue, str] = {}
        for name, value in zip(outputs, values):
            if name in inputs and names.get(value) != name:
                raise LoomError(
                    f"model '{model_name}': output '{name}' has the name of an input but another value"
                )
            if _defining_constant(value):
                returned_params.setdefault(value, name)
            elif value not in names and not isinstance(value, BlockArgument):
                names[value] = name
        return returned_params

    def _param_name(self, constant: nn.ConstantOp, output_name: str | None, declared: set[str]) -> str:
        """A returned param takes its output's name; a param whose name another
        model's param already holds with the same value shares that entry of
        the weights file; any other param gets a name of its own."""
        array = constant.array()

        def free_or_same(name: str) -> bool:
            existing = self.weights.get(name)
            return existing is None or (existing.dtype == array.dtype and np.array_equal(existing, array))

        if output_name is not None and output_name not in declared and free_or_same(output_name):
            return output_name
        own = to_identifier(constant.param_name) if constant.param_name else None
        if own is not None and own in self.weights and own not in declared and free_or_same(own):
            return own
        return self.namer.fresh(constant.param_name or "const")


def _names(f: func.FuncOp, attr: str) -> list[str]:
    return [s.data for s in f.attributes[attr].data]  # type: ignore[attr-defined]


def _defining_constant(value: SSAValue) -> nn.ConstantOp | None:
    owner = value.owner
    return owner if isinstance(owner, nn.ConstantOp) else None


def _inline_literals(ops: Iterable[Operation]) -> dict[nn.ConstantOp, str]:
    """The constants written inline, with their text: rank-0 unnamed ones whose
    every use is one side of `+ - * /` with a non-literal on the other side."""
    candidates: dict[nn.ConstantOp, str] = {}
    for op in ops:
        if isinstance(op, nn.ConstantOp):
            text = _literal(op)
            if text is not None and all(isinstance(use.operation, _ELEMENTWISE) for use in op.result.uses):
                candidates[op] = text
    for constant in list(candidates):
        for use in constant.result.uses:
            if all(_defining_constant(v) in candidates for v in use.operation.operands):
                for v in use.operation.operands:
                    candidates.pop(_defining_constant(v), None)  # type: ignore[arg-type]
    return candidates


def _expression(op: nn.NNOperation, operands: list[str]) -> str:
    if type(op) in _OPERATORS:
        left, right = operands
        return f"{left} {_OPERATORS[type(op)]} {right}"
    if isinstance(op, nn.NegOp):
        return f"-{operands[0]}"
    builtin = _BUILTIN_OF.get(type(op))
    if builtin is None:
        raise LoomError(f"'{op.name}' has no .loom spelling")
    signature = builtin.signature
    pending = list(operands)
    args: list[str] = []
    if signature.variadic is not None:
        args, pending = pending, []
    params = op.params()
    for arg in signature.args:
        if arg.kind == TENSOR:
            if pending:
                args.append(pending.pop(0))
            continue
        value = params[builtin.renamed.get(arg.name, arg.name)]
        if value is not None:
            args.append(f"{arg.name}={_param_text(value, f'{op.name} parameter {arg.name}')}")
    return f"{builtin.name}({', '.join(args)})"


def render_loom(module: ModuleOp, weights_name: str | None = None) -> tuple[str, dict[str, np.ndarray]]:
    """The .loom text of every model in `module` and the param values it needs."""
    writer = _Writer(module)
    source = f"from {weights_name} " if weights_name else "from a weights file "
    header = f"# Params have no initializer: their values come {source}(--weights).\n"
    text = writer.write(header)
    return text, writer.weights


def write_loom(module: ModuleOp, weights_path: str | Path | None = None) -> str:
    """The .loom text of `module`; with `weights_path`, also write its params
    there as an .npz file (the file is written even when there are none, so
    `--weights` can always be given)."""
    weights_name = Path(weights_path).name if weights_path is not None else None
    text, weights = render_loom(module, weights_name)
    if weights_path is not None:
        buffer = io.BytesIO()
        np.savez(buffer, **weights)
        write_atomic(weights_path, buffer.getvalue())
    return text
