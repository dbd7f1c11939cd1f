"""Attach HLS directives to the loop nests of every engine.

The knob is hls4ml's reuse factor R: each multiplier (each copy of a loop
body) is used R times, so a nest of N iterations gets about N / R copies of
its body side by side. Copies are taken along parallel dims only, innermost
first, by factors that divide the trip count, so every copy has work in
every iteration and reductions keep their order (sums come out as a loop
computes them). Every nest is pipelined at `ii`. Each array a nest reads or
writes is partitioned cyclically along the dims its copies spread over, so
the copies find their elements in different banks; `partition` caps the
banks per dim (0: as many as the copies need), which trades II for memory.

Options: `reuse-factor` (default 1), `layers` ("fc1=4,conv1_w=16": per-engine
reuse factors), `partition`, `ii`, `pipeline` (false: nests run one
iteration at a time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ArrayAttr, ModuleOp, TensorType
from xdsl.dialects.linalg import ops as linalg
from xdsl.ir import Attribute, Operation
from xdsl.ir.affine import AffineDimExpr, AffineExpr, AffineMap
from xdsl.passes import ModulePass

from compiler.diagnostics import LoomError
from dialects import hls
from passes.linalg_builders import PARALLEL


@dataclass(frozen=True)
class Nest:
    """A structured op seen as a loop nest: trip counts, which dims reduce,
    and one indexing map per operand (inputs, then the output)."""

    op: Operation
    trips: tuple[int, ...]
    parallel: tuple[bool, ...]
    maps: tuple[AffineMap, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def iterations(self) -> int:
        return math.prod(self.trips)


def nest_of(op: Operation) -> Nest | None:
    """The loop nest of a `linalg.generic` or `linalg.fill`; None for other ops."""
    if isinstance(op, linalg.GenericOp):
        maps = tuple(m.data for m in op.indexing_maps)
        shapes = tuple(tuple(v.type.get_shape()) if isinstance(v.type, TensorType) else ()
                       for v in (*op.inputs, *op.outputs))
        trips = tuple(op.get_static_loop_ranges())
        parallel = tuple(t == PARALLEL for t in op.iterator_types)
        return Nest(op, trips, parallel, maps, shapes)
    if isinstance(op, linalg.FillOp):
        shape = tuple(op.outputs[0].type.get_shape())  # type: ignore[union-attr]
        rank = len(shape)
        identity = AffineMap.identity(rank)
        return Nest(op, shape, (True,) * rank, (AffineMap(rank, 0, ()), identity), ((), shape))
    return None


def engine_nests(engine: hls.EngineOp) -> list[Nest]:
    return [nest for op in engine.body.block.ops if (nest := nest_of(op)) is not None]


def unroll_factors(nest: Nest, reuse_factor: int) -> tuple[int, ...]:
    """Body copies per dim so that each copy runs about `reuse_factor` iterations."""
    wanted = math.ceil(nest.iterations / reuse_factor)
    factors = [1] * len(nest.trips)
    lanes = 1
    for dim in reversed(range(len(nest.trips))):
        if lanes >= wanted:
            break
        if not nest.parallel[dim]:
            continue
        need = math.ceil(wanted / lanes)
        trip = nest.trips[dim]
        factors[dim] = max(d for d in range(1, min(trip, need) + 1) if trip % d == 0) if need < trip else trip
        lanes *= factors[dim]
    return tuple(factors)


def _dims_of(expr: AffineExpr) -> set[int]:
    if isinstance(expr, AffineDimExpr):
        return {expr.position}
    found: set[int] = set()
    for child in ("lhs", "rhs"):
        if hasattr(expr, child):
            found |= _dims_of(getattr(expr, child))
    return found


def partitions(nest: Nest, factors: tuple[int, ...], cap: int) -> list[list[hls.PartitionAttr]]:
    """Per operand: a cyclic partition of every array dim whose index varies across body copies."""
    out: list[list[hls.PartitionAttr]] = []
    for amap, shape in zip(nest.maps, nest.shapes):
        parts = []
        for dim, expr in enumerate(amap.results):
            spread = math.prod(factors[d] for d in _dims_of(expr))
            if spread <= 1:
                continue
            banks = min(spread, cap) if cap else spread
            if banks >= shape[dim]:
                parts.append(hls.PartitionAttr(("complete", dim, 0)))
            elif banks > 1:
                parts.append(hls.PartitionAttr(("cyclic", dim, banks)))
        out.append(parts)
    return out


def parse_layer_factors(spec: str) -> dict[str, int]:
    """'fc1=4,conv1_w=16' -> {"fc1": 4, "conv1_w": 16}."""
    factors: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, value = item.partition("=")
        if not name or not value.isdigit() or int(value) < 1:
            raise LoomError(f"hls-directives: layers expects NAME=R with R >= 1, got '{item}'")
        factors[name] = int(value)
    return factors


@dataclass(frozen=True)
class HlsDirectivesPass(ModulePass):
    """Attach pipeline, unroll and array-partition directives to every engine's loop nests from reuse factors."""

    name = "hls-directives"

    reuse_factor: int = 1
    layers: str = ""
    partition: int = 0
    ii: int = 1
    pipeline: bool = True

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        if self.reuse_factor < 1 or self.ii < 1 or self.partition < 0:
            raise LoomError("hls-directives: reuse-factor and ii must be at least 1, partition at least 0")
        per_layer = parse_layer_factors(self.layers)
        engines = [e for e in op.walk() if isinstance(e, hls.EngineOp)]
        unknown = sorted(set(per_layer) - {e.layer_name for e in engines})
        if unknown:
            known = ", ".join(e.layer_name for e in engines)
            raise LoomError(f"hls-directives: no layer named {', '.join(unknown)} (layers: {known})")
        for engine in engines:
            reuse = per_layer.get(engine.layer_name, self.reuse_factor)
            engine.set_reuse_factor(reuse)
            for nest in engine_nests(engine):
                factors = unroll_factors(nest, reuse)
                attributes: dict[str, Attribute] = {
                    hls.UNROLL_ATTR: hls.UnrollAttr(factors),
                    hls.PARTITION_ATTR: ArrayAttr([ArrayAttr(p) for p in partitions(nest, factors, self.partition)]),
                }
                if self.pipeline:
                    attributes[hls.PIPELINE_ATTR] = hls.PipelineAttr(self.ii)
                nest.op.attributes.update(attributes)
