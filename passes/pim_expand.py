"""Expand each placed `pim.gemv` into the steps the stack and the host take.

    pim.gemv (all-bank / per-bank)  ->  pim.broadcast, pim.mac, pim.readout, pim.reduce
    pim.gemv (host)                 ->  pim.read, then nn.matmul or quant.matmul on the host

After this pass every value that crosses the external bus is the result of
an op that says so (`pim.broadcast` in, `pim.readout` and `pim.read` out),
and the host's share of a product (`pim.reduce`) is an op of its own, so the
backend can time and overlap the two sides separately.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, StringAttr, i32
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)

from dialects import nn, quant
from dialects.pim import (
    ENGINE_ATTR,
    LAYER_ATTR,
    BroadcastOp,
    GemvOp,
    MacOp,
    ReadOp,
    ReadoutOp,
    ReduceOp,
    accumulator_element_type,
    unit_element_type,
)
from passes.pim_map import zero_point_properties


class ExpandGemv(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: GemvOp, rewriter: PatternRewriter) -> None:
        layout = op.get_layout()
        lhs_zp, rhs_zp = op.zero_points()
        if op.mode.data == "host":
            read = ReadOp.create(operands=[op.w], properties={"layout": op.layout},
                                 result_types=[nn.tensor(op.w.type.element_type, (layout.k, layout.n))])
            if op.result.type.element_type == i32:
                product = quant.MatmulOp.make([op.x, read], lhs_zero_point=lhs_zp, rhs_zero_point=rhs_zp)
            else:
                product = nn.MatmulOp.make([op.x, read])
            product.attributes[ENGINE_ATTR] = StringAttr(f"host: {op.layer.data} is read over the bus")
            read.attributes[LAYER_ATTR] = op.layer
            rewriter.replace(op, [read, product])
            return
        common = {"layout": op.layout, "mode": op.mode}
        broadcast = BroadcastOp.create(operands=[op.x], properties=common, result_types=[
            nn.tensor(unit_element_type(layout), layout.broadcast_shape())])
        acc_type = nn.tensor(accumulator_element_type(layout), layout.accumulator_shape())
        mac = MacOp.create(operands=[broadcast.result, op.w], properties=common, result_types=[acc_type],
                           attributes={LAYER_ATTR: op.layer})
        readout = ReadoutOp.create(operands=[mac.result], properties={"layout": op.layout}, result_types=[acc_type])
        correction = [op.x, op.w] if lhs_zp or rhs_zp else []
        reduce = ReduceOp.create(operands=[readout.result, *correction], result_types=[op.result.type],
                                 properties={"layout": op.layout, **zero_point_properties(lhs_zp, rhs_zp)})
        rewriter.replace(op, [broadcast, mac, readout, reduce])


@dataclass(frozen=True)
class PimExpandPass(ModulePass):
    """Split each pim.gemv into broadcast, MAC, read-out and host reduction (or a host read)."""

    name = "pim-expand"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        PatternRewriteWalker(ExpandGemv(), apply_recursively=False).rewrite_module(op)
