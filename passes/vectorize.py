"""Turn register-sized multiply-accumulate tiles into vector FMA kernels.

`tile` leaves, innermost, generics whose output tile is a few rows of a few
vectors (`passes.cost_model.Kernel`). Left to `convert-linalg-to-loops`,
such a tile becomes scalar loops that LLVM vectorises along whichever loop
it likes (often a strided one) and that reload the accumulators on every
step. Here it becomes what a hand-written micro-kernel does: the output
tile is loaded once into vector registers, carried through `scf.for` loops
over the reductions (in the generic's order, so every output element sums
its terms in the same order as the scalar loops would), updated with one
`vector.fma` per accumulator per step — one scalar of the broadcast input
times one vector load of the other — and stored once at the end.

Rows of any length are covered: when the vector width does not divide the
tile's columns, the last vector of each row is loaded and stored through a
constant mask (`vector.maskedload`/`vector.maskedstore`), its idle lanes
zero, so a row of 10 costs one masked vector instead of scalar code.

Ops this does not apply to (other element types or bodies, a single column,
too many accumulators for the register file) are left for
`convert-linalg-to-loops`. Float sums among them (the reductions of
`sum`, `mean`, `softmax`, `layernorm`...) have the `arith.addf` that
accumulates marked `reassoc` and `nsz`, so LLVM may keep several partial
sums in vector lanes and add them up at the end instead of one serial
chain of additions, each waiting for the last. The order is still fixed at
compile time, so every run of a build gives the same bits; it is just not
left to right, much as numpy's own pairwise summation is not. Sums inside
loops split over threads are left in order.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import arith, memref, vector
from xdsl.dialects.builtin import FloatAttr, MemRefType, ModuleOp, VectorType, i1
from xdsl.dialects.linalg import ops as linalg
from xdsl.dialects.linalg.attrs import IteratorType
from xdsl.dialects.utils.fast_math import FastMathFlag
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

from compiler.targets import load_target
from passes.cost_model import (
    Access,
    Contraction,
    LoopNest,
    Machine,
    VectorSlices,
    contraction_roles,
    vector_slices,
)
from passes.loop_builders import IndexBuilder, Offset
from passes.tile import PARALLEL_ATTR, is_f32_multiply_accumulate, loop_nest


def _unit_stride_last(value: SSAValue) -> bool:
    t = value.type
    assert isinstance(t, MemRefType)
    strides = t.get_strides()
    return strides is not None and (not strides or strides[-1] == 1)


@dataclass(frozen=True)
class KernelShape:
    """How a tile maps onto registers: one accumulator vector per point of
    the other parallel dims and per vector slice of the vector dim."""

    roles: Contraction
    slices: VectorSlices
    points: tuple[tuple[int, ...], ...]  # values of `parallel_dims`, in order
    parallel_dims: tuple[int, ...]


def kernel_shape(op: linalg.GenericOp, machine: Machine) -> KernelShape | None:
    """The register kernel for `op`, or None when it does not qualify."""
    if not is_f32_multiply_accumulate(op):
        return None
    nest = loop_nest(op)
    roles = contraction_roles(nest) if nest is not None else None
    if nest is None or roles is None or nest.points == 0:
        return None
    vector_value = op.inputs[roles.vector_input]
    if not (_unit_stride_last(vector_value) and _unit_stride_last(op.outputs[0])):
        return None
    slices = vector_slices(nest.sizes[roles.vector_dim], machine.lanes)
    if slices is None:
        return None
    parallel_dims = tuple(d for d in range(nest.rank) if d not in nest.reductions and d != roles.vector_dim)
    # accumulators, the vector input's slices, one broadcast, the tail's mask
    registers = math.prod(nest.sizes[d] for d in parallel_dims) * slices.count + slices.count + 1 + bool(slices.tail)
    if registers > machine.vector_registers:
        return None
    points = tuple(itertools.product(*(range(nest.sizes[d]) for d in parallel_dims)))
    return KernelShape(roles, slices, points, parallel_dims)


class KernelEmitter(IndexBuilder):
    """Replaces one generic by its vector kernel."""

    def __init__(self, op: linalg.GenericOp, nest: LoopNest, shape: KernelShape):
        super().__init__(InsertPoint.before(op))
        self.op = op
        self.nest = nest
        self.shape = shape
        self.width = shape.slices.width
        self.element_type = op.outputs[0].type.element_type
        self.vector_type = VectorType(self.element_type, [self.width])
        self.reductions = sorted(nest.reductions)
        self.mask: SSAValue | None = None  # of the last slice, when it is partial
        self.idle: SSAValue | None = None  # what its idle lanes load as

    def at(self, parallel: Sequence[int], column: int, reduction: Sequence[Offset]) -> list[Offset]:
        """Loop-dim values: parallel dims from `parallel`, the vector dim at `column`,
        reductions at `reduction` (induction variables, or 0 outside the loops)."""
        values: list[Offset] = [0] * self.nest.rank
        for d, v in zip(self.shape.parallel_dims, parallel):
            values[d] = v
        values[self.shape.roles.vector_dim] = column
        for d, v in zip(self.reductions, reduction):
            values[d] = v
        return values

    def indices(self, access: Access, at: Sequence[Offset]) -> list[SSAValue]:
        return [self.index(self.linear(index, at)) for index in access.indices]

    def accumulator_slots(self) -> list[tuple[tuple[int, ...], int]]:
        return [(p, s) for p in self.shape.points for s in range(self.shape.slices.count)]

    def masked(self, slice_: int) -> bool:
        return self.mask is not None and slice_ == self.shape.slices.count - 1

    def load(self, buffer: SSAValue, indices: list[SSAValue], slice_: int) -> SSAValue:
        """The vector of slice `slice_` of a row of `buffer` starting at `indices`."""
        if self.masked(slice_):
            return self.insert(vector.MaskedLoadOp(buffer, indices, self.mask, self.idle, self.vector_type)).result
        return self.insert(vector.LoadOp(buffer, indices, self.vector_type)).result

    def store(self, value: SSAValue, buffer: SSAValue, indices: list[SSAValue], slice_: int) -> None:
        if self.masked(slice_):
            self.insert(vector.MaskedStoreOp(buffer, indices, self.mask, value))
        else:
            self.insert(vector.StoreOp(value, buffer, indices))

    def run(self) -> None:
        if tail := self.shape.slices.tail:
            self.mask = self.insert(vector.CreateMaskOp([self.index(tail)], VectorType(i1, [self.width]))).results[0]
            zero = self.insert(arith.ConstantOp(FloatAttr(0.0, self.element_type))).result
            self.idle = self.insert(vector.BroadcastOp(zero, self.vector_type)).vector
        out_value, out_access = self.op.outputs[0], self.nest.output
        zeros = [0] * len(self.reductions)
        slots = self.accumulator_slots()
        initial = [self.load(out_value, self.indices(out_access, self.at(p, s * self.width, zeros)), s)
                   for p, s in slots]
        final = self.reduce(0, [], initial)
        for (p, s), value in zip(slots, final):
            self.store(value, out_value, self.indices(out_access, self.at(p, s * self.width, zeros)), s)
        Rewriter.erase_op(self.op)

    def reduce(self, depth: int, ivs: list[SSAValue], accumulators: Sequence[SSAValue]) -> Sequence[SSAValue]:
        if depth == len(self.reductions):
            return self.step(ivs, accumulators)
        extent = self.nest.sizes[self.reductions[depth]]
        loop = self.loop(0, extent, 1, accumulators,
                         lambda iv, carried: self.reduce(depth + 1, ivs + [iv], carried))
        if depth == 0:  # keep loom.op, loom.tiles... visible on the kernel
            loop.attributes.update(self.op.attributes)
        return loop.results

    def step(self, ivs: list[SSAValue], accumulators: Sequence[SSAValue]) -> list[SSAValue]:
        """One reduction step: every accumulator += broadcast scalar * vector slice."""
        roles, width = self.shape.roles, self.width
        vector_value, broadcast_value = self.op.inputs[roles.vector_input], self.op.inputs[roles.broadcast_input]
        vector_access, broadcast_access = self.nest.inputs[roles.vector_input], self.nest.inputs[roles.broadcast_input]
        loads: dict[tuple, SSAValue] = {}

        def cached(key: tuple, make) -> SSAValue:
            if key not in loads:
                loads[key] = make()
            return loads[key]

        def uses(access: Access, p: tuple[int, ...]) -> tuple[int, ...]:
            return tuple(v for d, v in zip(self.shape.parallel_dims, p) if access.uses(d))

        updated = []
        for (p, s), acc in zip(self.accumulator_slots(), accumulators):
            at = self.at(p, s * width, ivs)
            slice_ = cached(("v", uses(vector_access, p), s),
                            lambda: self.load(vector_value, self.indices(vector_access, at), s))
            scalar = cached(("b", uses(broadcast_access, p)), lambda: self.insert(vector.BroadcastOp(
                self.insert(memref.LoadOp.get(broadcast_value, self.indices(broadcast_access, at))).res,
                self.vector_type)).vector)
            updated.append(self.insert(vector.FMAOp(scalar, slice_, acc)).res)
        return updated


REASSOCIABLE = (FastMathFlag.REASSOC, FastMathFlag.NO_SIGNED_ZEROS)


def in_parallel_loop(op: Operation) -> bool:
    parent = op.parent_op()
    while parent is not None:
        if PARALLEL_ATTR in parent.attributes:
            return True
        parent = parent.parent_op()
    return False


def reassociate_sums(op: linalg.GenericOp) -> None:
    """Mark the float additions that accumulate `op`'s reductions as free to
    reassociate (LLVM's loop and SLP vectorizers need `reassoc`, the latter
    `nsz` as well; a sum's sign of zero is all `nsz` gives up). Not inside a
    loop split over threads: its body is compiled as a function of its own,
    where LLVM might split a sum differently, and results must not depend
    on the thread count."""
    if not any(it.data == IteratorType.REDUCTION for it in op.iterator_types) or in_parallel_loop(op):
        return
    block = op.body.block
    terminator = block.last_op
    assert isinstance(terminator, linalg.YieldOp)
    for accumulator, result in zip(block.args[len(op.inputs):], terminator.operands):
        total = result.owner
        if isinstance(total, arith.AddfOp) and accumulator in total.operands:
            total.fastmath = arith.FastMathFlagsAttr({*total.fastmath.data, *REASSOCIABLE})


@dataclass(frozen=True)
class VectorizePass(ModulePass):
    """Rewrite register-sized f32 multiply-accumulate generics as vector FMA kernels."""

    name = "vectorize"

    target_config: str = "host"
    """A built-in hardware description or the path of a TOML file."""

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        machine = Machine.from_target(load_target(self.target_config))
        for generic in [o for o in op.walk() if isinstance(o, linalg.GenericOp)]:
            shape = kernel_shape(generic, machine)
            if shape is not None:
                KernelEmitter(generic, loop_nest(generic), shape).run()
            else:
                reassociate_sums(generic)
