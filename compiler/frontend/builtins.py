"""The builtin functions of the DSL and the nn op each one builds."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from xdsl.dialects.builtin import TensorType
from xdsl.ir import SSAValue

from compiler.frontend.signatures import (
    BOOL,
    INT,
    INT_OR_INTS,
    INT_OR_PAIR,
    INTS,
    NUMBER,
    TENSOR,
    Arg,
    Signature,
)
from dialects import nn


@dataclass(frozen=True)
class Builtin:
    """A DSL function that builds one nn op.

    Tensor arguments become operands in signature order (an optional one,
    left out, is simply absent); the others become op parameters, under the
    op's name for them where `renamed` says so. `derived` computes further
    parameters from the operand types.
    """

    signature: Signature
    op: type[nn.NNOperation]
    renamed: Mapping[str, str] = field(default_factory=dict)
    derived: Callable[[Sequence[TensorType]], dict[str, Any]] | None = None

    @property
    def name(self) -> str:
        return self.signature.name

    def make(self, bound: Mapping[str, Any]) -> nn.NNOperation:
        """Build the op from bound arguments; raises nn.ShapeError."""
        operands: list[SSAValue] = []
        if self.signature.variadic is not None:
            operands += bound[self.signature.variadic.name]
        params: dict[str, Any] = {}
        for arg in self.signature.args:
            value = bound[arg.name]
            if arg.kind == TENSOR:
                if value is not None:
                    operands.append(value)
            else:
                params[self.renamed.get(arg.name, arg.name)] = value
        if self.derived is not None:
            params |= self.derived([o.type for o in operands])
        return self.op.make(operands, **params)


def _flatten_shape(types: Sequence[TensorType]) -> dict[str, Any]:
    shape = types[0].get_shape()
    if not shape:
        raise nn.ShapeError(f"flatten needs a tensor of rank 1 or more, got {nn.format_type(types[0])}")
    return {"shape": [shape[0], -1]}


_X = Arg("x", TENSOR)


def _unary(name: str, op: type[nn.NNOperation]) -> Builtin:
    return Builtin(Signature(name, (_X,)), op)


def _pool(name: str, op: type[nn.NNOperation]) -> Builtin:
    return Builtin(
        Signature(
            name,
            (
                _X,
                Arg("kernel", INT_OR_PAIR),
                Arg("stride", INT_OR_PAIR, None),
                Arg("padding", INT_OR_PAIR, 0),
            ),
        ),
        op,
    )


def _reduction(name: str, op: type[nn.NNOperation]) -> Builtin:
    return Builtin(
        Signature(name, (_X, Arg("axis", INT_OR_INTS, None), Arg("keepdims", BOOL, False))),
        op,
        renamed={"axis": "axes"},
    )


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in (
        Builtin(Signature("matmul", (Arg("a", TENSOR), Arg("b", TENSOR))), nn.MatmulOp),
        _unary("relu", nn.ReluOp),
        _unary("gelu", nn.GeluOp),
        _unary("sigmoid", nn.SigmoidOp),
        _unary("tanh", nn.TanhOp),
        _unary("exp", nn.ExpOp),
        _unary("sqrt", nn.SqrtOp),
        Builtin(Signature("softmax", (_X, Arg("axis", INT, -1))), nn.SoftmaxOp),
        Builtin(
            Signature(
                "layernorm",
                (
                    _X,
                    Arg("gamma", TENSOR),
                    Arg("beta", TENSOR),
                    Arg("axis", INT, -1),
                    Arg("eps", NUMBER, 1e-5),
                ),
            ),
            nn.LayerNormOp,
        ),
        Builtin(
            Signature(
                "batchnorm",
                (
                    _X,
                    Arg("mean", TENSOR),
                    Arg("var", TENSOR),
                    Arg("gamma", TENSOR),
                    Arg("beta", TENSOR),
                    Arg("eps", NUMBER, 1e-5),
                ),
            ),
            nn.BatchNormOp,
        ),
        Builtin(
            Signature(
                "conv2d",
                (
                    _X,
                    Arg("w", TENSOR),
                    Arg("b", TENSOR, None),
                    Arg("stride", INT_OR_PAIR, 1),
                    Arg("padding", INT_OR_PAIR, 0),
                    Arg("dilation", INT_OR_PAIR, 1),
                    Arg("groups", INT, 1),
                ),
            ),
            nn.Conv2dOp,
        ),
        _pool("maxpool2d", nn.MaxPool2dOp),
        _pool("avgpool2d", nn.AvgPool2dOp),
        _unary("global_avgpool", nn.GlobalAvgPoolOp),
        Builtin(Signature("reshape", (_X, Arg("shape", INTS))), nn.ReshapeOp),
        Builtin(Signature("flatten", (_X,)), nn.ReshapeOp, derived=_flatten_shape),
        Builtin(Signature("transpose", (_X, Arg("perm", INTS, None))), nn.TransposeOp),
        Builtin(
            Signature("slice", (_X, Arg("starts", INTS), Arg("ends", INTS), Arg("axes", INTS, None), Arg("steps", INTS, None))),
            nn.SliceOp,
        ),
        Builtin(
            Signature("concat", (Arg("axis", INT, 0),), variadic=Arg("tensors", TENSOR)),
            nn.ConcatOp,
        ),
        _reduction("sum", nn.ReduceSumOp),
        _reduction("mean", nn.ReduceMeanOp),
        _reduction("max", nn.ReduceMaxOp),
        Builtin(Signature("tril", (_X, Arg("k", INT, 0), Arg("fill", NUMBER, 0.0))), nn.TrilOp),
    )
}

# What the arithmetic operators build.
BINARY_OPS: dict[str, type[nn.NNOperation]] = {
    "+": nn.AddOp,
    "-": nn.SubOp,
    "*": nn.MulOp,
    "/": nn.DivOp,
    "@": nn.MatmulOp,
}
