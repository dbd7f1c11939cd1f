"""What an FPGA offers and what each operation costs on it.

`FpgaDevice.from_target` reads a hardware description (`samples/targets/
fpga-ecp5.toml`): the clock, the device totals in `[params]` and the HLS
tables in `[params.hls]`. `operation_cost` maps a scalar arith/math op of a
loop body to its latency and its LUT / DSP cost, sizing integer units by the
bits the value can actually hold (an i64 product of an i32 accumulator and a
31-bit multiplier needs a 32 x 31 multiplier, not a 64 x 64 one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from xdsl.dialects import arith
from xdsl.dialects import math as mathd
from xdsl.dialects.builtin import AnyFloat, IntegerAttr, IntegerType, TensorType
from xdsl.ir import Attribute, Operation, OpResult, SSAValue

from compiler.diagnostics import LoomError
from compiler.targets import TargetDescription, load_target

DEFAULT_TARGET = "fpga-ecp5"


@dataclass(frozen=True)
class OpCost:
    latency: int
    luts: int
    dsps: int


@dataclass(frozen=True)
class FpgaDevice:
    name: str
    clock_hz: float
    dsps: int
    luts: int
    ebr_blocks: int
    ebr_bits: int
    memory_latency: int
    memory_ports: int
    register_bits: int
    loop_overhead: int
    dsp_width: int
    ebr_shapes: tuple[tuple[int, int], ...]
    lut_ram_shape: tuple[int, int]
    channel_luts: int
    ops: dict[str, dict[str, int]]

    @staticmethod
    def from_target(target: TargetDescription) -> FpgaDevice:
        params = target.params
        hls = params.get("hls")
        if not isinstance(hls, dict) or "ops" not in hls:
            raise LoomError(f"target '{target.name}' has no [params.hls] tables, which the fpga target needs "
                            f"(see samples/targets/{DEFAULT_TARGET}.toml)")

        def need(table: dict[str, Any], key: str, where: str) -> Any:
            if key not in table:
                raise LoomError(f"target '{target.name}' lacks {where}.{key}, which the fpga target needs")
            return table[key]

        fabric = [u for u in target.compute if u.kind == "fpga-fabric"]
        if not fabric:
            raise LoomError(f"target '{target.name}' has no fpga-fabric compute unit")
        onchip = target.memory[0]
        return FpgaDevice(
            name=target.name,
            clock_hz=target.clock_hz,
            dsps=fabric[0].count,
            luts=int(need(params, "luts", "params")),
            ebr_blocks=int(need(params, "ebr_blocks", "params")),
            ebr_bits=int(need(params, "ebr_bits_per_block", "params")),
            memory_latency=onchip.latency_cycles,
            memory_ports=int(need(hls, "memory_ports", "params.hls")),
            register_bits=int(need(hls, "register_bits", "params.hls")),
            loop_overhead=int(need(hls, "loop_overhead_cycles", "params.hls")),
            dsp_width=int(need(hls, "dsp_width", "params.hls")),
            ebr_shapes=tuple((int(d), int(w)) for d, w in need(hls, "ebr_shapes", "params.hls")),
            lut_ram_shape=tuple(int(v) for v in need(hls, "lut_ram_shape", "params.hls")),  # type: ignore[arg-type]
            channel_luts=int(need(hls, "channel_luts", "params.hls")),
            ops={name: dict(entry) for name, entry in hls["ops"].items()},
        )

    @staticmethod
    def load(name_or_path: str | None) -> FpgaDevice:
        return FpgaDevice.from_target(load_target(name_or_path or DEFAULT_TARGET))

    def op_class(self, name: str) -> dict[str, int]:
        if name not in self.ops:
            raise LoomError(f"target '{self.name}' lacks params.hls.ops.{name}, which the fpga target needs")
        return self.ops[name]

    def cost(self, op_class: str, bits: int = 32, product_bits: int = 0, dsps: int = 0) -> OpCost:
        entry = self.op_class(op_class)
        luts = entry.get("luts", 0) + entry.get("luts_per_bit", 0) * bits
        luts += entry.get("luts_per_product_bit", 0) * product_bits
        return OpCost(int(entry["latency"]), math.ceil(luts), int(entry.get("dsps", dsps)))

    def dsp_blocks(self, a_bits: int, b_bits: int) -> int:
        """sysDSP blocks for an a x b multiplier (signed operands of `dsp_width` bits each)."""
        return math.ceil(a_bits / self.dsp_width) * math.ceil(b_bits / self.dsp_width)

    def ebr_blocks_for(self, depth: int, width: int) -> int:
        """Blocks of one memory bank of `depth` words of `width` bits, in its best configuration."""
        d, w = self.ebr_shape_for(depth, width)
        return math.ceil(width / w) * math.ceil(depth / d)

    def ebr_shape_for(self, depth: int, width: int) -> tuple[int, int]:
        """The depth x width configuration that needs the fewest blocks for a bank (the deepest on a tie)."""
        return min(self.ebr_shapes, key=lambda s: (math.ceil(width / s[1]) * math.ceil(depth / s[0]), -s[0]))


# --------------------------------------------------------------------------
# Operations of loop bodies
# --------------------------------------------------------------------------

_INT_CLASSES: dict[type[Operation], str] = {
    arith.AddiOp: "int_add", arith.SubiOp: "int_add",
    arith.MaxSIOp: "int_minmax", arith.MinSIOp: "int_minmax", arith.MaxUIOp: "int_minmax",
    arith.MinUIOp: "int_minmax", arith.CmpiOp: "int_minmax", arith.SelectOp: "int_minmax",
    arith.AndIOp: "int_logic", arith.OrIOp: "int_logic", arith.XOrIOp: "int_logic",
    arith.ExtSIOp: "wire", arith.ExtUIOp: "wire", arith.TruncIOp: "wire",
    arith.DivSIOp: "int_div", arith.RemSIOp: "int_div",
}
_FLOAT_CLASSES: dict[type[Operation], str] = {
    arith.AddfOp: "f32_add", arith.SubfOp: "f32_add", arith.DivfOp: "f32_div", arith.NegfOp: "wire",
    arith.MaximumfOp: "f32_minmax", arith.MinimumfOp: "f32_minmax", arith.MaxnumfOp: "f32_minmax",
    arith.MinnumfOp: "f32_minmax", arith.CmpfOp: "f32_minmax",
    arith.FPToSIOp: "f32_convert", arith.SIToFPOp: "f32_convert",
    arith.ExtFOp: "f32_convert", arith.TruncFOp: "f32_convert",
    mathd.RoundEvenOp: "f32_round", mathd.ExpOp: "f32_exp", mathd.TanhOp: "f32_tanh",
    mathd.SqrtOp: "f32_sqrt", mathd.AbsFOp: "wire",
}
_SHIFTS = (arith.ShRSIOp, arith.ShRUIOp, arith.ShLIOp)


def constant_int(value: SSAValue) -> int | None:
    if isinstance(value, OpResult) and isinstance(value.op, arith.ConstantOp):
        attr = value.op.value
        if isinstance(attr, IntegerAttr):
            return attr.value.data
    return None


def type_bits(t: Attribute) -> int:
    if isinstance(t, IntegerType):
        return t.width.data
    if isinstance(t, TensorType):
        return type_bits(t.element_type)
    if isinstance(t, AnyFloat):
        return t.bitwidth
    return 32


def value_bits(value: SSAValue, cache: dict[SSAValue, int] | None = None) -> int:
    """Bits of two's complement the integer `value` can need, at most its type's width."""
    cache = {} if cache is None else cache
    if value in cache:
        return cache[value]
    width = type_bits(value.type)
    bits = width
    literal = constant_int(value)
    if literal is not None:
        bits = max(abs(literal), 1).bit_length() + 1
    elif isinstance(value, OpResult):
        op = value.op
        operands = [value_bits(v, cache) for v in op.operands]
        if isinstance(op, arith.ExtSIOp | arith.TruncIOp | arith.MaxSIOp | arith.MinSIOp):
            bits = max(operands)
        elif isinstance(op, arith.AddiOp | arith.SubiOp):
            bits = max(operands) + 1
        elif isinstance(op, arith.MuliOp):
            bits = sum(operands)
        elif isinstance(op, arith.ShRSIOp) and constant_int(op.operands[1]) is not None:
            bits = operands[0] - constant_int(op.operands[1])
    cache[value] = max(1, min(bits, width))
    return cache[value]


def operation_cost(op: Operation, device: FpgaDevice, on_dsp: bool, bits: dict[SSAValue, int]) -> tuple[str, OpCost]:
    """(unit class, cost) of one body op; multipliers on DSP blocks when `on_dsp`."""
    if isinstance(op, arith.ConstantOp):
        return "wire", OpCost(0, 0, 0)
    if isinstance(op, arith.MuliOp):
        a, b = (value_bits(v, bits) for v in op.operands)
        if on_dsp:
            return "int_mul_dsp", device.cost("int_mul_dsp", dsps=device.dsp_blocks(a, b))
        return "int_mul_lut", device.cost("int_mul_lut", product_bits=a * b)
    if isinstance(op, arith.MulfOp):
        name = "f32_mul_dsp" if on_dsp else "f32_mul_lut"
        return name, device.cost(name)
    if isinstance(op, _SHIFTS):
        name = "wire" if constant_int(op.operands[1]) is not None else "int_shift"
        return name, device.cost(name, bits=value_bits(op.results[0], bits))
    if type(op) in _INT_CLASSES:
        name = _INT_CLASSES[type(op)]
        if name == "int_div":
            width = value_bits(op.operands[0], bits)
            return name, device.cost(name, product_bits=width * width)
        return name, device.cost(name, bits=value_bits(op.results[0], bits))
    if type(op) in _FLOAT_CLASSES:
        name = _FLOAT_CLASSES[type(op)]
        return name, device.cost(name)
    raise LoomError(f"the fpga target cannot implement {op.name}")


def is_multiplier(op: Operation) -> bool:
    return isinstance(op, arith.MuliOp | arith.MulfOp)
