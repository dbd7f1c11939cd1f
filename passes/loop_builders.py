"""Index arithmetic for passes that build loops on buffers (tile, vectorize).

Offsets into static shapes are often known at compile time; `IndexBuilder`
keeps them as Python ints for as long as it can and only emits `arith` ops
for the parts that depend on loop induction variables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from xdsl.dialects import arith, scf
from xdsl.dialects.builtin import IndexType, IntegerAttr
from xdsl.ir import Attribute, Block, Operation, Region, SSAValue
from xdsl.rewriter import InsertPoint, Rewriter

from passes.cost_model import LinearIndex

Offset = int | SSAValue
"""An index known at compile time (int) or computed at run time (SSA value)."""


class IndexBuilder:
    """Inserts ops at a movable insertion point."""

    def __init__(self, point: InsertPoint):
        self.point = point

    def insert(self, op: Operation) -> Operation:
        Rewriter.insert_op(op, self.point)
        return op

    def index(self, value: Offset) -> SSAValue:
        if isinstance(value, SSAValue):
            return value
        return self.insert(arith.ConstantOp(IntegerAttr(value, IndexType()))).result

    def add(self, offset: Offset, amount: int) -> Offset:
        if isinstance(offset, int):
            return offset + amount
        if amount == 0:
            return offset
        return self.insert(arith.AddiOp(offset, self.index(amount))).result

    def linear(self, index: LinearIndex, point: Sequence[Offset]) -> Offset:
        """`index` evaluated at `point` (one offset per loop dim), folding what is static."""
        static = index.constant
        dynamic: SSAValue | None = None
        for c, offset in zip(index.coefficients, point):
            if not c:
                continue
            if isinstance(offset, int):
                static += c * offset
                continue
            term = offset if c == 1 else self.insert(arith.MuliOp(offset, self.index(c))).result
            dynamic = term if dynamic is None else self.insert(arith.AddiOp(dynamic, term)).result
        if dynamic is None:
            return static
        return self.add(dynamic, static)

    def within(self, block: Block, build: Callable[[], object]) -> object:
        """Run `build` with ops going to the end of `block`."""
        saved = self.point
        self.point = InsertPoint.at_end(block)
        try:
            return build()
        finally:
            self.point = saved

    def loop(self, start: Offset, stop: Offset, step: int, carried: Sequence[SSAValue],
             body: Callable[[SSAValue, Sequence[SSAValue]], Sequence[SSAValue]]) -> scf.ForOp:
        """`scf.for` from `start` to `stop`; `body(iv, carried)` returns the values to carry on."""
        types: list[Attribute] = [IndexType(), *(v.type for v in carried)]
        block = Block(arg_types=types)
        loop = self.insert(scf.ForOp(self.index(start), self.index(stop), self.index(step), list(carried),
                                     Region(block)))
        yielded = self.within(block, lambda: body(block.args[0], block.args[1:]))
        Rewriter.insert_op(scf.YieldOp(*yielded), InsertPoint.at_end(block))
        return loop
