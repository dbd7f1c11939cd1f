"""A small netlist-building layer over xDSL's hw, comb and seq dialects.

Hardware is described from Python the way one writes it in an HDL, and each
call appends the matching op to one `hw.module`:

    m = ModuleBuilder("counter")
    limit = m.input("limit", 8)
    count = m.reg("count", 8)
    done = count.q.eq(limit)
    count.set(count.q + 1, when=~done)
    m.output("done", done)
    module = m.finish()            # hw.module @counter(in %clk: !seq.clock, in %rst: i1, ...)

Values are `Signal`s: fixed-width bit vectors with modular `+ - *`, bitwise
`& | ^ ~`, comparisons as methods (`eq`, `ult`, `slt`, ...), `s[lo:hi]` bit
slices (`hi` exclusive) and explicit `zext`/`sext`/`trunc`. Binary operators
zero-extend the narrower operand and turn Python ints into constants, so
arithmetic reads like Verilog's. Every module has a clock `clk` and a
synchronous reset `rst`; a `Register` resets to its `init` and takes the last
`set` whose condition holds (later assignments win, as in an always block),
holding its value otherwise. `Memory` is a `seq.firmem` with combinational
read ports and clocked, optionally byte-masked, write ports
that do nothing during reset. `delay` adds pipeline registers; a `Backedge`
stands for a value used before it is built.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from xdsl.dialects import comb, hw
from xdsl.dialects.builtin import (
    ArrayAttr,
    IntAttr,
    IntegerAttr,
    IntegerType,
    ModuleOp,
    StringAttr,
    i1,
)
from xdsl.dialects.seq import CompRegOp, clock
from xdsl.ir import Block, Operation, Region, SSAValue
from xdsl.rewriter import InsertPoint, Rewriter

from compiler.diagnostics import InternalError
from dialects.firmem import FirMemOp, FirMemReadPortOp, FirMemType, FirMemWritePortOp

ICMP = {"eq": 0, "ne": 1, "slt": 2, "sle": 3, "sgt": 4, "sge": 5, "ult": 6, "ule": 7, "ugt": 8, "uge": 9}

def bits_for(value: int) -> int:
    """Bits an unsigned value needs (at least one)."""
    return max(1, int(value).bit_length())


class Signal:
    """A bit vector in the module being built."""

    def __init__(self, module: ModuleBuilder, value: SSAValue):
        self.module = module
        self.value = value

    @property
    def width(self) -> int:
        assert isinstance(self.value.type, IntegerType)
        return self.value.type.width.data

    def named(self, name: str) -> Signal:
        self.value.name_hint = name
        return self

    # -- width changes ------------------------------------------------------------

    def __getitem__(self, index: int | slice) -> Signal:
        lo, hi = (index, index + 1) if isinstance(index, int) else (index.start or 0, index.stop)
        if hi is None:
            hi = self.width
        if not 0 <= lo < hi <= self.width:
            raise InternalError(f"bits [{lo}:{hi}) of a {self.width}-bit signal")
        if (lo, hi) == (0, self.width):
            return self
        return self.module.add(comb.ExtractOp(self.value, IntegerAttr(lo, 32), IntegerType(hi - lo)))

    def zext(self, width: int) -> Signal:
        if width <= self.width:
            return self[:width]
        return self.module.concat(self.module.const(0, width - self.width), self)

    def sext(self, width: int) -> Signal:
        if width <= self.width:
            return self[:width]
        sign = self[self.width - 1]
        fill = self.module.add(comb.ReplicateOp(sign.value, IntegerType(width - self.width)))
        return self.module.concat(fill, self)

    def trunc(self, width: int) -> Signal:
        return self[:width]

    # -- arithmetic and logic -------------------------------------------------------

    def _pair(self, other: Signal | int) -> tuple[Signal, Signal]:
        if isinstance(other, int):
            return self, self.module.const(other, max(self.width, bits_for(other) if other >= 0 else self.width))
        width = max(self.width, other.width)
        return self.zext(width), other.zext(width)

    def _variadic(self, kind: type[comb.VariadicCombOperation], other: Signal | int) -> Signal:
        a, b = self._pair(other)
        return self.module.add(kind([a.value, b.value]))

    def _binary(self, kind: type[comb.BinCombOperation], other: Signal | int) -> Signal:
        a, b = self._pair(other)
        return self.module.add(kind(a.value, b.value))

    def __add__(self, other: Signal | int) -> Signal:
        return self._variadic(comb.AddOp, other)

    def __sub__(self, other: Signal | int) -> Signal:
        return self._binary(comb.SubOp, other)

    def __mul__(self, other: Signal | int) -> Signal:
        return self._variadic(comb.MulOp, other)

    def __and__(self, other: Signal | int) -> Signal:
        return self._variadic(comb.AndOp, other)

    def __or__(self, other: Signal | int) -> Signal:
        return self._variadic(comb.OrOp, other)

    def __xor__(self, other: Signal | int) -> Signal:
        return self._variadic(comb.XorOp, other)

    def __invert__(self) -> Signal:
        return self ^ self.module.const(-1, self.width)

    def divu(self, other: Signal | int) -> Signal:
        return self._binary(comb.DivUOp, other)

    def modu(self, other: Signal | int) -> Signal:
        return self._binary(comb.ModUOp, other)

    def __lshift__(self, amount: Signal | int) -> Signal:
        return self._binary(comb.ShlOp, amount)

    def __rshift__(self, amount: Signal | int) -> Signal:
        return self._binary(comb.ShrUOp, amount)

    def ashr(self, amount: Signal | int) -> Signal:
        return self._binary(comb.ShrSOp, amount)

    def _compare(self, predicate: str, other: Signal | int) -> Signal:
        if isinstance(other, int) and predicate[0] == "s":
            other = self.module.const(other, self.width)
        a, b = self._pair(other)
        return self.module.add(comb.ICmpOp(a.value, b.value, ICMP[predicate]))

    def eq(self, other: Signal | int) -> Signal:
        return self._compare("eq", other)

    def ne(self, other: Signal | int) -> Signal:
        return self._compare("ne", other)

    def ult(self, other: Signal | int) -> Signal:
        return self._compare("ult", other)

    def ule(self, other: Signal | int) -> Signal:
        return self._compare("ule", other)

    def ugt(self, other: Signal | int) -> Signal:
        return self._compare("ugt", other)

    def uge(self, other: Signal | int) -> Signal:
        return self._compare("uge", other)

    def slt(self, other: Signal | int) -> Signal:
        return self._compare("slt", other)

    def sge(self, other: Signal | int) -> Signal:
        return self._compare("sge", other)

    def sgt(self, other: Signal | int) -> Signal:
        return self._compare("sgt", other)

    def any(self) -> Signal:
        return self.ne(0)

    def mux(self, if_true: Signal | int, if_false: Signal | int) -> Signal:
        """`self ? if_true : if_false` for a one-bit `self`."""
        return self.module.mux(self, if_true, if_false)


class Register:
    """A clocked register: `q` is its output, `set` adds a conditional next value."""

    def __init__(self, module: ModuleBuilder, name: str, width: int, init: int):
        self.module = module
        self.width = width
        init_value = module.const(init, width)
        self.op = CompRegOp(init_value.value, module.clk.value, (module.rst.value, init_value.value))
        self.op.data.name_hint = name
        module.block.add_op(self.op)
        self.q = Signal(module, self.op.data)
        self.updates: list[tuple[Signal | None, Signal | int]] = []

    def set(self, value: Signal | int, when: Signal | None = None) -> None:
        self.updates.append((when, value))

    def _close(self) -> None:
        next_value = self.q
        for when, value in self.updates:
            value = self.module.fit(value, self.width)
            next_value = value if when is None else self.module.mux(when, value, next_value)
        self.op.operands[0] = next_value.value


class Backedge:
    """A placeholder signal, replaced by a real one with `resolve`: a value used
    before it is built (`hw.module` bodies are graph regions, so a use may
    precede its definition)."""

    def __init__(self, m: ModuleBuilder, width: int):
        self.op = hw.ConstantOp(0, width)
        m.block.add_op(self.op)
        self.signal = Signal(m, self.op.result)

    def resolve(self, value: Signal) -> None:
        self.op.result.replace_all_uses_with(value.value)
        Rewriter.erase_op(self.op)


def _all_ones(signal: Signal) -> bool:
    owner = signal.value.owner
    return isinstance(owner, hw.ConstantOp) and owner.value.value.data % (1 << signal.width) == (1 << signal.width) - 1


class Memory:
    """`depth` words of `width` bits; writes may be masked in `mask` equal lanes."""

    def __init__(self, module: ModuleBuilder, name: str, depth: int, width: int, mask: int = 0,
                 init_file: str | None = None):
        self.module = module
        self.type = FirMemType(IntAttr(depth), IntAttr(width), IntAttr(mask))
        self.op = FirMemOp(self.type, init_file)
        self.op.memory.name_hint = name
        module.block.add_op(self.op)

    @property
    def address_bits(self) -> int:
        return self.type.address_bits

    def read(self, address: Signal) -> Signal:
        address = self.module.fit(address, self.address_bits)
        return self.module.add(FirMemReadPortOp(self.op.memory, address.value, self.module.clk.value))

    def write(self, address: Signal, data: Signal, enable: Signal, mask: Signal | None = None) -> None:
        address = self.module.fit(address, self.address_bits)
        data = self.module.fit(data, self.type.width.data)
        enable = enable & ~self.module.rst  # nothing is written while the design is held in reset
        if mask is not None and _all_ones(mask):
            # CIRCT 1.62 canonicalizes a constant all-ones mask away and then lowers the
            # port with a mask of 1 (first lane only); an equivalent non-constant mask
            # keeps every lane.
            mask = self.module.add(comb.ReplicateOp(enable.value, IntegerType(mask.width)))
        self.module.block.add_op(FirMemWritePortOp(self.op.memory, address.value, data.value,
                                                   self.module.clk.value, enable.value,
                                                   None if mask is None else mask.value))


class ModuleBuilder:
    """Builds one `hw.module` with a clock `clk` and a synchronous reset `rst`."""

    def __init__(self, name: str):
        self.name = name
        self.block = Block()
        self.ports: list[hw.ModulePort] = []
        self.outputs: list[SSAValue] = []
        self.registers: list[Register] = []
        self.constants: dict[tuple[int, int], Signal] = {}
        self.clk = self._port("clk", clock)
        self.rst = self._port("rst", i1)

    def _port(self, name: str, type_: object) -> Signal:
        self.ports.append(hw.ModulePort(StringAttr(name), type_, hw.DirectionAttr(hw.Direction.INPUT)))
        arg = self.block.insert_arg(type_, len(self.block.args))
        arg.name_hint = name
        return Signal(self, arg)

    def add(self, op: Operation) -> Signal:
        self.block.add_op(op)
        return Signal(self, op.results[0])

    # -- ports and values -------------------------------------------------------------

    def input(self, name: str, width: int) -> Signal:
        return self._port(name, IntegerType(width))

    def output(self, name: str, value: Signal) -> None:
        self.ports.append(hw.ModulePort(StringAttr(name), value.value.type, hw.DirectionAttr(hw.Direction.OUTPUT)))
        self.outputs.append(value.value)

    def const(self, value: int, width: int) -> Signal:
        value &= (1 << width) - 1
        key = (value, width)
        if key not in self.constants:
            signed = value - (1 << width) if value >> (width - 1) else value
            self.constants[key] = self.add(hw.ConstantOp(signed, width))
        return self.constants[key]

    def fit(self, value: Signal | int, width: int) -> Signal:
        """`value` as a `width`-bit signal: ints become constants, signals are zero-extended or truncated."""
        return self.const(value, width) if isinstance(value, int) else value.zext(width)

    def concat(self, *parts: Signal) -> Signal:
        """Bit concatenation, most significant part first (Verilog's `{a, b}`)."""
        if len(parts) == 1:
            return parts[0]
        width = sum(p.width for p in parts)
        return self.add(comb.ConcatOp([p.value for p in parts], IntegerType(width)))

    def mux(self, condition: Signal, if_true: Signal | int, if_false: Signal | int) -> Signal:
        if isinstance(if_true, int) and isinstance(if_false, int):
            width = max(bits_for(abs(if_true)), bits_for(abs(if_false)))
        elif isinstance(if_true, int):
            width = if_false.width  # type: ignore[union-attr]
        elif isinstance(if_false, int):
            width = if_true.width
        else:
            width = max(if_true.width, if_false.width)
        a, b = self.fit(if_true, width), self.fit(if_false, width)
        return self.add(comb.MuxOp(condition.value, a.value, b.value))

    def select(self, index: Signal, choices: Sequence[Signal | int], default: Signal | int = 0) -> Signal:
        """`choices[index]` (`default` past the end), as a chain of muxes."""
        result: Signal | int = default
        for position in reversed(range(len(choices))):
            result = self.mux(index.eq(position), choices[position], result)
        return result if isinstance(result, Signal) else self.const(result, 1)

    def all_of(self, conditions: Iterable[Signal]) -> Signal:
        result = self.const(1, 1)
        for condition in conditions:
            result = result & condition
        return result

    def any_of(self, conditions: Iterable[Signal]) -> Signal:
        result = self.const(0, 1)
        for condition in conditions:
            result = result | condition
        return result

    # -- state ------------------------------------------------------------------------

    def reg(self, name: str, width: int, init: int = 0) -> Register:
        register = Register(self, name, width, init)
        self.registers.append(register)
        return register

    def memory(self, name: str, depth: int, width: int, mask: int = 0, init_file: str | None = None) -> Memory:
        return Memory(self, name, depth, width, mask, init_file)

    def delay(self, signal: Signal, cycles: int = 1, name: str = "") -> Signal:
        """`signal` `cycles` clock cycles later, through registers without reset:
        datapath values only matter where a valid bit says so, and a read
        register without one is what synthesis folds into a block RAM."""
        for step in range(cycles):
            register = CompRegOp(signal.value, self.clk.value)
            if name:
                register.data.name_hint = f"{name}_d{step + 1}"
            self.block.add_op(register)
            signal = Signal(self, register.data)
        return signal

    def finish(self) -> hw.HWModuleOp:
        for register in self.registers:
            register._close()
        self.block.add_op(hw.OutputOp(self.outputs))
        _narrow_delays(self.block)
        module_type = hw.ModuleType(ArrayAttr(self.ports))
        return hw.HWModuleOp(StringAttr(self.name), module_type, Region(self.block))


def _narrow_delays(block: Block) -> None:
    """Shrink every reset-less register read only through bit slices to the bits read,
    until none shrinks (a chain narrows from its last register back): CIRCT
    narrows combinational logic, not registers, and `verilator -Wall` reports
    unused register bits."""
    changed = True
    while changed:
        changed = False
        for register in [op for op in block.ops if isinstance(op, CompRegOp) and op.reset is None]:
            readers = [use.operation for use in register.data.uses]
            if not readers or not all(isinstance(r, comb.ExtractOp) for r in readers):
                continue
            low = min(r.low_bit.value.data for r in readers)  # type: ignore[union-attr]
            high = max(r.low_bit.value.data + r.result.type.width.data for r in readers)  # type: ignore[union-attr]
            if (low, high) == (0, register.data.type.width.data):  # type: ignore[union-attr]
                continue
            kept = comb.ExtractOp(register.input, IntegerAttr(low, 32), IntegerType(high - low))
            narrow = CompRegOp(kept.result, register.clk)
            narrow.data.name_hint = register.data.name_hint
            Rewriter.insert_op([kept, narrow], InsertPoint.before(register))
            for reader in readers:
                width = reader.result.type.width.data  # type: ignore[union-attr]
                offset = reader.low_bit.value.data - low  # type: ignore[union-attr]
                if (offset, width) == (0, high - low):
                    reader.result.replace_all_uses_with(narrow.data)
                    Rewriter.erase_op(reader)
                else:
                    reader.operands[0] = narrow.data
                    reader.low_bit = IntegerAttr(offset, 32)
            Rewriter.erase_op(register)
            changed = True



def design(*modules: Operation) -> ModuleOp:
    """The builtin module that holds a design's hw modules (and any `fsm.machine`s they instantiate)."""
    return ModuleOp(list(modules))
