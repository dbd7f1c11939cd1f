"""The calling convention of a compiled model, shared by the JIT and by C users.

A model `m` becomes ``void loom_m(const T *in0, ..., T *out0, ...)``: one
pointer per tensor, inputs first, then outputs, each a dense row-major
buffer that the caller owns. Buffers must be `ALIGNMENT`-byte aligned and
must not overlap an output; the generated code is allowed to assume both,
which is what lets LLVM vectorise without runtime checks.

Narrow floats cross the boundary as raw 16-bit patterns (`uint16_t` in C):
IEEE binary16 for f16 and the upper half of a binary32 for bf16. Python
holds bf16 as float32 values, so the artifact converts on the way in and out.
"""

from __future__ import annotations

import ctypes
import math
import re
from dataclasses import dataclass

import numpy as np

from compiler.artifact import ModelSignature, TensorSpec
from dialects.nn import round_to_bf16

ALIGNMENT = 64


@dataclass(frozen=True)
class ElementAbi:
    storage: np.dtype  # how one element is laid out in the caller's buffer
    c_type: str


ELEMENT_ABI: dict[str, ElementAbi] = {
    "f32": ElementAbi(np.dtype(np.float32), "float"),
    "f16": ElementAbi(np.dtype(np.float16), "uint16_t"),
    "bf16": ElementAbi(np.dtype(np.uint16), "uint16_t"),
    "i8": ElementAbi(np.dtype(np.int8), "int8_t"),
    "i32": ElementAbi(np.dtype(np.int32), "int32_t"),
}


def c_identifier(name: str) -> str:
    """`name` with every character C does not allow in identifiers replaced by '_'."""
    ident = re.sub(r"\W", "_", name, flags=re.ASCII)
    return f"_{ident}" if ident[:1].isdigit() else ident


def entry_symbol(model: str) -> str:
    return f"loom_{c_identifier(model)}"


def parameter_names(signature: ModelSignature) -> list[str]:
    """C parameter names for the entry point's inputs then outputs, all distinct."""
    names: list[str] = []
    for spec in signature.inputs + signature.outputs:
        name = c_identifier(spec.name)
        while name in names:
            name += "_out"
        names.append(name)
    return names


def address(array: np.ndarray) -> int:
    """Where `array`'s data starts. Through the buffer protocol when the array
    is writable (a third of the cost of `.ctypes.data`, and this is on every
    call's path), else through the array interface."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(array))
    except (TypeError, ValueError):  # read-only or empty
        return array.__array_interface__["data"][0]


def aligned_buffer(shape: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, int]:
    """An uninitialised C-contiguous array starting on an `ALIGNMENT` boundary, and its address."""
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    base = address(raw)
    start = -base % ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape), base + start


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return aligned_buffer(shape, dtype)[0]


def to_storage(spec: TensorSpec, array: np.ndarray) -> tuple[np.ndarray, int]:
    """`array` (already of `spec.numpy_dtype`) in the aligned layout the entry
    point reads, with its address (reading an address costs microseconds, so
    it is read once)."""
    if spec.dtype == "bf16":
        array = (round_to_bf16(array).view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    start = address(array)
    if start % ALIGNMENT == 0 and array.flags.c_contiguous:
        return array, start
    buffer, start = aligned_buffer(spec.shape, ELEMENT_ABI[spec.dtype].storage)
    buffer[...] = array
    return buffer, start


class OutputBlock:
    """All outputs of one call carved from a single aligned allocation, so a
    call costs one allocation and one address read however many outputs."""

    def __init__(self, specs: tuple[TensorSpec, ...]):
        self.specs = specs
        self.offsets: list[int] = []
        size = 0
        for spec in specs:
            self.offsets.append(size)
            nbytes = math.prod(spec.shape) * ELEMENT_ABI[spec.dtype].storage.itemsize
            size += -(-max(nbytes, 1) // ALIGNMENT) * ALIGNMENT
        self.size = size

    def allocate(self) -> tuple[list[np.ndarray], list[int]]:
        raw = np.empty(self.size + ALIGNMENT, dtype=np.uint8)
        base = address(raw)
        skip = -base % ALIGNMENT
        arrays, addresses = [], []
        for spec, offset in zip(self.specs, self.offsets):
            storage = ELEMENT_ABI[spec.dtype].storage
            nbytes = math.prod(spec.shape) * storage.itemsize
            start = skip + offset
            arrays.append(raw[start:start + nbytes].view(storage).reshape(spec.shape))
            addresses.append(base + start)
        return arrays, addresses


def from_storage(spec: TensorSpec, buffer: np.ndarray) -> np.ndarray:
    """An output buffer converted to the dtype Python-side code expects."""
    if spec.dtype == "bf16":
        return (buffer.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return buffer
