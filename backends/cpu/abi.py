"""The calling convention of a compiled model, shared by the JIT and by C users.

A model `m` becomes ``void loom_m(const T *in0, ..., T *out0, ...)``: one
pointer per tensor, inputs first, then outputs, each a dense row-major
buffer that the caller owns. Buffers must be `ALIGNMENT`-byte aligned and
must not overlap an output; the generated code is allowed to assume both,
which is what lets LLVM vectorise without runtime checks. A second entry
point, ``void loom_m_packed(void *const *buffers)``, takes the same
pointers as one array: Python calls it with a single argument.

Narrow floats cross the boundary as raw 16-bit patterns (`uint16_t` in C):
IEEE binary16 for f16 and the upper half of a binary32 for bf16. Python
holds bf16 as float32 values, so the artifact converts on the way in and out.
"""

from __future__ import annotations

import ctypes
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from compiler.artifact import ModelSignature, TensorSpec
from dialects.nn import round_to_bf16

ALIGNMENT = 64
# Tensors up to this size pass through buffers a call frame owns: copying
# them costs less than reading a fresh array's address and allocating an
# aligned one. Larger inputs are used in place when aligned, and larger
# outputs are allocated per call, so no call copies megabytes.
STAGED_BYTES = 16 * 1024


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


def packed_entry_symbol(model: str) -> str:
    return f"{entry_symbol(model)}_packed"


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
    is writable (a third of the cost of `.ctypes.data`), else through the
    array interface."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(array))
    except (TypeError, ValueError):  # read-only or empty
        return array.__array_interface__["data"][0]


def storage_bytes(spec: TensorSpec) -> int:
    return math.prod(spec.shape) * ELEMENT_ABI[spec.dtype].storage.itemsize


def aligned_buffer(shape: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, int]:
    """An uninitialised C-contiguous array starting on an `ALIGNMENT` boundary, and its address."""
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    base = address(raw)
    start = -base % ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape), base + start


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return aligned_buffer(shape, dtype)[0]


def aligned_block(specs: Sequence[TensorSpec]) -> tuple[list[np.ndarray], list[int]]:
    """Storage arrays for `specs`, each aligned, carved from one allocation, and their addresses."""
    offsets, size = [], 0
    for spec in specs:
        offsets.append(size)
        size += -(-max(storage_bytes(spec), 1) // ALIGNMENT) * ALIGNMENT
    raw, base = aligned_buffer((size,), np.dtype(np.uint8))
    arrays = [raw[offset:offset + storage_bytes(spec)].view(ELEMENT_ABI[spec.dtype].storage).reshape(spec.shape)
              for spec, offset in zip(specs, offsets)]
    return arrays, [base + offset for offset in offsets]


def encode(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    """`array` (of `spec.numpy_dtype`) in the element layout the entry point reads."""
    if spec.dtype == "bf16":
        return (round_to_bf16(array).view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    return array


def decode(spec: TensorSpec, buffer: np.ndarray) -> np.ndarray:
    """An output buffer converted to the dtype Python-side code expects."""
    if spec.dtype == "bf16":
        return (buffer.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return buffer


class CallFrame:
    """Everything one call of a packed entry point needs, allocated once.

    The array of buffer addresses the entry point takes, and aligned buffers
    for every input and for the outputs of at most `STAGED_BYTES`: a call
    copies small inputs in and small outputs out, and their addresses never
    change. Large inputs are passed in place when they are aligned (else
    copied into the frame), large outputs freshly allocated; only their
    slots are rewritten per call. A frame serves one call at a time.
    """

    def __init__(self, signature: ModelSignature):
        specs = signature.inputs + signature.outputs
        staged = [i < len(signature.inputs) or storage_bytes(spec) <= STAGED_BYTES for i, spec in enumerate(specs)]
        arrays, addresses = aligned_block([spec for spec, keep in zip(specs, staged) if keep])
        found = iter(zip(arrays, addresses))
        buffers = [next(found) if keep else (None, 0) for keep in staged]
        self.slots = (ctypes.c_void_p * len(specs))(*(start for _, start in buffers))
        self.address = ctypes.addressof(self.slots)
        # Per tensor, what a call does with it: (slot, spec, its buffer, that buffer's address, large?)
        self.inputs = [(i, spec, *buffers[i], storage_bytes(spec) > STAGED_BYTES)
                       for i, spec in enumerate(signature.inputs)]
        self.outputs = [(i, spec, buffers[i][0]) for i, spec in enumerate(specs) if i >= len(signature.inputs)]

    def call(self, entry: Callable[[int], None], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run `entry` on `inputs` (checked, of their declared dtypes); return fresh output arrays."""
        slots = self.slots
        in_place = []  # callers' arrays whose addresses are in the frame during this call
        for slot, spec, staging, staging_address, large in self.inputs:
            array = inputs[spec.name]
            if spec.dtype == "bf16":
                array = encode(spec, array)
            if large:
                if array.flags.c_contiguous and (start := address(array)) % ALIGNMENT == 0:
                    slots[slot] = start
                    in_place.append(array)
                    continue
                slots[slot] = staging_address
            staging[...] = array
        fresh = []
        for slot, spec, staging in self.outputs:
            if staging is None:
                buffer, slots[slot] = aligned_buffer(spec.shape, ELEMENT_ABI[spec.dtype].storage)
                fresh.append(buffer)
        entry(self.address)
        results, fresh_outputs = {}, iter(fresh)
        for _, spec, staging in self.outputs:
            if staging is None:
                results[spec.name] = decode(spec, next(fresh_outputs))
            else:
                results[spec.name] = decode(spec, staging) if spec.dtype == "bf16" else staging.copy()
        return results
