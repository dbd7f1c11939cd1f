"""The one face every compiled model shows, whatever the target.

`Artifact.run(**inputs)` checks the inputs against the model signature,
executes, and returns the outputs by name; `report` collects what the target
knows (wall time at least). Differential tests rely on this uniformity: one
harness compares every target with the reference interpreter.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from xdsl.dialects.builtin import ModuleOp

from compiler.diagnostics import LoomError
from compiler.files import write_atomic


_NUMPY_DTYPES = {name: np.dtype(t) for name, t in
                 {"f32": np.float32, "bf16": np.float32, "f16": np.float16, "i8": np.int8, "i32": np.int32}.items()}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # DSL spelling: f32, f16, bf16, i8, i32

    @cached_property
    def numpy_dtype(self) -> np.dtype:
        return _NUMPY_DTYPES[self.dtype]

    def describe(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.shape))}]"


@dataclass(frozen=True)
class ModelSignature:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


_MISSING = object()


def _reject_names(signature: ModelSignature, given: dict[str, Any]) -> None:
    expected = {spec.name for spec in signature.inputs}
    unknown = sorted(set(given) - expected)
    missing = [spec.name for spec in signature.inputs if spec.name not in given]
    if unknown:
        raise LoomError(f"model '{signature.name}' has no input named {', '.join(unknown)}")
    if missing:
        raise LoomError(f"model '{signature.name}' is missing input(s) {', '.join(missing)}")


def coerce_inputs(signature: ModelSignature, given: dict[str, Any]) -> dict[str, np.ndarray]:
    """Check names and shapes of `given` and cast each array to its declared dtype.

    This is on the path of every `run()`, so inputs that already are
    contiguous arrays of the right dtype and shape take a short path.
    """
    if len(given) != len(signature.inputs):
        _reject_names(signature, given)
    out: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        array = given.get(spec.name, _MISSING)
        if (type(array) is np.ndarray and array.shape == spec.shape and array.dtype == spec.numpy_dtype
                and array.flags.c_contiguous):
            out[spec.name] = array
            continue
        if array is _MISSING:
            _reject_names(signature, given)
        array = np.asarray(array)
        if array.shape != spec.shape:
            raise LoomError(
                f"input '{spec.name}' must have shape {list(spec.shape)} ({spec.describe()}), "
                f"got {list(array.shape)}"
            )
        out[spec.name] = np.ascontiguousarray(array, dtype=spec.numpy_dtype)
    return out


def random_inputs(signature: ModelSignature, seed: int) -> dict[str, np.ndarray]:
    """Deterministic test inputs: standard normal floats, small integers."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in signature.inputs:
        if spec.dtype in ("i8", "i32"):
            out[spec.name] = rng.integers(-8, 8, size=spec.shape).astype(spec.numpy_dtype)
        else:
            out[spec.name] = rng.standard_normal(spec.shape).astype(spec.numpy_dtype)
    return out


class Artifact(ABC):
    """A model compiled for one target."""

    def __init__(self, target: str, signature: ModelSignature):
        self.target = target
        self.signature = signature
        self.report: dict[str, Any] = {
            "target": target,
            "model": signature.name,
            "outputs": {spec.name: {"shape": list(spec.shape), "dtype": spec.dtype}
                        for spec in signature.outputs},
        }
        # Set by the driver: the untouched nn module (the oracle's input) and
        # the IR text of each stage.
        self.reference_module: ModuleOp | None = None
        self.stages: Any = None

    @property
    def model(self) -> str:
        return self.signature.name

    def run(self, **inputs: Any) -> dict[str, np.ndarray]:
        arrays = coerce_inputs(self.signature, inputs)
        start = time.perf_counter()
        outputs = self._execute(arrays)
        self.report["wall_time_s"] = time.perf_counter() - start
        return outputs

    @abstractmethod
    def _execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on checked, contiguous inputs; return outputs by name."""

    def emit(self, kind: str, path: str) -> list[str]:
        """Write the artifact as `kind` to `path`; return the files written.

        Every target can emit its IR stages: `nn` (after model-level passes)
        and `ir` (what the backend consumed). Subclasses add their own kinds
        and defer to this for the rest.
        """
        stage = {"nn": "nn", "ir": "lowered"}.get(kind)
        if stage is None or self.stages is None:
            raise LoomError(f"target '{self.target}' cannot emit '{kind}'")
        write_atomic(path, getattr(self.stages, stage) + "\n")
        return [str(path)]
