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

Ops this does not apply to (other element types or bodies, a vector dim no
vector width divides, too many accumulators for the register file) are
left for `convert-linalg-to-loops`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import memref, vector
from xdsl.dialects.builtin import MemRefType, ModuleOp, VectorType
from xdsl.dialects.linalg import ops as linalg
from xdsl.ir import SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

from compiler.targets import load_target
from passes.cost_model import Access, Contraction, LoopNest, Machine, contraction_roles, vector_width
from passes.loop_builders import IndexBuilder, Offset
from passes.tile import is_f32_multiply_accumulate, loop_nest


def _unit_stride_last(value: SSAValue) -> bool:
    t = value.type
    assert isinstance(t, MemRefType)
    strides = t.get_strides()
    return strides is not None and (not strides or strides[-1] == 1)


@dataclass(frozen=True)
class KernelShape:
    """How a tile maps onto registers: one accumulator vector per point of
    the other parallel dims and per `width`-wide slice of the vector dim."""

    roles: Contraction
    width: int
    points: tuple[tuple[int, ...], ...]  # values of `parallel_dims`, in order
    parallel_dims: tuple[int, ...]
    slices: int


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
    columns = nest.sizes[roles.vector_dim]
    width = vector_width(columns, machine.lanes)
    if not width:
        return None
    parallel_dims = tuple(d for d in range(nest.rank) if d not in nest.reductions and d != roles.vector_dim)
    slices = columns // width
    # accumulators, the vector input's slices, one broadcast
    if math.prod(nest.sizes[d] for d in parallel_dims) * slices + slices + 1 > machine.vector_registers:
        return None
    points = tuple(itertools.product(*(range(nest.sizes[d]) for d in parallel_dims)))
    return KernelShape(roles, width, points, parallel_dims, slices)


class KernelEmitter(IndexBuilder):
    """Replaces one generic by its vector kernel."""

    def __init__(self, op: linalg.GenericOp, nest: LoopNest, shape: KernelShape):
        super().__init__(InsertPoint.before(op))
        self.op = op
        self.nest = nest
        self.shape = shape
        self.vector_type = VectorType(op.outputs[0].type.element_type, [shape.width])
        self.reductions = sorted(nest.reductions)

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
        return [(p, s) for p in self.shape.points for s in range(self.shape.slices)]

    def run(self) -> None:
        out_value, out_access = self.op.outputs[0], self.nest.output
        zeros = [0] * len(self.reductions)
        slots = self.accumulator_slots()
        initial = [
            self.insert(vector.LoadOp(out_value, self.indices(out_access, self.at(p, s * self.shape.width, zeros)),
                                      self.vector_type)).result
            for p, s in slots
        ]
        final = self.reduce(0, [], initial)
        for (p, s), value in zip(slots, final):
            at = self.at(p, s * self.shape.width, zeros)
            self.insert(vector.StoreOp(value, out_value, self.indices(out_access, at)))
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
        roles, width = self.shape.roles, self.shape.width
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
            slice_ = cached(("v", uses(vector_access, p), s), lambda: self.insert(
                vector.LoadOp(vector_value, self.indices(vector_access, at), self.vector_type)).result)
            scalar = cached(("b", uses(broadcast_access, p)), lambda: self.insert(vector.BroadcastOp(
                self.insert(memref.LoadOp.get(broadcast_value, self.indices(broadcast_access, at))).res,
                self.vector_type)).vector)
            updated.append(self.insert(vector.FMAOp(scalar, slice_, acc)).res)
        return updated


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
