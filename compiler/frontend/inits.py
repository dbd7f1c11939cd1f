"""Values of params: initializers written in the source, .npy files, and
arrays supplied from a weights file."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from xdsl.dialects.builtin import TensorType

from compiler.frontend import ast
from compiler.frontend.signatures import INT, NUMBER, STRING, Arg, Error, Evaluate, Signature, suggestion
from dialects.nn import dtype_name, format_type, is_float, numpy_dtype


class ConformError(Exception):
    """An array does not fit a param; the message reads after the array's name."""


def _format_shape(shape) -> str:
    return f"[{','.join(str(d) for d in shape)}]"


def conform(array: Any, t: TensorType, param: str) -> np.ndarray:
    """`array` as the numpy value of a param of type `t`.

    Any numeric array fits a float param; an integer param takes only values
    it can hold exactly, so a float array is never silently truncated.
    """
    array = np.asarray(array)
    if list(array.shape) != list(t.get_shape()):
        raise ConformError(
            f"has shape {_format_shape(array.shape)}, but param '{param}' is {format_type(t)}"
        )
    target = numpy_dtype(t.element_type)
    if array.dtype.kind not in "iuf":
        raise ConformError(
            f"holds {array.dtype} values, which param '{param}' ({format_type(t)}) cannot take"
        )
    if target.kind == "i" and array.size:
        info = np.iinfo(target)
        exact = array.dtype.kind in "iu" or bool(np.all(np.isfinite(array) & (array == np.round(array))))
        if not exact or array.min() < info.min or array.max() > info.max:
            raise ConformError(
                f"holds {array.dtype} values that param '{param}' ({dtype_name(t.element_type)}) "
                "cannot represent exactly"
            )
    return array.astype(target)


@dataclass(frozen=True)
class _Request:
    """What an initializer is asked to produce, and how it reports problems."""

    param: str
    type: TensorType
    call: ast.Call
    base_dir: Path
    error: Error

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.type.get_shape())

    @property
    def dtype(self) -> np.dtype:
        return numpy_dtype(self.type.element_type)

    def require_float(self) -> None:
        if not is_float(self.type):
            raise self.error(
                f"{self.call.func.id}() initializes floating-point params only; "
                f"'{self.param}' is {format_type(self.type)}",
                self.call.span,
            )

    def rng(self, seed: int) -> np.random.Generator:
        if seed < 0:
            raise self.error(f"seed must not be negative, got {seed}", self.call.span)
        return np.random.default_rng(seed)


def _zeros(args: dict[str, Any], request: _Request) -> np.ndarray:
    return np.zeros(request.shape, request.dtype)


def _ones(args: dict[str, Any], request: _Request) -> np.ndarray:
    return np.ones(request.shape, request.dtype)


def _uniform(args: dict[str, Any], request: _Request) -> np.ndarray:
    request.require_float()
    rng = request.rng(args["seed"])
    return rng.uniform(args["lo"], args["hi"], request.shape)


def _normal(args: dict[str, Any], request: _Request) -> np.ndarray:
    request.require_float()
    if args["std"] < 0:
        raise request.error(f"normal() std must not be negative, got {args['std']}", request.call.span)
    rng = request.rng(args["seed"])
    return rng.normal(args["mean"], args["std"], request.shape)


def _load(args: dict[str, Any], request: _Request) -> np.ndarray:
    name = args["path"]
    path = request.base_dir / name
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise request.error(f"cannot load '{name}': no such file", request.call.span) from None
    except (OSError, ValueError) as e:
        raise request.error(f"cannot load '{name}': {e}", request.call.span) from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise request.error(
            f"cannot load '{name}': load() reads one array from a .npy file", request.call.span
        )
    try:
        return conform(array, request.type, request.param)
    except ConformError as e:
        raise request.error(f"'{name}' {e}", request.call.span) from None


_SEED = Arg("seed", INT, 0)

INITIALIZERS: dict[str, tuple[Signature, Callable[[dict[str, Any], _Request], np.ndarray]]] = {
    "zeros": (Signature("zeros"), _zeros),
    "ones": (Signature("ones"), _ones),
    "uniform": (Signature("uniform", (Arg("lo", NUMBER), Arg("hi", NUMBER), _SEED)), _uniform),
    "normal": (Signature("normal", (Arg("mean", NUMBER), Arg("std", NUMBER), _SEED)), _normal),
    "load": (Signature("load", (Arg("path", STRING),)), _load),
}


def param_value(
    decl: ast.Param,
    t: TensorType,
    weights: Mapping[str, np.ndarray] | None,
    base_dir: Path,
    fold: Evaluate,
    error: Error,
) -> np.ndarray:
    """The value of a declared param, from its initializer or the weights.

    `fold` evaluates an initializer argument, which must be a constant.
    """
    name = decl.name.id
    if decl.init is None:
        if weights is None or name not in weights:
            raise error(
                f"param '{name}' has no initializer and no value in the weights file", decl.name.span
            )
        try:
            return conform(weights[name], t, name)
        except ConformError as e:
            raise error(f"the weights file value for '{name}' {e}", decl.name.span) from None
    init = decl.init.func.id
    if init not in INITIALIZERS:
        hint = suggestion(init, list(INITIALIZERS)) or f"; expected one of {', '.join(INITIALIZERS)}"
        raise error(f"unknown initializer '{init}'{hint}", decl.init.func.span)
    signature, produce = INITIALIZERS[init]
    args = signature.bind(decl.init, fold, error)
    request = _Request(name, t, decl.init, base_dir, error)
    return np.asarray(produce(args, request), dtype=numpy_dtype(t.element_type))
