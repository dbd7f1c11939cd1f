"""The PIM bank unit and its simulation wrapper, as netlists.

`pim_unit` is the synthesizable part that sits beside a unit's banks. It
decodes the 64-bit command words of `commands.py` with fixed bit slices (the
positions come from `commands.FIELDS`, so decoder and encoder cannot drift),
keeps the register file (GRF input registers one column wide, accumulators
of one 32-bit lane per i8 element of a column) and runs the i8 MAC lanes:

- BCAST writes the host's data word into input register `reg`;
- MAC multiplies the column its bank returns with register `reg`, lane by
  lane (i8 x i8 -> i16, sign-extended), and stores (`first`) or adds the
  products into accumulator `acc` in wrapping 32-bit lanes;
- RDACC puts part `part` (one column: 8 lanes) of accumulator `acc` on
  `out_data`, registered, with `out_valid`.

Commands take effect when `unit` is the unit's `unit_id` or 255 (all-bank
mode). For ACT, PRE, RD, WR and REF the decoder drives the unit's banks
(activate and precharge masks, refresh, a column read or write and its
bank, row and column). A register index, an accumulator index or a part past
the register file, or a reserved bit set, raises `error`. The register file
can be read 32 bits at a time through `rf_addr`/`rf_data` (input registers
from word 0, accumulators from `RtlConfig.rf_acc_base`).

`pim_bank_sim` is simulation only. It replays a command trace from a memory
(`commands.hex`: the issue cycle and the command word, each command issued
at its cycle), takes the host's data words from `host_words.hex` (one per
BCAST or WR of the channel, whichever unit they address, as they pass on the
shared bus), models the unit's banks behaviourally (`banks.hex` holds their
rows; an open-row register per bank; an error for an ACT to an open bank, a
column access to a closed bank or another row, or a REF with a bank open),
feeds the addressed column to an instance of `pim_unit` (whose number it
reads from `unit.hex`), and logs every word returned to the host (RD,
RDACC) in order. After the END word it raises `done`; `dbg_addr`/`dbg_data`
read the register file (below `RtlConfig.log_base`) and then the log, 32
bits at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.dialects import hw
from xdsl.dialects.builtin import FlatSymbolRefAttr, IntegerType

from backends.pim.commands import ACT, ALL, BCAST, FIELDS, MAC, PRE, RD, RDACC, REF, WR
from backends.rtl.netlist import Memory, ModuleBuilder, Signal, bits_for

UNIT = "pim_unit"
TOP = "pim_bank_sim"
COMMANDS_FILE = "commands.hex"
HOST_WORDS_FILE = "host_words.hex"
BANKS_FILE = "banks.hex"
UNIT_FILE = "unit.hex"
WORD = 64
ELEMENT = 8  # i8 lanes
LANE = 32  # accumulator lanes
CYCLE_BITS = 32
END = 0xF  # opcode of the word that ends a trace (not a command)
DEBUG_BITS = 32
RESERVED = 61  # command bits from here up must be zero


@dataclass(frozen=True)
class RtlConfig:
    """The hardware parameters the Verilog is generated for. `rows` and the
    memory depths are powers of two; the depths bound the trace, the host's
    words and the log one simulation can hold."""

    column_bytes: int
    row_columns: int
    grf: int
    accs: int
    banks_per_unit: int
    rows: int
    trace_depth: int
    data_depth: int
    log_depth: int

    @property
    def column_bits(self) -> int:
        return 8 * self.column_bytes

    @property
    def lanes(self) -> int:
        return self.column_bytes  # i8 elements per column

    @property
    def parts(self) -> int:
        """Columns one accumulator takes to read out."""
        return LANE * self.lanes // self.column_bits

    @property
    def acc_bits(self) -> int:
        return LANE * self.lanes

    @property
    def grf_words(self) -> int:
        """32-bit words of the input registers in the register-file read port."""
        return _pow2(self.grf) * self.column_bits // 32

    @property
    def acc_words(self) -> int:
        return _pow2(self.accs) * self.acc_bits // 32

    @property
    def rf_addr_bits(self) -> int:
        return 1 + _log2(max(self.grf_words, self.acc_words))

    @property
    def rf_acc_base(self) -> int:
        """First `rf_addr` of the accumulators."""
        return 1 << (self.rf_addr_bits - 1)

    @property
    def log_base(self) -> int:
        """First `dbg_addr` of the log: everything below reads the register file."""
        return 1 << self.rf_addr_bits


def _log2(value: int) -> int:
    return max(0, (value - 1).bit_length())


def _pow2(value: int) -> int:
    return 1 << _log2(value)


class Command:
    """The fields of a command word (`commands.FIELDS`) as bit slices."""

    def __init__(self, word: Signal):
        self.word = word
        self.fields = {name: word[shift:shift + width] for name, shift, width in FIELDS}

    def __getitem__(self, name: str) -> Signal:
        return self.fields[name]

    def is_op(self, opcode: int) -> Signal:
        return self["op"].eq(opcode)

    def addresses(self, unit_id: Signal) -> Signal:
        """The command is for this unit: its own number or every unit."""
        return self["unit"].eq(ALL) | self["unit"].eq(unit_id)


def _lanes(value: Signal, width: int) -> list[Signal]:
    return [value[i * width:(i + 1) * width] for i in range(value.width // width)]


def _word32(m: ModuleBuilder, value: Signal, index: Signal) -> Signal:
    """32-bit word `index` of a wide value."""
    return m.select(index, _lanes(value, 32))


def build_unit(config: RtlConfig) -> ModuleBuilder:
    """`pim_unit`: command decoder, register file, i8 MAC lanes, read-out."""
    m = ModuleBuilder(UNIT)
    unit_id = m.input("unit_id", 8)
    valid = m.input("cmd_valid", 1)
    command = Command(m.input("cmd", WORD))
    data_in = m.input("data_in", config.column_bits)
    column = m.input("column", config.column_bits)
    rf_addr = m.input("rf_addr", config.rf_addr_bits)

    mine = valid & command.addresses(unit_id)
    bcast, mac, rdacc = (mine & command.is_op(op) for op in (BCAST, MAC, RDACC))
    reg, acc, part = command["reg"], command["acc"], command["part"]

    grf = m.memory("grf", _pow2(config.grf), config.column_bits)
    accumulators = m.memory("accumulators", _pow2(config.accs), config.acc_bits)
    grf.write(reg, data_in, bcast)
    inputs = grf.read(reg)
    current = accumulators.read(acc)

    sums = []
    for x, w, old in zip(_lanes(inputs, ELEMENT), _lanes(column, ELEMENT), _lanes(current, LANE)):
        product = (x.sext(2 * ELEMENT) * w.sext(2 * ELEMENT)).sext(LANE)
        sums.append(m.mux(command["first"], product, old + product))
    accumulators.write(acc, m.concat(*reversed(sums)), mac)

    out_valid = m.reg("out_valid", 1)
    out_data = m.reg("out_data", config.column_bits)
    out_valid.set(rdacc)
    out_data.set(m.select(part, _lanes(current, config.column_bits)), when=rdacc)

    error = m.reg("error_flag", 1)
    bad = m.any_of([valid & command.word[RESERVED:].any(), bcast & reg.uge(config.grf),
                    mac & (reg.uge(config.grf) | acc.uge(config.accs)),
                    rdacc & (acc.uge(config.accs) | part.uge(config.parts))])
    error.set(1, when=bad)

    rf_index = rf_addr[0:config.rf_addr_bits - 1]
    grf_word = _word32(m, grf.read(rf_index >> _log2(config.column_bits // 32)),
                       rf_index[0:_log2(config.column_bits // 32)])
    acc_word = _word32(m, accumulators.read(rf_index >> _log2(config.acc_bits // 32)),
                       rf_index[0:_log2(config.acc_bits // 32)])
    m.output("out_valid", out_valid.q)
    m.output("out_data", out_data.q)
    m.output("rf_data", m.mux(rf_addr[config.rf_addr_bits - 1], acc_word, grf_word))
    m.output("error", error.q)
    _bank_controls(m, config, command, valid, mine)
    return m


def _bank_controls(m: ModuleBuilder, config: RtlConfig, command: Command, valid: Signal, mine: Signal) -> None:
    """The decoder's outputs to the unit's banks: which banks activate or
    precharge, a refresh, a column access (MAC or RD, or WR) and its address."""
    bank = command["bank"]
    targeted = [mine & (bank.eq(ALL) | bank.eq(b)) for b in range(config.banks_per_unit)]
    for name, op in (("bank_act", ACT), ("bank_pre", PRE)):
        m.output(name, m.concat(*reversed([t & command.is_op(op) for t in targeted])))
    m.output("bank_ref", valid & command.is_op(REF))
    m.output("bank_read", mine & (command.is_op(MAC) | command.is_op(RD)))
    m.output("bank_write", mine & command.is_op(WR))
    m.output("bank_to_host", mine & command.is_op(RD))
    m.output("bank_index", bank)
    m.output("bank_row", command["row"])
    m.output("bank_col", command["col"])


class Instance:
    """An `hw.instance` of another module. Its outputs are signals by name;
    an input may be connected after the instance is built (`connect`), for
    values computed from its own outputs, as a register's next value is."""

    def __init__(self, m: ModuleBuilder, name: str, module: str, inputs: dict[str, Signal], outputs: dict[str, int]):
        self.names = list(inputs)
        self.op = hw.InstanceOp(name, FlatSymbolRefAttr(module), [(k, v.value) for k, v in inputs.items()],
                                [(k, IntegerType(width)) for k, width in outputs.items()])
        m.block.add_op(self.op)
        self.outputs = {k: Signal(m, result) for k, result in zip(outputs, self.op.results)}

    def __getitem__(self, name: str) -> Signal:
        return self.outputs[name]

    def connect(self, name: str, value: Signal) -> None:
        self.op.operands[self.names.index(name)] = value.value


class Banks:
    """The behavioural model of a unit's banks, driven by the unit's decoder:
    rows in a memory, an open-row register per bank, and the column addressed."""

    def __init__(self, m: ModuleBuilder, config: RtlConfig, controls: dict[str, Signal]):
        bank_bits, row_bits = _log2(config.banks_per_unit), _log2(config.rows)
        self.memory: Memory = m.memory("banks", config.banks_per_unit * config.rows * config.row_columns,
                                       config.column_bits, init_file=BANKS_FILE)
        opened = [m.reg(f"bank{b}_open", 1) for b in range(config.banks_per_unit)]
        rows = [m.reg(f"bank{b}_row", 20) for b in range(config.banks_per_unit)]
        bank, row, col = controls["bank_index"], controls["bank_row"], controls["bank_col"]
        faults = []
        for b in range(config.banks_per_unit):
            act, pre = controls["bank_act"][b], controls["bank_pre"][b]
            faults.append(act & (opened[b].q | row.uge(config.rows)))
            opened[b].set(1, when=act)
            opened[b].set(0, when=pre)
            rows[b].set(row, when=act)
        faults.append(controls["bank_ref"] & m.any_of(r.q for r in opened))

        access = controls["bank_read"] | controls["bank_write"]
        index = bank[0:max(1, bank_bits)]
        is_open = m.select(index, [r.q for r in opened])
        open_row = m.select(index, [r.q for r in rows])
        faults.append(access & (bank.uge(config.banks_per_unit) | ~is_open | open_row.ne(row)
                                | col.uge(config.row_columns)))
        parts = [open_row[0:row_bits], col[0:_log2(config.row_columns)]]
        if bank_bits:
            parts.insert(0, index)
        self.address = m.concat(*parts)
        self.column = self.memory.read(self.address)
        self.faults = faults


def _unit_outputs(config: RtlConfig) -> dict[str, int]:
    """`pim_unit`'s outputs and their widths."""
    return {"out_valid": 1, "out_data": config.column_bits, "rf_data": 32, "error": 1,
            "bank_act": config.banks_per_unit, "bank_pre": config.banks_per_unit, "bank_ref": 1, "bank_read": 1,
            "bank_write": 1, "bank_to_host": 1, "bank_index": 8, "bank_row": 20, "bank_col": 8}


def build_sim(config: RtlConfig) -> ModuleBuilder:
    """`pim_bank_sim`: trace replay, host words, behavioural banks, one `pim_unit`, the log."""
    m = ModuleBuilder(TOP)
    trace = m.memory("trace", config.trace_depth, CYCLE_BITS + WORD, init_file=COMMANDS_FILE)
    host_words = m.memory("host_words", config.data_depth, config.column_bits, init_file=HOST_WORDS_FILE)
    log = m.memory("log", config.log_depth, config.column_bits)
    unit_id = m.memory("unit_number", 2, 8, init_file=UNIT_FILE).read(m.const(0, 1))
    debug = m.input("dbg_addr", DEBUG_BITS)

    cycle = m.reg("cycle", CYCLE_BITS)
    pc = m.reg("pc", _log2(config.trace_depth))
    data_pointer = m.reg("data_pointer", _log2(config.data_depth))
    log_count = m.reg("log_count", bits_for(config.log_depth))
    finished = m.reg("finished", 1)
    entry = trace.read(pc.q)
    command = Command(entry[0:WORD])
    at_end = command.is_op(END)
    issue = ~finished.q & ~at_end & cycle.q.uge(entry[WORD:])
    cycle.set(cycle.q + 1)
    pc.set(pc.q + 1, when=issue)
    finished.set(1, when=at_end)

    data_word = host_words.read(data_pointer.q)
    data_pointer.set(data_pointer.q + 1, when=issue & (command.is_op(BCAST) | command.is_op(WR)))
    unit = Instance(m, "unit", UNIT, {"clk": m.clk, "rst": m.rst, "unit_id": unit_id, "cmd_valid": issue,
                                      "cmd": command.word, "data_in": data_word,
                                      "column": m.const(0, config.column_bits),
                                      "rf_addr": debug[0:config.rf_addr_bits]}, _unit_outputs(config))
    banks = Banks(m, config, unit.outputs)
    unit.connect("column", banks.column)
    banks.memory.write(banks.address, data_word, unit["bank_write"])

    read_valid = m.reg("read_valid", 1)
    read_data = m.reg("read_data", config.column_bits)
    read_valid.set(unit["bank_to_host"])
    read_data.set(banks.column, when=unit["bank_to_host"])
    returned = unit["out_valid"] | read_valid.q
    log.write(log_count.q, m.mux(read_valid.q, read_data.q, unit["out_data"]), returned)
    log_count.set(log_count.q + 1, when=returned)

    error = m.reg("error_flag", 1)
    overflow = returned & log_count.q.uge(config.log_depth)
    error.set(1, when=m.any_of([*banks.faults, overflow, unit["error"]]))

    per_column = _log2(config.column_bits // 32)
    log_word = _word32(m, log.read(debug[per_column:] - (config.log_base >> per_column)), debug[0:per_column])
    m.output("done", finished.q)
    m.output("error", error.q)
    m.output("outputs", log_count.q)
    m.output("dbg_data", m.mux(debug.ult(config.log_base), unit["rf_data"], log_word))
    return m
