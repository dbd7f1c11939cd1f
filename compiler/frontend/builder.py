"""Syntax tree to nn-dialect IR.

Each `model` becomes one `func.func`; `def`s are inlined at their call sites
and so are shape-checked there. Every op is built with `XOp.make`, whose
shape rules raise `nn.ShapeError`; the builder turns that into a LoomError
at the expression being built. Numeric literals stay Python numbers until
they meet a tensor, whose dtype they then take (weak typing), so `2 * 3`
folds and `x * 0.5` works for any float dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from xdsl.dialects import func
from xdsl.dialects.builtin import ArrayAttr, ModuleOp, StringAttr, TensorType, UnitAttr
from xdsl.ir import Block, Operation, Region, SSAValue
from xdsl.utils.exceptions import VerifyException

from compiler.diagnostics import InternalError, LoomError
from compiler.frontend import ast
from compiler.frontend.builtins import BINARY_OPS, BUILTINS
from compiler.frontend.inits import param_value
from compiler.frontend.signatures import TENSOR, Arg, Signature, describe, is_number, suggestion
from compiler.frontend.source import SourceFile
from dialects.nn import (
    DTYPES,
    INPUTS_ATTR,
    MODEL_ATTR,
    OUTPUTS_ATTR,
    ConstantOp,
    NegOp,
    ShapeError,
    dtype_name,
    format_type,
    is_float,
    numpy_dtype,
)


def build_module(
    program: ast.Program,
    source: SourceFile,
    weights: Mapping[str, np.ndarray] | None,
    base_dir: Path,
) -> ModuleOp:
    """One `func.func` per model of `program`, in source order."""
    functions = _check_functions(program.functions, source)
    _check_unique([m.name for m in program.models], "model", source)
    builder = _ModelBuilder(source, functions, weights, base_dir)
    module = ModuleOp([builder.build(model) for model in program.models])
    try:
        module.verify()
    except VerifyException as e:
        raise InternalError(f"the frontend built invalid IR: {e}") from e
    return module


# ---- checks on the whole file -------------------------------------------------------


def _check_unique(names: Sequence[ast.Name], what: str, source: SourceFile) -> None:
    first: dict[str, ast.Name] = {}
    for name in names:
        if name.id in first:
            raise source.error(
                f"{what} '{name.id}' is already defined at line {first[name.id].span.line}", name.span
            )
        first[name.id] = name


def _check_functions(functions: Sequence[ast.Function], source: SourceFile) -> dict[str, ast.Function]:
    _check_unique([f.name for f in functions], "def", source)
    for f in functions:
        if f.name.id in BUILTINS:
            raise source.error(f"'{f.name.id}' is a builtin function and cannot be redefined", f.name.span)
        _check_unique(list(f.params), "parameter", source)
    by_name = {f.name.id: f for f in functions}
    _check_recursion(by_name, source)
    return by_name


def _calls_in(function: ast.Function) -> list[ast.Call]:
    exprs = [*(a.value for a in function.body), function.result]
    return [e for expr in exprs for e in ast.subexpressions(expr) if isinstance(e, ast.Call)]


def _check_recursion(functions: dict[str, ast.Function], source: SourceFile) -> None:
    """Reject call cycles among defs: inlining them would never end."""
    finished: set[str] = set()

    def visit(path: list[str]) -> None:
        for call in _calls_in(functions[path[-1]]):
            callee = call.func.id
            if callee in path:
                cycle = " -> ".join([*path[path.index(callee) :], callee])
                raise source.error(
                    f"recursive call to '{callee}' ({cycle}); defs are inlined, so they cannot recurse",
                    call.func.span,
                )
            if callee in functions and callee not in finished:
                visit([*path, callee])
        finished.add(path[-1])

    for name in functions:
        if name not in finished:
            visit([name])


# ---- names -----------------------------------------------------------------------------


@dataclass
class _Param:
    """A declared param; its nn.constant is emitted at the first use."""

    name: str
    type: TensorType
    array: np.ndarray
    value: SSAValue | None = None


class _Scope:
    """The names of one model body, or of one def body being inlined by the
    call `call` (the def's name and the line of the call).

    `pending` holds the names assigned further down, so that using one too
    early is reported as such rather than as an unknown name.
    """

    def __init__(self, assignments: Sequence[ast.Assign], call: tuple[str, int] | None = None):
        self.call = call
        self.values: dict[str, Any] = {}
        self.defined: dict[str, ast.Span] = {}
        self.pending = {a.target.id: a.target.span for a in reversed(assignments)}

    def define(self, name: ast.Name, value: Any) -> None:
        self.values[name.id] = value
        self.defined[name.id] = name.span


# ---- models -----------------------------------------------------------------------------


class _ModelBuilder:
    """Builds the function of one model at a time into `_block`."""

    def __init__(
        self,
        source: SourceFile,
        functions: dict[str, ast.Function],
        weights: Mapping[str, np.ndarray] | None,
        base_dir: Path,
    ):
        self._source = source
        self._functions = functions
        self._weights = weights
        self._base_dir = base_dir
        self._block = Block()
        # the model's scope, then one per def being inlined
        self._scopes: list[_Scope] = []

    def build(self, model: ast.Model) -> func.FuncOp:
        body = model.body
        inputs = [s for s in body if isinstance(s, ast.Input)]
        input_types = [self._tensor_type(s.type) for s in inputs]
        self._block = Block(arg_types=input_types)
        self._scopes = [_Scope([s for s in body if isinstance(s, ast.Assign)])]
        for stmt, arg in zip(inputs, self._block.args):
            arg.name_hint = stmt.name.id
        args = iter(self._block.args)
        for stmt in body:
            match stmt:
                case ast.Input():
                    self._define(stmt.name, next(args))
                case ast.Param():
                    t = self._tensor_type(stmt.type)
                    array = param_value(stmt, t, self._weights, self._base_dir, self._fold, self._error)
                    self._define(stmt.name, _Param(stmt.name.id, t, array))
        for stmt in body:
            if isinstance(stmt, ast.Assign):
                self._assign(stmt)
        names, values = self._outputs(model)
        self._block.add_op(func.ReturnOp(*values))
        function = func.FuncOp(
            model.name.id, (input_types, [v.type for v in values]), Region(self._block)
        )
        function.attributes[MODEL_ATTR] = UnitAttr()
        function.attributes[INPUTS_ATTR] = ArrayAttr([StringAttr(s.name.id) for s in inputs])
        function.attributes[OUTPUTS_ATTR] = ArrayAttr([StringAttr(n) for n in names])
        return function

    def _outputs(self, model: ast.Model) -> tuple[list[str], list[SSAValue]]:
        declared: dict[str, ast.Name] = {}
        values = []
        for stmt in model.body:
            if not isinstance(stmt, ast.Output):
                continue
            for name in stmt.names:
                if name.id in declared:
                    raise self._error(
                        f"'{name.id}' is already an output (line {declared[name.id].span.line})", name.span
                    )
                value = self._lookup(name)
                if not isinstance(value, SSAValue):
                    raise self._error(
                        f"output '{name.id}' must be a tensor, got {describe(value)}", name.span
                    )
                declared[name.id] = name
                values.append(value)
        if not values:
            raise self._error(f"model '{model.name.id}' has no output; add 'output NAME'", model.name.span)
        return list(declared), values

    def _tensor_type(self, t: ast.TensorType) -> TensorType:
        dtype = t.dtype.id
        if dtype == "i4":
            raise self._error("i4 is not supported yet; use i8 or i32", t.dtype.span)
        if dtype not in DTYPES:
            raise self._error(
                f"unknown dtype '{dtype}'; expected one of {', '.join(DTYPES)}", t.dtype.span
            )
        for dim in t.dims:
            if not isinstance(dim.value, int) or dim.value < 1:
                raise self._error(f"a dimension must be a positive integer, got {dim.value}", dim.span)
        return TensorType(DTYPES[dtype], [d.value for d in t.dims])

    @property
    def _scope(self) -> _Scope:
        return self._scopes[-1]

    # ---- diagnostics ---------------------------------------------------------------

    def _error(self, message: str, span: ast.Span) -> LoomError:
        """A LoomError at `span`, saying which def calls led there."""
        calls = [scope.call for scope in reversed(self._scopes) if scope.call is not None]
        if calls:
            (name, line), *callers = calls
            context = f"in call to '{name}' at line {line}"
            context += "".join(f", from '{n}' at line {l}" for n, l in callers)
            message = f"{message} ({context})"
        return self._source.error(message, span)

    # ---- names and statements ------------------------------------------------------

    def _define(self, name: ast.Name, value: Any) -> None:
        self._check_new(name)
        self._scope.define(name, value)

    def _check_new(self, name: ast.Name) -> None:
        previous = self._scope.defined.get(name.id)
        if previous is not None:
            raise self._error(f"'{name.id}' is already defined at line {previous.line}", name.span)

    def _assign(self, stmt: ast.Assign) -> None:
        target = stmt.target
        self._check_new(target)
        self._scope.pending.pop(target.id, None)
        value = self._evaluate(stmt.value)
        if isinstance(value, SSAValue) and value.name_hint is None:
            value.name_hint = target.id
        self._scope.define(target, value)

    def _lookup(self, name: ast.Name) -> Any:
        if name.id in self._scope.values:
            value = self._scope.values[name.id]
            return self._param(value) if isinstance(value, _Param) else value
        if name.id in self._scope.pending:
            line = self._scope.pending[name.id].line
            raise self._error(f"'{name.id}' is used before it is defined at line {line}", name.span)
        if name.id in BUILTINS or name.id in self._functions:
            raise self._error(f"'{name.id}' is a function; call it as {name.id}(...)", name.span)
        hint = suggestion(name.id, list(self._scope.values))
        if not hint and any(name.id in scope.values for scope in self._scopes[:-1]):
            hint = "; a def sees only its parameters and its own names"
        raise self._error(f"unknown name '{name.id}'{hint}", name.span)

    def _param(self, param: _Param) -> SSAValue:
        if param.value is None:
            constant = ConstantOp(param.array, param.type.element_type, name=param.name)
            constant.result.name_hint = param.name
            self._block.add_op(constant)
            param.value = constant.result
        return param.value

    # ---- expressions ----------------------------------------------------------------

    def _evaluate(self, expr: ast.Expr) -> Any:
        match expr:
            case ast.Number() | ast.Bool() | ast.String():
                return expr.value
            case ast.ListExpr():
                return [self._evaluate(item) for item in expr.items]
            case ast.Name():
                return self._lookup(expr)
            case ast.Neg():
                return self._negate(self._evaluate(expr.operand), expr)
            case ast.Binary():
                return self._binary(expr, self._evaluate(expr.left), self._evaluate(expr.right))
            case ast.Call():
                return self._call(expr)
        raise AssertionError(expr)

    def _fold(self, expr: ast.Expr) -> Any:
        """Evaluate an expression that must be a constant, emitting no IR."""
        match expr:
            case ast.Number() | ast.Bool() | ast.String():
                return expr.value
            case ast.ListExpr():
                return [self._fold(item) for item in expr.items]
            case ast.Neg():
                return self._negate(self._fold(expr.operand), expr)
            case ast.Binary():
                return self._binary(expr, self._fold(expr.left), self._fold(expr.right))
        raise self._error("an initializer argument must be a constant", expr.span)

    def _emit(self, node: ast.Expr, make: Callable[[], Operation]) -> SSAValue:
        """Insert the op `make` builds; its shape errors are reported at `node`."""
        try:
            op = make()
        except ShapeError as e:
            raise self._error(str(e), node.span) from None
        self._block.add_op(op)
        return op.results[0]

    def _negate(self, value: Any, expr: ast.Neg) -> Any:
        if is_number(value):
            return -value
        if not isinstance(value, SSAValue):
            raise self._error(
                f"unary '-' needs a number or a tensor, got {describe(value)}", expr.operand.span
            )
        return self._emit(expr, lambda: NegOp.make([value]))

    def _binary(self, expr: ast.Binary, left: Any, right: Any) -> Any:
        for value, operand in ((left, expr.left), (right, expr.right)):
            if not (is_number(value) or isinstance(value, SSAValue)):
                raise self._error(
                    f"'{expr.op}' needs numbers or tensors, got {describe(value)}", operand.span
                )
        if is_number(left) and is_number(right):
            return self._fold_numbers(expr, left, right)
        if is_number(left):
            left = self._literal(left, right, expr.left)
        if is_number(right):
            right = self._literal(right, left, expr.right)
        return self._emit(expr, lambda: BINARY_OPS[expr.op].make([left, right]))

    def _fold_numbers(self, expr: ast.Binary, left: int | float, right: int | float) -> int | float:
        """Arithmetic on two literals, with Python's semantics (`/` gives a float)."""
        match expr.op:
            case "+":
                return left + right
            case "-":
                return left - right
            case "*":
                return left * right
            case "/":
                if right == 0:
                    raise self._error("division by zero", expr.span)
                return left / right
        raise self._error("'@' needs tensor operands, got two numbers", expr.span)

    def _literal(self, value: int | float, like: SSAValue, operand: ast.Expr) -> SSAValue:
        """A rank-0 constant holding `value` in the dtype of `like`."""
        t = like.type
        assert isinstance(t, TensorType)
        element_type = t.element_type
        if not is_float(t):
            if isinstance(value, float):
                raise self._error(
                    f"float literal {value} cannot be combined with integer tensor {format_type(t)}",
                    operand.span,
                )
            limits = np.iinfo(numpy_dtype(element_type))
            if not limits.min <= value <= limits.max:
                raise self._error(f"literal {value} does not fit in {dtype_name(element_type)}", operand.span)
        constant = ConstantOp(np.array(value, dtype=numpy_dtype(element_type)), element_type)
        self._block.add_op(constant)
        return constant.result

    def _call(self, call: ast.Call) -> Any:
        name = call.func.id
        if name in self._functions:
            return self._inline(self._functions[name], call)
        builtin = BUILTINS.get(name)
        if builtin is None:
            raise self._error(
                f"unknown function '{name}'" + suggestion(name, [*BUILTINS, *self._functions]),
                call.func.span,
            )
        bound = builtin.signature.bind(call, self._evaluate, self._error)
        return self._emit(call, lambda: builtin.make(bound))

    def _inline(self, function: ast.Function, call: ast.Call) -> Any:
        """Evaluate the body of `function` with its parameters bound to the call's arguments."""
        if call.keywords:
            raise self._error(
                f"{function.name.id}() takes positional arguments only", call.keywords[0].span
            )
        signature = Signature(function.name.id, tuple(Arg(p.id, TENSOR) for p in function.params))
        bound = signature.bind(call, self._evaluate, self._error)
        scope = _Scope(function.body, call=(function.name.id, call.span.line))
        for param in function.params:
            scope.define(param, bound[param.id])
        self._scopes.append(scope)
        try:
            for stmt in function.body:
                self._assign(stmt)
            return self._evaluate(function.result)
        finally:
            self._scopes.pop()
