"""`loom compile --explain`: what the optimisation passes decided, per op.

Everything shown is read back from attributes the passes record in the IR
(`loom.order` from schedule-memory, `loom.ops`/`loom.op`/`loom.name` from the
lowering and fusion, `loom.tiles`/`loom.cost`/`loom.parallel` from tiling,
byte counts from the memory passes), so the explanation cannot drift from
what was compiled.
"""

from __future__ import annotations

from xdsl.dialects import func, memref, scf
from xdsl.dialects.linalg.ops import FillOp, GenericOp
from xdsl.dialects.builtin import (
    ArrayAttr,
    DenseArrayBase,
    DictionaryAttr,
    FloatAttr,
    IntegerAttr,
    MemRefType,
    ModuleOp,
    StringAttr,
)
from xdsl.ir import Operation, SSAValue

from compiler.artifact import Artifact
from compiler.model import find_model

EXPLAIN_AFTER = "tile"  # the snapshot the kernel table is read from


def _string(op: Operation, name: str) -> str | None:
    attr = op.attributes.get(name)
    return attr.data if isinstance(attr, StringAttr) else None


def _kinds(op: Operation) -> list[str]:
    ops = op.attributes.get("loom.ops")
    if isinstance(ops, ArrayAttr):
        return [a.data for a in ops.data if isinstance(a, StringAttr)]
    kind = _string(op, "loom.op")
    return [kind] if kind else []


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _schedule_lines(nn_module: ModuleOp) -> list[str]:
    model = find_model(nn_module, None)
    ordered = []
    for op in model.body.walk():
        order = op.attributes.get("loom.order")
        if isinstance(order, IntegerAttr):
            label = op.name.removeprefix("nn.")
            hint = op.results[0].name_hint if op.results else None
            ordered.append((order.value.data, f"{label}({hint})" if hint else label))
    if not ordered:
        return ["  (no schedule recorded: schedule-memory did not run)"]
    steps = [label for _, label in sorted(ordered)]
    return ["  " + " -> ".join(steps)]


def _root_shape(value: SSAValue) -> str:
    """Shape of the buffer a (possibly tiled) operand is a view of."""
    while isinstance(value.owner, memref.SubviewOp):
        value = value.owner.source
    t = value.type
    return "x".join(map(str, t.get_shape())) if isinstance(t, MemRefType) else "?"


def _kernel_row(index: int, top: Operation) -> list[str] | None:
    """One loop nest; None for nests that only initialise buffers."""
    structured = [op for op in top.walk() if isinstance(op, GenericOp | FillOp)]
    if not any(isinstance(op, GenericOp) for op in structured):
        return None
    kinds = _unique([k for op in structured for k in _kinds(op)])
    names = _unique([n for op in structured if (n := _string(op, "loom.name"))])
    anchor = next((op for op in structured if "loom.tiles" in op.attributes), structured[-1])
    tiles = anchor.attributes.get("loom.tiles")
    tile_text = ",".join(str(t) if t else "-" for t in tiles.get_values()) if isinstance(tiles, DenseArrayBase) else "-"
    cost = anchor.attributes.get("loom.cost")
    time_text = traffic_text = "-"
    if isinstance(cost, DictionaryAttr):
        t, b = cost.data.get("time_s"), cost.data.get("bytes")
        if isinstance(t, FloatAttr):
            time_text = f"{t.value.data * 1e6:.2f} us"
        if isinstance(b, IntegerAttr):
            traffic_text = _bytes(b.value.data)
    parallel = any("loom.parallel" in op.attributes for op in top.walk() if isinstance(op, scf.ForOp))
    out_shape = _root_shape(structured[-1].outputs[0])
    return [str(index), " + ".join(kinds) or "?", ",".join(names) or "-", out_shape, tile_text,
            time_text, traffic_text, "yes" if parallel else "no"]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]


def explain(artifact: Artifact) -> str:
    """A human-readable account of fusion, tiling, scheduling and memory for `artifact`."""
    stages = artifact.stages
    lines = [f"model {artifact.model} on {artifact.target}"]
    nn_module = stages.snapshots.get("schedule-memory") if stages else None
    lines.append("schedule (nn ops in execution order):")
    lines += _schedule_lines(nn_module) if nn_module else ["  (not recorded)"]

    tiled = stages.snapshots.get(EXPLAIN_AFTER) if stages else None
    lines.append("kernels (one loop nest each; fused ops share a row):")
    if tiled is None:
        lines.append(f"  (the {artifact.target} pipeline has no '{EXPLAIN_AFTER}' pass)")
    else:
        body = find_model(tiled, None).body.block.ops
        rows = [row for i, top in enumerate(op for op in body if not isinstance(op, func.ReturnOp))
                if (row := _kernel_row(i, top))]
        for n, row in enumerate(rows, 1):
            row[0] = str(n)
        lines += _table(["#", "ops", "name", "output", "tiles", "predicted", "traffic", "parallel"], rows)

    memory = artifact.report.get("memory", {})
    if memory:
        lines.append("memory:")
        if "peak_bytes_before" in memory:
            lines.append(f"  peak intermediate memory: {_bytes(memory['peak_bytes_before'])} in source order, "
                         f"{_bytes(memory['peak_bytes_after'])} as scheduled")
        if "arena_bytes" in memory:
            lines.append(f"  arena: {_bytes(memory['arena_bytes'])} for {_bytes(memory['unplanned_bytes'])} of "
                         f"buffers (lower bound {_bytes(memory['max_live_bytes'])})")
        if "offchip_bytes_before" in memory:
            lines.append(f"  off-chip traffic: {_bytes(memory['offchip_bytes_before'])} unplanned, "
                         f"{_bytes(memory['offchip_bytes_after'])} with spill planning")
    return "\n".join(lines)
