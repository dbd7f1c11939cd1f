"""Place matrix-vector products on the PIM units and lay their matrices out in the banks.

What goes to PIM. A product `x @ W` runs on the units when W is resident in
the stack (a constant, or a model input such as a KV cache, possibly through
a 2-D transpose, which the layout absorbs), W is 2-D, and the units are
predicted to beat the host: PIM reads W once per row of x at the internal
bandwidth, while the host reads it once over the external bus and then
computes at `host_macs_per_cycle`. So GEMVs (decode-phase projections, FFN
layers, attention over a cache, batch-1 dense layers) go to PIM and GEMMs
with enough rows stay on the host (or the GEMM engine beside it). Everything
else stays on the host; such ops are marked `pim.engine` with the reason,
so the split can be read off the IR.

How a matrix is laid out (`#pim.layout`, see dialects/pim.py). Output
columns are spread over channels, then units, so that all units work at
once; a matrix with fewer columns than units also splits its reduction
dimension over channel groups, and the host adds the partial sums. The
split count is chosen by the cost model below. Each matrix gets its own rows
in every bank (`row_base`), allocated in program order.

Mode. With many busy units per channel, all-bank commands drive them all at
once; when the command bus can feed every busy unit of a channel one by one
as fast (at most tCCD_L / tCCD_S of them), per-bank commands do the same
work without activating and computing in idle units.

Overlap. The placement leaves host ops and PIM products interleaved in
program order; the backend overlaps independent ones when the description
says the memory has a second row buffer per bank (`dual_row_buffers`, as in
NeuPIMs), so host accesses do not disturb the units' open rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import (
    BFloat16Type,
    IntegerAttr,
    ModuleOp,
    StringAttr,
    TensorType,
    i64,
)
from xdsl.ir import BlockArgument, Operation, OpResult, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import PatternRewriter, PatternRewriteWalker, RewritePattern

from compiler.diagnostics import LoomError
from compiler.frontend.signatures import suggestion
from compiler.model import models
from compiler.targets import TargetDescription, load_target
from dialects import nn, quant
from dialects.pim import (
    CONFIG_ATTR,
    ENGINE_ATTR,
    MODES,
    GemvOp,
    Layout,
    PimConfig,
    module_config,
)

DEFAULT_TARGET = "pim-hbm"
PRECISIONS = ("", "f16")
_TIMING_NS = ("trcd", "trp", "tras", "trtp", "twr", "trrd_s", "trrd_l", "tfaw", "trefi", "trfc")


# --------------------------------------------------------------------------
# The hardware
# --------------------------------------------------------------------------


def _param(table: dict, key: str, where: str, target: str) -> float:
    value = table.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise LoomError(f"target description '{target}': {where}{key} must be a non-negative number")
    return value


def pim_config(target: TargetDescription) -> PimConfig:
    """The stack a hardware description describes (docs/targets/pim.md lists the keys)."""
    unit = next((u for u in target.compute if u.kind == "pim-bank-unit"), None)
    if unit is None:
        raise LoomError(f"target description '{target.name}' has no pim-bank-unit compute unit")
    p, timing, host = target.params, target.params.get("timing", {}), target.params.get("host", {})
    energy = target.energy_pj

    def number(table: dict, key: str, where: str = "params.") -> float:
        return _param(table, key, where, target.name)

    tck_ns = number(timing, "tck_ns", "params.timing.")
    if tck_ns <= 0:
        raise LoomError(f"target description '{target.name}': params.timing.tck_ns must be positive")
    channels = int(number(p, "channels") * number(p, "pseudo_channels_per_channel"))
    banks = int(number(p, "banks_per_pseudo_channel"))
    row_bytes = int(number(p, "row_bytes"))
    values = {
        "channels": channels,
        "banks": banks,
        "bank_groups": int(number(p, "bank_groups_per_pseudo_channel")),
        "units": int(number(p, "units_per_pseudo_channel")),
        "rows": target.offchip.capacity_bytes // (channels * banks * row_bytes),
        "row_bytes": row_bytes,
        "column_bytes": int(number(p, "column_bytes")),
        "grf_registers": int(number(p, "input_registers")),
        "acc_registers": int(number(p, "accumulator_registers")),
        "burst_cycles": int(number(timing, "burst_length", "params.timing.")) // 2,
        "tccd_s": int(number(timing, "tccd_s_ck", "params.timing.")),
        "tccd_l": int(number(timing, "tccd_l_ck", "params.timing.")),
        "refresh_postpone": int(number(timing, "refresh_postpone", "params.timing.")),
        "clock_hz": 1e9 / tck_ns,
        "host_macs_per_cycle": float(number(host, "macs_per_cycle", "params.host.")),
        "overlap": int(bool(p.get("dual_row_buffers", False))),
        "activate_pj": float(number(energy, "activate", "energy_pj.")),
        "read_bit_pj": float(number(energy, "read_bit", "energy_pj.")),
        "move_bit_pj": float(number(energy, "move_bit", "energy_pj.")),
        "io_bit_pj": float(number(energy, "io_bit", "energy_pj.")),
        "refresh_pj": float(number(energy, "refresh", "energy_pj.")),
        "mac_f32_pj": float(number(energy, "mac_f32", "energy_pj.")),
        "mac_f16_pj": float(number(energy, "mac_f16", "energy_pj.")),
        "mac_i8_pj": float(number(energy, "mac_i8", "energy_pj.")),
    }
    for key in _TIMING_NS:  # rounded up to whole clocks, forgiving the rounding of tck_ns itself
        values[key] = math.ceil(number(timing, f"{key}_ns", "params.timing.") / tck_ns - 0.01)
    config = PimConfig(**values)
    try:
        config.check()
    except ValueError as e:
        raise LoomError(f"target description '{target.name}': {e}") from None
    return config


# --------------------------------------------------------------------------
# The cost model that chooses engine, split and mode
# --------------------------------------------------------------------------


def busy_units(layout: Layout) -> int:
    """Units of one channel that hold at least one output column."""
    return min(layout.units, math.ceil(min(layout.n, layout.outputs_per_slot) / layout.channels_per_split))


def pim_cycles(layout: Layout, config: PimConfig, mode: str) -> float:
    """Predicted cycles of a product on the units: per input row, per group
    of accumulators, per chunk, one broadcast and the MACs over its rows,
    then the read-out of the group."""
    macs = layout.group_size * layout.grf
    step = max(busy_units(layout) * config.tccd_s, config.tccd_l) if mode == "per-bank" else config.tccd_l
    broadcast = layout.grf * step
    switches = layout.rows_per_block * (config.trcd if layout.banks_per_unit > 1 else config.trcd + config.trp)
    chunk = broadcast + macs * step + switches
    bursts = math.ceil(layout.lanes * 4 / config.column_bytes)
    readout = layout.group_size * busy_units(layout) * bursts * config.tccd_s
    return layout.m * layout.groups * (layout.chunks_per_split * chunk + readout)


def host_cycles(layout: Layout, config: PimConfig) -> float:
    """The host streams the matrix over the bus and multiplies as it arrives."""
    stream = layout.k * layout.n * layout.elem_bytes / config.bus_bytes_per_cycle
    return max(stream, layout.m * layout.k * layout.n / config.host_macs_per_cycle)


def make_layout(config: PimConfig, m: int, k: int, n: int, transposed: bool, elem_bytes: int, splits: int,
                row_base: int = 0) -> Layout:
    return Layout(m=m, k=k, n=n, transposed=int(transposed), elem_bytes=elem_bytes, splits=splits,
                  channels_per_split=config.channels // splits, units=config.units,
                  banks_per_unit=config.banks_per_unit, column_bytes=config.column_bytes,
                  row_columns=config.row_columns, grf=config.grf_registers, accs=config.acc_registers,
                  row_base=row_base)


def choose_layout(config: PimConfig, m: int, k: int, n: int, transposed: bool, elem_bytes: int,
                  mode: str) -> tuple[Layout, str, float]:
    """The fastest split (fewest on a tie) and mode (per-bank on a tie, as it
    spends no energy in idle units): (layout, mode, predicted cycles)."""
    chunk = config.grf_registers * config.column_bytes // elem_bytes
    best: tuple[float, int, Layout, str] | None = None
    for splits in range(1, min(config.channels, math.ceil(k / chunk)) + 1):
        layout = make_layout(config, m, k, n, transposed, elem_bytes, splits)
        for candidate in ("per-bank", "all-bank") if mode == "auto" else (mode,):
            cycles = pim_cycles(layout, config, candidate)
            key = (cycles, splits)
            if best is None or key < best[:2]:
                best = (cycles, splits, layout, candidate)
    assert best is not None
    return best[2], best[3], best[0]


# --------------------------------------------------------------------------
# Placing products
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Matrix:
    """A product's matrix as the banks would hold it: the resident value and
    whether it is the transpose of the [K, N] operand."""

    value: SSAValue
    transposed: bool
    name: str


def resident_matrix(w: SSAValue, input_names: dict[SSAValue, str]) -> Matrix | str:
    """The resident matrix behind operand `w`, or why there is none."""
    transposed = False
    if isinstance(w, OpResult) and isinstance(w.op, nn.TransposeOp) and w.op.params()["perm"] == [1, 0]:
        w, transposed = w.op.operands[0], True
    if isinstance(w, OpResult) and isinstance(w.op, nn.ConstantOp):
        return Matrix(w, transposed, w.op.param_name or "constant")
    if isinstance(w, BlockArgument) and w in input_names:
        return Matrix(w, transposed, input_names[w])
    return "its matrix is computed at run time, so it is not resident in the banks"


def _shape(value: SSAValue) -> tuple[int, ...]:
    t = value.type
    assert isinstance(t, TensorType)
    return tuple(t.get_shape())


class PlaceProducts(RewritePattern):
    """nn.matmul / quant.matmul with a resident 2-D matrix -> pim.gemv when
    the cost model prefers the units (or `mode` forces them)."""

    def __init__(self, config: PimConfig, precision: str, mode: str, input_names: dict[SSAValue, str],
                 reasons: dict[Operation, str], rows: list[int], names: set[str]):
        self.config, self.precision, self.mode = config, precision, mode
        self.input_names, self.reasons, self.rows, self.names = input_names, reasons, rows, names

    def elem_bytes(self, op: Operation) -> int | str:
        element_type = op.operands[0].type.element_type  # type: ignore[attr-defined]
        if isinstance(op, quant.MatmulOp):
            return 1
        if isinstance(element_type, BFloat16Type):
            return "the units have no bf16 multipliers"
        if self.precision == "f16" or nn.dtype_name(element_type) == "f16":
            return 2
        return 4

    def layer_name(self, matrix: Matrix) -> str:
        name, count = matrix.name, 1
        while name in self.names:
            count += 1
            name = f"{matrix.name}.{count}"
        self.names.add(name)
        return name

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> None:
        if not isinstance(op, (nn.MatmulOp, quant.MatmulOp)) or op in self.reasons:
            return
        x, w = op.operands
        matrix = resident_matrix(w, self.input_names)
        elem_bytes = self.elem_bytes(op)
        if isinstance(matrix, str) or isinstance(elem_bytes, str) or len(_shape(w)) != 2:
            self.reasons[op] = (matrix if isinstance(matrix, str) else elem_bytes if isinstance(elem_bytes, str)
                                else "its matrix has batch dims")
            return
        *rows, k = _shape(x)
        n = _shape(w)[1]
        layout, mode, cycles = choose_layout(self.config, math.prod(rows), k, n, matrix.transposed, elem_bytes,
                                             "auto" if self.mode in ("auto", "host") else self.mode)
        host = host_cycles(layout, self.config)
        if self.mode == "host" or (self.mode == "auto" and host < cycles):
            mode = "host"
        layout = make_layout(self.config, layout.m, k, n, matrix.transposed, elem_bytes, layout.splits,
                             row_base=self.rows[0])
        if self.rows[0] + layout.bank_rows > self.config.rows:
            self.reasons[op] = "the banks have no rows left for its matrix"
            return
        self.rows[0] += layout.bank_rows
        lhs_zp, rhs_zp = (op.params()["lhs_zero_point"], op.params()["rhs_zero_point"]) \
            if isinstance(op, quant.MatmulOp) else (0, 0)
        gemv = GemvOp.create(
            operands=[x, matrix.value], result_types=[op.results[0].type],
            properties={"layout": layout.to_attr(), "mode": StringAttr(mode),
                        "layer": StringAttr(self.layer_name(matrix)),
                        **zero_point_properties(lhs_zp, rhs_zp)})
        rewriter.replace(op, gemv)


def zero_point_properties(lhs: int, rhs: int) -> dict[str, IntegerAttr]:
    """The optional zero-point properties of pim.gemv / pim.reduce (absent when 0)."""
    return {name: IntegerAttr(value, i64) for name, value in (("lhs_zero_point", lhs), ("rhs_zero_point", rhs))
            if value}


def _host_reason(op: Operation) -> str:
    return f"{op.name} is not a matrix product"


@dataclass(frozen=True)
class PimMapPass(ModulePass):
    """Put GEMVs with resident matrices on the PIM units, laid out across channels, banks and rows."""

    name = "pim-map"

    target_config: str = DEFAULT_TARGET
    """A built-in hardware description or a TOML file with a pim-bank-unit."""

    precision: str = ""
    """'' computes in the model's float type; 'f16' narrows f32 products to the f16 unit."""

    mode: str = "auto"
    """auto (cost model), all-bank, per-bank, or host (every product read over the bus: the baseline)."""

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        if self.precision not in PRECISIONS:
            raise LoomError(f"pim-map: precision must be '' or 'f16', got '{self.precision}'")
        if self.mode not in ("auto", *MODES):
            raise LoomError(f"pim-map: mode must be one of auto, {', '.join(MODES)}, got '{self.mode}'"
                            f"{suggestion(self.mode, ('auto', *MODES))}")
        config = pim_config(load_target(self.target_config))
        if module_config(op) not in (None, config):
            raise LoomError("the module was already mapped onto a different PIM stack")
        op.attributes[CONFIG_ATTR] = config.to_attr()
        rows = [max((g.get_layout().row_base + g.get_layout().bank_rows for g in op.walk()
                     if isinstance(g, GemvOp)), default=0)]
        reasons: dict[Operation, str] = {}
        for function in models(op):
            input_names = {arg: attr.data for arg, attr in
                           zip(function.body.block.args, function.attributes["loom.inputs"].data)}
            PatternRewriteWalker(
                PlaceProducts(config, self.precision, self.mode, input_names, reasons, rows, set()),
                apply_recursively=False,
            ).rewrite_region(function.body)
            for inner in function.body.ops:
                if isinstance(inner, (nn.NNOperation, quant.QuantOperation)):
                    inner.attributes[ENGINE_ATTR] = StringAttr(f"host: {reasons.get(inner) or _host_reason(inner)}")

