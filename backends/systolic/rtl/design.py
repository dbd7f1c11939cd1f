"""The systolic accelerator as a netlist: sequencer, R x C weight-stationary
array, DMA engine, output unit, scratchpads and DRAM.

One module, `systolic_top`, built with `backends.rtl.netlist`. It executes
the binary program of `isa.py` against a DRAM memory, and follows the
simulator's timing model cycle for cycle (see `simulator.py`):

- *Sequencer*: one instruction per cycle from `pc`. `view`s load view
  registers; array instructions wait for the array to be idle and start it;
  `dma.*` and `post` enter their unit's queue with the number of array
  instructions issued so far, which the unit waits to see completed; `wait`
  holds until its tag is neither pending nor in the future; `halt` waits for
  every unit, then raises `done` and latches the cycle count.
- *Array*: `preload` shifts the stationary tile in from the top, one row per
  cycle (R cycles); `stream` feeds one row of the left operand per cycle
  into skewed row inputs; partial sums flow down and leave the bottom of
  column j for stream row s in pipeline cycle s + R - 1 + j. De-skewing
  registers hold column j C - 1 - j cycles more, so row s of every column
  is written (or added) into the drain view in cycle s + R + C - 2, the
  drain's last cycle for the last row. A read-ahead unit finds the drain
  instruction and its view while the stream runs; until it has, the first
  result would have nowhere to go, so the array holds.
- *DMA*: `bandwidth` byte lanes per cycle along one row of the transfer;
  the tag completes `latency` cycles after the last beat.
- *Output unit*: up to C lanes per cycle along one row of the views, or one
  column when the output view is transposed: bias, relu, wrap or requantize.

Every memory is block RAM with synchronous reads (`backends.rtl.banked`), so
each client addresses its data a cycle ahead: the sequencer fetches at the
next `pc`, the array reads the row it consumes next cycle (and, idle, the
first row of the view it may start next), the DMA engine stores a cycle
after it reads, and the output unit three cycles after (it sums, scales,
then rounds and clamps). Each client reads a run of consecutive
elements per cycle, from a copy of its own where clients would share a
port: the ifmap scratchpad has one copy per array row (an im2col gather
reads one byte anywhere from each), the filter scratchpad one for the
preload and one for the bias, and the ofmap scratchpad is two memories,
the accumulators (written by drains; copies for the drain's accumulate and
for the output unit) and the outputs (written by the output unit, stored
by the DMA engine). `program.check_program` proves a program keeps to
these roles and that no access meets itself in a bank.
"""

from __future__ import annotations

from dataclasses import dataclass

from backends.rtl.banked import Access, Banked, BankLayout, banks_for
from backends.rtl.netlist import Backedge, ModuleBuilder, Signal, bits_for
from backends.systolic import isa
from backends.systolic.rtl.decode import Fields, SelectedFields, is_op, used_bits
from backends.systolic.simulator import QUEUE_DEPTH

TOP = "systolic_top"
PROGRAM_FILE = "program.hex"
TAG_BITS = 6  # tags are looked up modulo 64; `check_program` rules out aliasing
COUNT_BITS = 32  # array-instruction counters
CYCLE_BITS = 32
ADDRESS_BITS = 32
POST_WRITE_DELAY = 3  # cycles from an output-unit read to the write of its result
SPADS = ("ifmap", "filter", "ofmap")
WORD = 256


@dataclass(frozen=True)
class RtlConfig:
    """The hardware parameters the Verilog is generated for."""

    rows: int
    cols: int
    spad_bytes: tuple[int, int, int]  # ifmap, filter, ofmap
    dram_bytes: int
    program_words: int
    bandwidth: int  # DRAM bytes per cycle
    latency: int  # DRAM cycles

    @property
    def dram_address_bits(self) -> int:
        return max(1, (self.dram_bytes - 1).bit_length())

    @property
    def layouts(self) -> dict[str, BankLayout]:
        """Each memory's banks: DMA beats are runs of `bandwidth` bytes; the
        array and the output unit move runs of C bytes or C aligned words.
        The ofmap scratchpad is two memories, accumulators and outputs."""
        beat, C = self.bandwidth, self.cols
        ifmap, filter_, ofmap = self.spad_bytes
        return {"dram": BankLayout("dram", self.dram_bytes, banks_for(beat)),
                "ifmap": BankLayout("ifmap", ifmap, banks_for(beat)),
                "filter": BankLayout("filter", filter_, banks_for(beat, C, words=C)),
                "acc": BankLayout("acc", ofmap, banks_for(words=C)),
                "out": BankLayout("out", ofmap, banks_for(beat, C, words=C))}


def power_of_two_at_least(value: int) -> int:
    return 1 << max(1, (value - 1).bit_length())


def times(m: ModuleBuilder, value: Signal, factor: int) -> Signal:
    """`value * factor` for a small constant, as shifted adds rather than a multiplier."""
    terms = [value << bit for bit in range(factor.bit_length()) if factor >> bit & 1]
    total = m.const(0, value.width)
    for term in terms:
        total = total + term
    return total


def word_address(offset: Signal, index: Signal) -> Signal:
    """The byte address of i32 element `index` of a view at byte `offset` (word-aligned)."""
    return (offset[2:].zext(ADDRESS_BITS) + index) << 2


class Queue:
    """A FIFO of `width`-bit requests in a memory, QUEUE_DEPTH deep."""

    def __init__(self, m: ModuleBuilder, name: str, width: int):
        self.m = m
        pointer_bits = bits_for(QUEUE_DEPTH)  # one more bit than the index: full and empty differ
        self.memory = m.memory(f"{name}_queue", QUEUE_DEPTH, width)
        self.head_pointer = m.reg(f"{name}_head", pointer_bits)
        self.tail_pointer = m.reg(f"{name}_tail", pointer_bits)
        count = self.tail_pointer.q - self.head_pointer.q
        self.full = count.eq(QUEUE_DEPTH)
        self.empty = count.eq(0)
        self.head = self.memory.read(self.head_pointer.q[0:self.memory.address_bits])

    def push(self, value: Signal, when: Signal) -> None:
        self.memory.write(self.tail_pointer.q[0:self.memory.address_bits], value, when)
        self.tail_pointer.set(self.tail_pointer.q + 1, when=when)

    def pop(self, when: Signal) -> None:
        self.head_pointer.set(self.head_pointer.q + 1, when=when)


class Walk:
    """A unit's position in a rows x cols view, one line (a row, or a column
    for a transposed walk) of up to `lanes` elements per cycle, without
    multipliers: per address stream it keeps where its line starts and where
    the current group of lanes starts, moved by the stream's strides."""

    def __init__(self, m: ModuleBuilder, name: str, lanes: int, streams: int):
        self.m, self.lanes = m, lanes
        self.outer = m.reg(f"{name}_outer", 16)
        self.inner = m.reg(f"{name}_inner", 16)
        self.line_bases = [m.reg(f"{name}_line{k}", ADDRESS_BITS) for k in range(streams)]
        self.group_bases = [m.reg(f"{name}_group{k}", ADDRESS_BITS) for k in range(streams)]

    def step(self, start: Signal, moving: Signal, inner_extent: Signal,
             strides: list[tuple[Signal, Signal]]) -> tuple[Signal, Signal, list[Signal], Signal]:
        """(outer index, first inner index, each stream's group start) this
        cycle, and whether this group ends its line; the registers move on when
        `moving`. `strides` are (outer, inner) per stream."""
        m, zero = self.m, self.m.const(0, ADDRESS_BITS)
        outer = m.mux(start, m.const(0, 16), self.outer.q)
        inner = m.mux(start, m.const(0, 16), self.inner.q)
        line_bases = [m.mux(start, zero, base.q) for base in self.line_bases]
        group_bases = [m.mux(start, zero, base.q) for base in self.group_bases]
        line_ends = (inner.zext(17) + self.lanes).uge(inner_extent.zext(17))
        self.outer.set(m.mux(line_ends, outer + 1, outer), when=moving)
        self.inner.set(m.mux(line_ends, m.const(0, 16), inner + self.lanes), when=moving)
        for line, group, line_reg, group_reg, (outer_stride, inner_stride) in zip(
                line_bases, group_bases, self.line_bases, self.group_bases, strides):
            next_line = line + outer_stride
            line_reg.set(m.mux(line_ends, next_line, line), when=moving)
            group_reg.set(m.mux(line_ends, next_line, group + times(m, inner_stride, self.lanes)), when=moving)
        return outer, inner, group_bases, line_ends


def build(config: RtlConfig) -> ModuleBuilder:
    """The accelerator's top module."""
    return _Builder(config).module


class _Builder:
    def __init__(self, config: RtlConfig):
        self.config = config
        m = self.m = self.module = ModuleBuilder(TOP)
        R, C = config.rows, config.cols
        self.cycle = m.reg("cycle", CYCLE_BITS)
        self.cycle.set(self.cycle.q + 1)

        program_bits = max(1, (config.program_words - 1).bit_length())
        # Two copies: the sequencer's fetch and the drain read-ahead.
        self.program = [m.memory(f"program_{role}", config.program_words, WORD, mask=WORD // 8,
                                 init_file=PROGRAM_FILE) for role in ("fetch", "scout")]
        self.program_loader(program_bits)
        layouts = config.layouts
        self.dram = Banked(m, layouts["dram"], init=True)
        self.ifmap = Banked(m, layouts["ifmap"], copies=R)  # one per array row
        self.filter = Banked(m, layouts["filter"], copies=2)  # preload, bias
        self.acc = Banked(m, layouts["acc"], copies=2)  # drain, output unit
        self.out = Banked(m, layouts["out"])
        self.pc = m.reg("pc", program_bits)
        self.fetch_address = Backedge(m, program_bits)
        self.word = m.delay(self.program[0].read(self.fetch_address.signal)).named("instruction")

        # Tags: pending until their transfer or post finishes, then done at a cycle.
        self.pending = m.reg("pending", 1 << TAG_BITS)
        self.done_times = m.memory("done_time", 1 << TAG_BITS, CYCLE_BITS)
        self.last_done = m.reg("last_done", CYCLE_BITS)
        self.issued = m.reg("issued", COUNT_BITS)  # array instructions issued ...
        self.completed = m.reg("completed", COUNT_BITS)  # ... and finished
        self.pending_clears: list[tuple[Signal, Signal]] = []
        self.faults: list[Signal] = []  # conditions that stop the machine with `error`
        self.done_updates: list[tuple[Signal, Signal, Signal]] = []  # (when, tag, done cycle)

        self.views = {slot: m.reg(f"view{slot}", WORD) for slot in
                      (isa.SLOT_PRELOAD, isa.SLOT_LEFT, isa.SLOT_DRAIN, isa.SLOT_ACC, isa.SLOT_BIAS, isa.SLOT_OUT)}

        self.acc_writes: list[tuple[Access, Signal]] = []  # drains, and DMA loads into the ofmap
        self.sequencer()
        self.array(R, C)
        self.dma_engine()
        self.output_unit(C)
        self.acc.write(self.acc_writes)
        self.tags()

    def program_loader(self, program_bits: int) -> None:
        """A byte-wide write port into the program memory (`load_en`, `load_addr` =
        word * 32 + byte, `load_data`): a host can load programs without rebuilding
        the design, and synthesis cannot fold the program memory's contents into
        the decoder."""
        m = self.m
        enable = m.input("load_en", 1)
        address = m.input("load_addr", program_bits + 5)
        byte = m.input("load_data", 8)
        lane = m.const(1, WORD // 8) << address[0:5].zext(WORD // 8)
        for memory in self.program:
            memory.write(address[5:], m.concat(*[byte] * (WORD // 8)), enable, lane)

    # -- sequencer ---------------------------------------------------------------------

    def sequencer(self) -> None:
        """The sequencer's state; its decisions (`tags`) need every unit built first."""
        m, word = self.m, self.word
        self.halted = m.reg("halted", 1)
        self.error = m.reg("error_flag", 1)
        self.end_cycle = m.reg("end_cycle", CYCLE_BITS)
        self.running = ~self.halted.q
        self.loads_view = self.running & (is_op(word, "view") | is_op(word, "view.im2col"))

    def view_next(self, slot: int) -> SelectedFields:
        """The fields of what view register `slot` holds next cycle."""
        return SelectedFields(self.loads_view & Fields(self.word, "view")["slot"].eq(slot),
                              Fields(self.word, "view"), Fields(self.views[slot].q, "view"))

    def _tag_ready(self, tag: Signal) -> Signal:
        index = tag[0:TAG_BITS]
        pending = (self.pending.q & (self.m.const(1, 1 << TAG_BITS) << index.zext(1 << TAG_BITS))).any()
        return ~pending & self.cycle.q.uge(self.done_times.read(index))

    # -- the array -------------------------------------------------------------------------

    def array(self, R: int, C: int) -> None:
        m, word, running = self.m, self.word, self.running
        op = m.reg("array_op", 2)  # 0 idle, 1 preload, 2 stream, 3 drain
        remaining = m.reg("array_remaining", 17)
        tick = m.reg("array_tick", 17)
        stream_rows = m.reg("stream_rows", 16)
        idle = op.q.eq(0)
        self.array_idle = idle

        is_preload, is_stream, is_drain = (is_op(word, name) for name in ("preload", "stream", "drain"))
        array_instruction = is_preload | is_stream | is_drain
        issue = running & array_instruction & idle
        new_op = m.mux(is_preload, 1, m.mux(is_stream, 2, 3)).zext(2)
        left_view = self.views[isa.SLOT_LEFT].q
        op_now = m.mux(issue, new_op, op.q)
        matrix_rows = Fields(left_view, "view")["rows"]
        duration = m.mux(is_preload, m.const(R, 17),
                         m.mux(is_stream, matrix_rows.zext(17), m.const(R + C - 2, 17)))
        remaining_now = m.mux(issue, duration, remaining.q)
        tick_now = m.mux(issue & is_stream, m.const(0, 17), tick.q)
        rows_now = m.mux(issue & is_stream, matrix_rows, stream_rows.q)

        # Read-ahead for the drain: from the instruction after the stream, one per cycle.
        scout_pc = m.reg("scout_pc", self.pc.width)
        scouting = m.reg("scouting", 1)
        drain_known = m.reg("drain_known", 1)
        drain_accumulate = m.reg("drain_accumulate", 1)
        drain_view = m.reg("drain_view", WORD)
        start_scout = issue & is_stream
        scout_pc_next = m.mux(start_scout, self.pc.q + 1, m.mux(scouting.q, scout_pc.q + 1, scout_pc.q))
        scout_word = m.delay(self.program[1].read(scout_pc_next))
        scout_view3 = scouting.q & is_op(scout_word, "view") & Fields(scout_word, "view")["slot"].eq(isa.SLOT_DRAIN)
        scout_drain = scouting.q & is_op(scout_word, "drain")
        known_now = drain_known.q | scout_drain
        accumulate_now = m.mux(drain_known.q, drain_accumulate.q, Fields(scout_word, "drain")["accumulate"])
        scout_pc.set(scout_pc_next)
        scouting.set(0, when=scout_drain)
        scouting.set(1, when=start_scout)
        drain_known.set(1, when=scout_drain)
        drain_known.set(0, when=start_scout)
        drain_accumulate.set(Fields(scout_word, "drain")["accumulate"], when=scout_drain)
        drain_view.set(scout_word, when=scout_view3)
        drain_view.set(self.views[isa.SLOT_DRAIN].q, when=start_scout)

        pipelined = op_now.eq(2) | op_now.eq(3)
        frozen = op_now.eq(2) & tick_now.uge(R - 1) & ~known_now
        pipe_tick = pipelined & ~frozen
        preload_tick = op_now.eq(1)
        advance = pipe_tick | preload_tick
        last = advance & remaining_now.eq(1)

        op_next = m.mux(last, m.const(0, 2), op_now)
        remaining_next = m.mux(advance, remaining_now - 1, remaining_now)
        tick_next = m.mux(pipe_tick, tick_now + 1, tick_now)
        op.set(op_next)
        remaining.set(remaining_next)
        tick.set(tick_next)
        stream_rows.set(rows_now)
        self.issued.set(self.issued.q + 1, when=issue)
        self.completed.set(self.completed.q + 1, when=last)
        self.array_issue = issue

        # Stationary tile: shifts down one row per preload cycle, last row first. The
        # row shifted in next cycle is read now: row R - 1 of the view a preload
        # starting next cycle would use, then, while preloading, the row above the
        # last one, its address stepped down from a register.
        preloading_next = op_next.eq(1)
        first = self.view_next(isa.SLOT_PRELOAD)
        row_stride = self.held("preload_row_stride", preloading_next, first["row_stride"].zext(ADDRESS_BITS))
        rows = self.held("preload_rows", preloading_next, first["rows"])
        fetch_row_reg = m.reg("preload_row", 16)
        fetch_row = m.mux(preloading_next, fetch_row_reg.q - 1, m.const(R - 1, 16))
        fetch_row_reg.set(fetch_row)
        base_reg = m.reg("preload_base", ADDRESS_BITS)
        first_base = first["offset"].zext(ADDRESS_BITS) + times(m, first["row_stride"].zext(ADDRESS_BITS), R - 1)
        row_base = m.mux(preloading_next, base_reg.q - row_stride, first_base)
        base_reg.set(row_base)
        one = m.const(1, 1)
        col_stride = first["col_stride"].zext(ADDRESS_BITS)
        lane_offsets = [self.held(f"preload_lane{j}", preloading_next, times(m, col_stride, j)) for j in range(C)]
        columns = self.filter.read(0, [Access(row_base + offset, one) for offset in lane_offsets])
        weights = [[m.reg(f"w_{i}_{j}", 8) for j in range(C)] for i in range(R)]
        for j in range(C):
            in_view = self.held(f"preload_in_view{j}", preloading_next, first["cols"].ugt(j))
            valid = m.delay(fetch_row.ult(rows) & in_view)
            weights[0][j].set(m.mux(valid, columns[j][0:8], 0), when=preload_tick)
            for i in range(1, R):
                weights[i][j].set(weights[i - 1][j].q, when=preload_tick)

        # Left operand: row `tick` of the stream view, one element per array row, read a
        # cycle ahead like the preload's.
        feeding = op_now.eq(2)
        streaming_next = op_next.eq(2)
        left = self.stream_row(self.view_next(isa.SLOT_LEFT), streaming_next, pipe_tick, R)
        inputs = [m.mux(feeding & tick_now.ult(rows_now.zext(17)) & valid, value, 0) for value, valid in left]
        skewed = []
        for i, value in enumerate(inputs):
            for depth in range(i):
                stage = m.reg(f"skew_{i}_{depth}", 8)
                stage.set(value, when=pipe_tick)
                value = stage.q
            skewed.append(value)

        # Processing elements: a moves right, partial sums move down.
        sums: list[Signal] = [m.const(0, 32)] * C
        for i in range(R):
            a_in = skewed[i]
            new_sums = []
            for j in range(C):
                product = (a_in.sext(16) * weights[i][j].q.sext(16)).sext(32)
                total = sums[j] + product
                if i < R - 1:
                    psum = m.reg(f"p_{i}_{j}", 32)
                    psum.set(total, when=pipe_tick)
                    new_sums.append(psum.q)
                else:
                    new_sums.append(total)
                if j < C - 1:
                    a_reg = m.reg(f"a_{i}_{j}", 8)
                    a_reg.set(a_in, when=pipe_tick)
                    a_in = a_reg.q
            sums = new_sums
        self.drain(C, R + C - 2, sums, drain_view.q, tick_now, tick_next, rows_now, pipe_tick, accumulate_now)

    def drain(self, C: int, depth: int, sums: list[Signal], view_word: Signal, tick_now: Signal,
              tick_next: Signal, rows_now: Signal, pipe_tick: Signal, accumulate: Signal) -> None:
        """De-skew the array's outputs and write row tick - `depth` of the drain
        view each cycle, adding what is there when the drain accumulates (read
        the cycle before, for the row written next)."""
        m = self.m
        aligned = []
        for j, value in enumerate(sums):
            for stage_index in range(C - 1 - j):
                stage = m.reg(f"deskew_{j}_{stage_index}", 32)
                stage.set(value, when=pipe_tick)
                value = stage.q
            aligned.append(value)
        target = Fields(view_word, "view")

        def lanes(tick: Signal, when: Signal) -> list[Access]:
            row = tick.zext(18) - depth
            valid = when & ~row[17] & row[0:17].ult(rows_now.zext(17))
            base = row[0:17].zext(ADDRESS_BITS) * target["row_stride"].zext(ADDRESS_BITS)
            col_stride = target["col_stride"].zext(ADDRESS_BITS)
            word = m.const(1, 1)
            return [Access(word_address(target["offset"], base + times(m, col_stride, j)),
                           valid & target["cols"].ugt(j), word) for j in range(C)]

        old = self.acc.read(0, lanes(tick_next, m.const(1, 1)))
        writes = lanes(tick_now, pipe_tick)
        self.acc_writes += [(lane, m.mux(accumulate, previous + value, value))
                            for lane, previous, value in zip(writes, old, aligned)]

    def held(self, name: str, busy: Signal, value: Signal) -> Signal:
        """`value` while a unit is not `busy`, and what it was when the unit
        started while it is: a view's field, read as the unit starts and kept
        in a register for the rest of the instruction."""
        register = self.m.reg(name, value.width)
        now = self.m.mux(busy, register.q, value)
        register.set(now)
        return now

    def stream_row(self, first: Fields, streaming_next: Signal, pipe_tick: Signal,
                   lanes: int) -> list[tuple[Signal, Signal]]:
        """(value, in bounds) next cycle of each element of the row of the left
        operand read now: row 0 of `first`, the view a stream starting next
        cycle would use, or, while streaming, the row after the last one read
        once the array ticks. Only row 0 is computed from the view's fields
        (window position of each lane, output pixel); later rows step
        registers by the view's strides, so the stream's addresses need no
        multiplier and do not wait for the decoder's choice of row."""
        m = self.m
        im2col, is_im2col = first.retyped("view.im2col"), first.is_op("view.im2col")
        bits = ADDRESS_BITS

        # Row 0 of `first`: (row_h, row_w) = (oh * stride_h - row0, ow * stride_w - col0) is
        # its output pixel's window corner, `base` = offset + row_h * band_w the byte of
        # the corner's image row; a matrix view has row_w = 0 and base = offset.
        band_w = im2col["band_w"].zext(bits)
        row_h = im2col["oh0"].zext(bits) * im2col["stride_h"].zext(bits) - im2col["row0"].zext(bits)
        row_w = im2col["ow0"].zext(bits) * im2col["stride_w"].zext(bits) - im2col["col0"].zext(bits)
        offset = first["offset"].zext(bits)
        first_row = {
            "base": m.mux(is_im2col, offset + row_h * band_w, offset),
            "row_h": row_h,
            "row_w": m.mux(is_im2col, row_w, m.const(0, bits)),
            "ow": m.mux(is_im2col, im2col["ow0"].zext(20), m.const(0, 20)),
        }
        # How a row steps to the next: along the output row by stride_w, and at its
        # end back to col0 on the next row (a matrix view: always the next row).
        first_step = {
            "out_w": m.mux(is_im2col, im2col["out_w"].zext(20), m.const(1, 20)),
            "stride_w": im2col["stride_w"].zext(bits),
            "stride_h": im2col["stride_h"].zext(bits),
            "line": m.mux(is_im2col, im2col["stride_h"].zext(bits) * band_w, first["row_stride"].zext(bits)),
            "row_w_start": m.mux(is_im2col, m.const(0, bits) - im2col["col0"].zext(bits), m.const(0, bits)),
            "band_h": im2col["band_h"].zext(bits),
            "band_w": band_w,
            "pad": im2col["pad_value"],
            "is_im2col": is_im2col,
        }
        first_lanes = self.lane_offsets(first, lanes)

        constants = {name: self.held(f"stream_{name}", streaming_next, value) for name, value in first_step.items()}
        lane_constants = [{name: self.held(f"stream_{name}{j}", streaming_next, value) for name, value in lane.items()}
                          for j, lane in enumerate(first_lanes)]
        row_registers = {name: m.reg(f"stream_{name}", value.width) for name, value in first_row.items()}
        last = {name: register.q for name, register in row_registers.items()}
        wrap = (last["ow"] + 1).eq(constants["out_w"])
        stepped = {
            "base": m.mux(wrap, last["base"] + constants["line"], last["base"]),
            "row_h": m.mux(wrap, last["row_h"] + constants["stride_h"], last["row_h"]),
            "row_w": m.mux(wrap, constants["row_w_start"], last["row_w"] + constants["stride_w"]),
            "ow": m.mux(wrap, m.const(0, 20), last["ow"] + 1),
        }
        row = {name: m.mux(streaming_next, m.mux(pipe_tick, stepped[name], last[name]), first_row[name])
               for name in first_row}
        for name, register in row_registers.items():
            register.set(row[name])

        pad = m.delay(constants["pad"])
        im2col_now = constants["is_im2col"]
        out = []
        for j, lane in enumerate(lane_constants):
            ih, iw = row["row_h"] + lane["kh_offset"], row["row_w"] + lane["kw_offset"]
            inside = (ih.slt(constants["band_h"]) & ih.sge(0) & iw.slt(constants["band_w"]) & iw.sge(0))
            address = row["base"] + row["row_w"] + lane["offset"]
            (value,) = self.ifmap.read(j, [Access(address, m.const(1, 1))])
            padded = m.delay(im2col_now & ~inside)
            in_view = lane["in_view"]
            # As the simulator does, stop on a read past the scratchpad (a view the
            # compiler should never produce).
            outside = in_view & (~im2col_now | inside) & address.uge(self.config.spad_bytes[0])
            self.faults.append(pipe_tick & m.delay(streaming_next & outside))
            out.append((m.mux(padded, pad, value[0:8]), m.delay(in_view)))
        return out

    def lane_offsets(self, view: Fields, lanes: int) -> list[dict[str, Signal]]:
        """Per lane of a row of `view`: its byte offset from the row's start (an
        im2col lane's window element: channel, kernel row and column, stepped
        from the view's (c0, kh0, kw0) one lane at a time), the element's
        (row, column) offset inside the window, and whether the view has it."""
        m = self.m
        bits = ADDRESS_BITS
        im2col, is_im2col = view.retyped("view.im2col"), view.is_op("view.im2col")
        kernel_w, kernel_h = im2col["kernel_w"], im2col["kernel_h"]
        band_w = im2col["band_w"].zext(bits)
        dilation_h, dilation_w = im2col["dilation_h"].zext(bits), im2col["dilation_w"].zext(bits)
        channel_stride = im2col["channel_stride"].zext(bits)
        kh, kw = im2col["kh0"], im2col["kw0"]
        channel_base = im2col["c0"].zext(bits) * channel_stride
        kh_offset, kw_offset = kh.zext(bits) * dilation_h, kw.zext(bits) * dilation_w
        kh_linear = kh_offset * band_w
        col_stride = view["col_stride"].zext(bits)
        out = []
        for j in range(lanes):
            if j:
                next_kw = kw + 1
                wrap_w = next_kw.eq(kernel_w)
                next_kh = m.mux(wrap_w, kh + 1, kh)
                wrap_h = wrap_w & next_kh.eq(kernel_h)
                kw, kw_offset = m.mux(wrap_w, 0, next_kw), m.mux(wrap_w, m.const(0, bits), kw_offset + dilation_w)
                kh = m.mux(wrap_h, 0, next_kh)
                kh_offset = m.mux(wrap_h, m.const(0, bits), m.mux(wrap_w, kh_offset + dilation_h, kh_offset))
                kh_linear = m.mux(wrap_h, m.const(0, bits), m.mux(wrap_w, kh_linear + dilation_h * band_w, kh_linear))
                channel_base = m.mux(wrap_h, channel_base + channel_stride, channel_base)
            out.append({"offset": m.mux(is_im2col, channel_base + kh_linear + kw_offset, times(m, col_stride, j)),
                        "kh_offset": kh_offset, "kw_offset": kw_offset, "in_view": view["cols"].ugt(j)})
        return out

    # -- DMA -------------------------------------------------------------------------------

    def dma_engine(self) -> None:
        m, word, config = self.m, self.word, self.config
        fields_bits = used_bits("dma.load")
        queue = Queue(m, "dma", fields_bits + 1 + COUNT_BITS)
        is_load, is_store = is_op(word, "dma.load"), is_op(word, "dma.store")
        push = self.running & (is_load | is_store) & ~queue.full
        queue.push(m.concat(self.issued.q, is_load, word[0:fields_bits]), push)
        self.dma_issue, self.dma_queue, self.dma_instruction = push, queue, is_load | is_store
        self.pending_sets = [(push, Fields(word, "dma.load")["tag"])]

        after = queue.head[fields_bits + 1:]
        active = m.reg("dma_active", 1)
        start = ~active.q & ~queue.empty & self.completed.q.uge(after)
        queue.pop(start)
        params = m.reg("dma_params", fields_bits + 1)
        current = m.mux(start, queue.head[0:fields_bits + 1], params.q)
        params.set(current)
        f = Fields(current, "dma.load")
        loading = current[fields_bits]
        moving = active.q | start
        # Position: the row, and the byte of the row this beat starts at.
        row = m.reg("dma_row", 16)
        col = m.reg("dma_col", 24)
        dram_row = m.reg("dma_dram_row", ADDRESS_BITS)
        spad_row = m.reg("dma_spad_row", ADDRESS_BITS)
        row_now = m.mux(start, m.const(0, 16), row.q)
        col_now = m.mux(start, m.const(0, 24), col.q)
        dram_now = m.mux(start, f["dram_addr"].zext(ADDRESS_BITS), dram_row.q)
        spad_now = m.mux(start, f["spad_addr"].zext(ADDRESS_BITS), spad_row.q)
        row_ends = (col_now.zext(25) + config.bandwidth).uge(f["row_bytes"].zext(25))
        finished = moving & row_ends & (row_now + 1).uge(f["rows"])
        row.set(m.mux(row_ends, row_now + 1, row_now), when=moving)
        col.set(m.mux(row_ends, m.const(0, 24), col_now + config.bandwidth), when=moving)
        dram_row.set(m.mux(row_ends, dram_now + f["dram_stride"].zext(ADDRESS_BITS), dram_now), when=moving)
        spad_row.set(m.mux(row_ends, spad_now + f["spad_stride"].zext(ADDRESS_BITS), spad_now), when=moving)
        active.set(moving & ~finished)

        beat = []
        for k in range(config.bandwidth):
            offset = col_now.zext(ADDRESS_BITS) + k
            beat.append((moving & offset.ult(f["row_bytes"].zext(ADDRESS_BITS)), dram_now + offset, spad_now + offset))
        # A beat reads in this cycle and writes what it read in the next.
        debug = self.halted.q
        debug_address = m.input("dbg_addr", config.dram_address_bits).zext(ADDRESS_BITS)
        from_dram = self.dram.read(0, [Access(m.mux(debug, debug_address, dram), m.mux(debug, int(k == 0), valid & loading))
                                       for k, (valid, dram, _) in enumerate(beat)])
        m.output("dbg_data", from_dram[0][0:8])
        from_spad = self.out.read(0, [Access(spad, valid & ~loading) for valid, _, spad in beat])
        spad_index = m.delay(f["spad"])
        load_delayed, moved = m.delay(loading), [m.delay(valid) for valid, _, _ in beat]
        spad_then = [m.delay(spad) for _, _, spad in beat]
        # A load into the ofmap fills the accumulators; `check_program` keeps the array off meanwhile.
        for index, write in enumerate((self.ifmap.write, self.filter.write, self.acc_writes.extend)):
            chosen = load_delayed & spad_index.eq(index)
            write([(Access(address, valid & chosen), value)
                   for address, valid, value in zip(spad_then, moved, from_dram)])
        self.dram.write([(Access(m.delay(dram), valid & ~load_delayed), value)
                         for (_, dram, _), valid, value in zip(beat, moved, from_spad)])
        self.pending_clears.append((finished, f["tag"]))
        self.done_updates.append((finished, f["tag"], self.cycle.q + 1 + config.latency))
        self.dma_idle = ~active.q & queue.empty

    # -- output unit -------------------------------------------------------------------------

    def output_unit(self, C: int) -> None:
        m, word = self.m, self.word
        view_bits = used_bits("view")
        post_bits = used_bits("post")
        width = post_bits + 3 * view_bits + COUNT_BITS
        queue = Queue(m, "post", width)
        is_post = is_op(word, "post")
        push = self.running & is_post & ~queue.full
        packed = m.concat(self.issued.q, *(self.views[s].q[0:view_bits]
                                           for s in (isa.SLOT_OUT, isa.SLOT_BIAS, isa.SLOT_ACC)), word[0:post_bits])
        queue.push(packed, push)
        self.post_issue, self.post_queue = push, queue
        self.pending_sets.append((push, Fields(word, "post")["tag"]))

        after = queue.head[width - COUNT_BITS:]
        active = m.reg("post_active", 1)
        start = ~active.q & ~queue.empty & self.completed.q.uge(after)
        queue.pop(start)
        params = m.reg("post_params", width - COUNT_BITS)
        current = m.mux(start, queue.head[0:width - COUNT_BITS], params.q)
        params.set(current)
        post = Fields(current, "post")

        def view_of(index: int) -> Fields:
            low = post_bits + index * view_bits
            return Fields(current[low:low + view_bits], "view")

        acc, bias, out = view_of(0), view_of(1), view_of(2)
        # The simulator's rule: along columns when the output view is transposed.
        by_columns = out["row_stride"].eq(1) & out["col_stride"].ne(1)
        inner_extent = m.mux(by_columns, acc["rows"], acc["cols"])
        outer_extent = m.mux(by_columns, acc["cols"], acc["rows"])
        # (row, column) element strides of the three views; every output row adds the same bias row.
        strides = [(view["row_stride"].zext(ADDRESS_BITS), view["col_stride"].zext(ADDRESS_BITS)) for view in (acc, out)]
        strides.insert(1, (m.const(0, ADDRESS_BITS), bias["col_stride"].zext(ADDRESS_BITS)))
        oriented = [(m.mux(by_columns, col, row), m.mux(by_columns, row, col)) for row, col in strides]
        walk = Walk(m, "post", C, 3)
        moving = active.q | start
        outer, inner, bases, line_ends = walk.step(start, moving, inner_extent, oriented)
        finished = moving & line_ends & (outer + 1).uge(outer_extent)
        active.set(moving & ~finished)

        bias_i32 = bias["dtype"].eq(isa.DTYPES.index("i32"))
        out_i32 = post["out_dtype"].eq(isa.DTYPES.index("i32"))
        word_lane = m.const(1, 1)
        acc_lanes, bias_lanes, out_lanes = [], [], []
        for k in range(C):
            valid = moving & (inner + k).ult(inner_extent)
            acc_index, bias_index, out_index = (base + times(m, inner_stride, k)
                                                for base, (_, inner_stride) in zip(bases, oriented))
            acc_lanes.append(Access(word_address(acc["offset"], acc_index), valid, word_lane))
            bias_lanes.append(Access(bias["offset"].zext(ADDRESS_BITS) + m.mux(bias_i32, bias_index << 2, bias_index),
                                     valid & post["bias"], bias_i32))
            out_lanes.append(Access(out["offset"].zext(ADDRESS_BITS) + m.mux(out_i32, out_index << 2, out_index),
                                    valid, out_i32))
        # A pipeline from the reads to the writes: accumulators and bias arrive next
        # cycle and are summed, then scaled, then rounded, clamped and written, three
        # cycles after the read. The extra two cycles are the distance the output
        # memory has to its only reader: a store of the results is issued after a
        # `wait` for the post's tag (`check_program` insists), so its first read
        # comes three cycles after the post's last.
        values = self.acc.read(1, acc_lanes)
        biases = self.filter.read(1, bias_lanes)
        sums = [m.delay(m.mux(m.delay(post["bias"]), value + bias_value, value))
                for value, bias_value in zip(values, biases)]
        products = [m.delay(self.scale(m.delay(post["multiplier"], 2), value)) for value in sums]
        final_post = {name: m.delay(post[name], POST_WRITE_DELAY)
                      for name in ("mode", "out_dtype", "shift", "zero_point", "relu")}
        out_i32 = final_post["out_dtype"].eq(isa.DTYPES.index("i32"))
        results = []
        for value, product in zip(sums, products):
            converted, floor = self.convert(final_post, m.delay(value), product, out_i32)
            relu_value = m.mux(converted.slt(floor), floor, converted)
            results.append(m.mux(final_post["relu"], relu_value, converted))
        self.out.write([(Access(m.delay(lane.address, POST_WRITE_DELAY), m.delay(lane.enable, POST_WRITE_DELAY),
                                out_i32), result) for lane, result in zip(out_lanes, results)])
        self.pending_clears.append((finished, post["tag"]))
        self.done_updates.append((finished, post["tag"], self.cycle.q + 2))
        self.post_idle = ~active.q & queue.empty

    def scale(self, multiplier: Signal, value: Signal) -> Signal:
        """The signed 64-bit product of `value` (i32) and the requantizer's `multiplier`.
        It is formed as an unsigned 32 x 32 product minus the sign's weight: with
        zero-extended operands synthesis sees a 32 x 32 multiplier (DSP blocks), where
        sign-extended ones would make it a 64 x 32 one in logic."""
        m = self.m
        multiplier = multiplier.zext(64)
        return value.zext(64) * multiplier - m.mux(value[31], multiplier << 32, m.const(0, 64))

    def convert(self, post: dict[str, Signal], value: Signal, product: Signal,
                out_i32: Signal) -> tuple[Signal, Signal]:
        """`value` (i32) in the output type, sign-extended to 32 bits, and relu's
        floor, by the post's fields `post`; `product` is `scale` of it, for
        requantization."""
        m = self.m
        requant = post["mode"].eq(isa.POST_MODES.index("requant"))
        wrapped = m.mux(out_i32, value, value[0:8].sext(32))
        shift = post["shift"].zext(64)
        half = m.const(1, 64) << (shift - 1)
        rounding = m.mux(shift.eq(0), m.const(0, 64), half - product[63].zext(64))
        scaled = (product + rounding).ashr(shift) + post["zero_point"].sext(64)
        low = m.mux(out_i32, m.const(-(1 << 31), 64), m.const(-128, 64))
        high = m.mux(out_i32, m.const((1 << 31) - 1, 64), m.const(127, 64))
        clipped = m.mux(scaled.slt(low), low, m.mux(scaled.sgt(high), high, scaled))[0:32]
        converted = m.mux(requant, clipped, wrapped)
        floor = m.mux(requant, post["zero_point"].sext(32), m.const(0, 32))
        return converted, floor

    # -- tags and the sequencer's decisions --------------------------------------------------

    def tags(self) -> None:
        m, word, running = self.m, self.word, self.running
        tag_space = 1 << TAG_BITS
        pending = self.pending.q
        for when, tag in self.pending_sets:
            pending = m.mux(when, pending | (m.const(1, tag_space) << tag[0:TAG_BITS].zext(tag_space)), pending)
        for when, tag in self.pending_clears:
            pending = m.mux(when, pending & ~(m.const(1, tag_space) << tag[0:TAG_BITS].zext(tag_space)), pending)
        self.pending.set(pending)
        last_done = self.last_done.q
        for when, tag, cycle in self.done_updates:
            self.done_times.write(tag[0:TAG_BITS], cycle, when)
            last_done = m.mux(when & cycle.ugt(last_done), cycle, last_done)
        self.last_done.set(last_done)

        is_wait, is_halt = is_op(word, "wait"), is_op(word, "halt")
        simple = self.loads_view | running & (is_op(word, "nop") | is_op(word, "config") | is_op(word, "layer"))
        wait_ready = running & is_wait & self._tag_ready(Fields(word, "wait")["tag"])
        settled = (self.array_idle & self.dma_idle & self.post_idle & self.cycle.q.uge(self.last_done.q)
                   & self.pending.q.eq(0))
        halt_now = running & is_halt & settled
        known = (is_op(word, "view") | is_op(word, "view.im2col") | is_op(word, "nop") | is_op(word, "config")
                 | is_op(word, "layer") | is_wait | is_halt | self.dma_instruction | is_op(word, "post")
                 | is_op(word, "preload") | is_op(word, "stream") | is_op(word, "drain"))
        stop = running & (~known | m.any_of(self.faults))
        advance = simple | wait_ready | self.array_issue | self.dma_issue | self.post_issue
        pc_next = m.mux(advance, self.pc.q + 1, self.pc.q)
        self.pc.set(pc_next)
        self.fetch_address.resolve(m.mux(m.rst, m.const(0, self.pc.width), pc_next))
        slot = Fields(word, "view")["slot"]
        for index, register in self.views.items():
            register.set(word, when=self.loads_view & slot.eq(index))
        self.halted.set(1, when=halt_now | stop)
        self.error.set(1, when=stop)
        self.end_cycle.set(self.cycle.q, when=halt_now | stop)
        m.output("done", self.halted.q)
        m.output("error", self.error.q)
        m.output("cycles", self.end_cycle.q)
