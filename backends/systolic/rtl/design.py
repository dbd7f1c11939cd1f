"""The systolic accelerator as a netlist: sequencer, R x C weight-stationary
array, DMA engine, output unit, scratchpads and DRAM.

One module, `systolic_top`, built with `backends.rtl.netlist`. It executes
the binary program of `isa.py` from a program memory (`program.hex`) against
a DRAM memory (`dram.hex`), and follows the simulator's timing model
cycle for cycle (see `simulator.py`):

- *Sequencer*: one instruction per cycle from `pc`. `view`s load view
  registers; array instructions wait for the array to be idle and start it;
  `dma.*` and `post` enter their unit's queue with the number of array
  instructions issued so far, which the unit waits to see completed; `wait`
  holds until its tag is neither pending nor in the future; `halt` waits for
  every unit, then raises `done` and latches the cycle count.
- *Array*: `preload` shifts the stationary tile in from the top, one row per
  cycle (R cycles); `stream` feeds one row of the left operand per cycle
  into skewed row inputs; partial sums flow down and leave the bottom of
  column j for stream row s in pipeline cycle s + R - 1 + j, where they are
  written (or added) into the drain view. A read-ahead unit finds the drain
  instruction and its view while the stream runs; until it has, the first
  result would have nowhere to go, so the array holds.
- *DMA*: `bandwidth` byte lanes per cycle walk the transfer's rows; the tag
  completes `latency` cycles after the last beat.
- *Output unit*: C lanes per cycle over the accumulator view: bias, relu,
  wrap or requantize, into the output view.

Scratchpads are memories of 32-bit words written with byte masks; each
client has its own ports (the weight-stationary roles are fixed: preload and
bias read the filter scratchpad, stream reads the ifmap scratchpad, drain and
the output unit use the ofmap scratchpad, the DMA engine all three). A port
per lane is what the timing model asks for: every lane of a view, an im2col
gather, a skewed drain column or a DMA beat that crosses rows may address any
byte in the same cycle. The program memory also has a byte-wide load port.
"""

from __future__ import annotations

from dataclasses import dataclass

from backends.rtl.netlist import Memory, ModuleBuilder, Signal, bits_for
from backends.systolic import isa
from backends.systolic.rtl.decode import Fields, is_op, used_bits
from backends.systolic.simulator import QUEUE_DEPTH

TOP = "systolic_top"
PROGRAM_FILE = "program.hex"
DRAM_FILE = "dram.hex"
TAG_BITS = 6  # tags are looked up modulo 64; `check_program` rules out aliasing
COUNT_BITS = 32  # array-instruction counters
CYCLE_BITS = 32
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


def power_of_two_at_least(value: int) -> int:
    return 1 << max(1, (value - 1).bit_length())


def _element(m: ModuleBuilder, word: Signal, byte_address: Signal, is_i32: Signal) -> Signal:
    """The i8 or i32 element at `byte_address` of a 32-bit word, sign-extended to 32 bits."""
    lanes = [word[8 * k:8 * k + 8] for k in range(4)]
    return m.mux(is_i32, word, m.select(byte_address[0:2], lanes).sext(32))


def _store(m: ModuleBuilder, memory: Memory, byte_address: Signal, value: Signal, is_i32: Signal,
           enable: Signal) -> None:
    """Write an i8 (low byte of `value`) or i32 element at `byte_address`."""
    byte = value[0:8]
    data = m.mux(is_i32, value[0:32], m.concat(byte, byte, byte, byte))
    mask = m.mux(is_i32, m.const(0xF, 4), m.const(1, 4) << byte_address[0:2].zext(4))
    memory.write(byte_address[2:], data, enable, mask)


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
    """Lanes over a rows x cols block, row-major, several per cycle, without
    multipliers or dividers: each lane is the one before it plus one column,
    wrapping to the next row. Per address stream a lane carries where its row
    starts and its column's offset, moved by the stream's strides."""

    def __init__(self, m: ModuleBuilder, row: Signal, col: Signal, bases: list[tuple[Signal, Signal]]):
        self.m, self.row, self.col, self.bases = m, row, col, bases

    def step(self, cols: Signal, strides: list[tuple[Signal, Signal]]) -> Walk:
        m = self.m
        next_col = self.col + 1
        wrap = next_col.eq(cols)
        bases = [(m.mux(wrap, row_base + row_stride, row_base), m.mux(wrap, m.const(0, offset.width), offset + col_stride))
                 for (row_base, offset), (row_stride, col_stride) in zip(self.bases, strides)]
        return Walk(m, m.mux(wrap, self.row + 1, self.row), m.mux(wrap, 0, next_col), bases)

    def lanes(self, count: int, cols: Signal, strides: list[tuple[Signal, Signal]]) -> list[Walk]:
        """This position and the `count` after it."""
        out = [self]
        for _ in range(count):
            out.append(out[-1].step(cols, strides))
        return out

    def address(self, stream: int) -> Signal:
        row_base, offset = self.bases[stream]
        return row_base + offset


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
        self.program = m.memory("program", config.program_words, WORD, mask=WORD // 8, init_file=PROGRAM_FILE)
        self.program_loader(program_bits)
        self.dram = m.memory("dram", config.dram_bytes, 8, init_file=DRAM_FILE)
        self.spads = [m.memory(name, power_of_two_at_least(size // 4), 32, mask=4) for name, size in zip(SPADS, config.spad_bytes)]
        self.pc = m.reg("pc", program_bits)
        self.word = self.program.read(self.pc.q).named("instruction")

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

        self.sequencer()
        self.array(R, C)
        self.dma_engine()
        self.output_unit(C)
        self.tags()

        dbg_address = m.input("dbg_addr", config.dram_address_bits)
        m.output("done", self.halted.q)
        m.output("error", self.error.q)
        m.output("cycles", self.end_cycle.q)
        m.output("dbg_data", self.dram.read(dbg_address))

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
        self.program.write(address[5:], m.concat(*[byte] * (WORD // 8)), enable, lane)

    # -- sequencer ---------------------------------------------------------------------

    def sequencer(self) -> None:
        """The sequencer's state; its decisions (`tags`) need every unit built first."""
        m = self.m
        self.halted = m.reg("halted", 1)
        self.error = m.reg("error_flag", 1)
        self.end_cycle = m.reg("end_cycle", CYCLE_BITS)
        self.running = ~self.halted.q

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
        op_view = m.reg("array_view", WORD)
        idle = op.q.eq(0)
        self.array_idle = idle

        is_preload, is_stream, is_drain = (is_op(word, name) for name in ("preload", "stream", "drain"))
        array_instruction = is_preload | is_stream | is_drain
        issue = running & array_instruction & idle
        new_op = m.mux(is_preload, 1, m.mux(is_stream, 2, 3)).zext(2)
        preload_view, left_view = self.views[isa.SLOT_PRELOAD].q, self.views[isa.SLOT_LEFT].q
        fresh_view = m.mux(is_preload, preload_view, left_view)
        op_now = m.mux(issue, new_op, op.q)
        view_now = m.mux(issue, fresh_view, op_view.q)
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
        scout_word = self.program.read(scout_pc.q)
        scout_view3 = scouting.q & is_op(scout_word, "view") & Fields(scout_word, "view")["slot"].eq(isa.SLOT_DRAIN)
        scout_drain = scouting.q & is_op(scout_word, "drain")
        known_now = drain_known.q | scout_drain
        accumulate_now = m.mux(drain_known.q, drain_accumulate.q, Fields(scout_word, "drain")["accumulate"])
        start_scout = issue & is_stream
        scout_pc.set(scout_pc.q + 1, when=scouting.q)
        scout_pc.set(self.pc.q + 1, when=start_scout)
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

        op.set(op_now)
        op.set(0, when=last)
        remaining.set(m.mux(advance, remaining_now - 1, remaining_now))
        tick.set(m.mux(pipe_tick, tick_now + 1, tick_now))
        stream_rows.set(rows_now)
        op_view.set(view_now)
        self.issued.set(self.issued.q + 1, when=issue)
        self.completed.set(self.completed.q + 1, when=last)
        self.array_issue = issue

        # Stationary tile: shifts down one row per preload cycle, last row first.
        view = Fields(view_now, "view")
        filter_spad, ifmap_spad, ofmap_spad = self.spads[1], self.spads[0], self.spads[2]
        feed_row = (remaining_now - 1)[0:16]
        weights = [[m.reg(f"w_{i}_{j}", 8) for j in range(C)] for i in range(R)]
        row_base = view["offset"].zext(32) + feed_row.zext(32) * view["row_stride"].zext(32)
        for j in range(C):
            address = row_base + view["col_stride"].zext(32) * j
            value = _element(m, filter_spad.read(address[2:]), address, m.const(0, 1))[0:8]
            valid = feed_row.ult(view["rows"]) & view["cols"].ugt(j)
            weights[0][j].set(m.mux(valid, value, 0), when=preload_tick)
            for i in range(1, R):
                weights[i][j].set(weights[i - 1][j].q, when=preload_tick)

        # Left operand: row `tick` of the stream view, one element per array row.
        feeding = op_now.eq(2)
        left = self.stream_row(view_now, tick_now, issue & is_stream, pipe_tick & feeding, R, ifmap_spad)
        inputs = [m.mux(feeding & tick_now.ult(rows_now.zext(17)) & valid, value, 0)
                  for value, valid in left]
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

        # Results leave the bottom of column j for stream row tick - (R - 1) - j.
        target = Fields(drain_view.q, "view")
        for j in range(C):
            row = tick_now.zext(18) - (R - 1 + j)
            valid = pipe_tick & ~row[17] & row[0:17].ult(rows_now.zext(17)) & target["cols"].ugt(j)
            element = row[0:17].zext(32) * target["row_stride"].zext(32) + target["col_stride"].zext(32) * j
            address = target["offset"][2:].zext(32) + element  # a word address: accumulators are i32
            old = ofmap_spad.read(address)
            value = m.mux(accumulate_now, old + sums[j], sums[j])
            ofmap_spad.write(address, value, valid, m.const(0xF, 4))

    def stream_row(self, view_word: Signal, row: Signal, starting: Signal, tick: Signal, lanes: int,
                   spad: Memory) -> list[tuple[Signal, Signal]]:
        """(value, in bounds) of each element of row `row` of a matrix or im2col view (i8)."""
        m = self.m
        matrix, im2col = Fields(view_word, "view"), Fields(view_word, "view.im2col")
        is_im2col = is_op(view_word, "view.im2col")
        # Output pixel of the row, stepped along with the stream from the view's (oh0, ow0).
        out_w = im2col["out_w"].zext(20)
        oh = m.reg("stream_oh", 20)
        ow = m.reg("stream_ow", 20)
        oh_now = m.mux(starting, im2col["oh0"], oh.q)
        ow_now = m.mux(starting, im2col["ow0"].zext(20), ow.q)
        wrap = (ow_now + 1).eq(out_w)
        oh.set(m.mux(wrap, oh_now + 1, oh_now), when=tick)
        ow.set(m.mux(wrap, 0, ow_now + 1), when=tick)

        # Window position of lane 0, from the view; the other lanes step from it by one.
        kernel_w, kernel_h = im2col["kernel_w"], im2col["kernel_h"]
        band_w = im2col["band_w"].zext(32)
        dilation_h, dilation_w = im2col["dilation_h"].zext(32), im2col["dilation_w"].zext(32)
        kh, kw = im2col["kh0"], im2col["kw0"]
        channel_base = im2col["c0"].zext(32) * im2col["channel_stride"].zext(32)
        kh_offset, kw_offset = kh.zext(32) * dilation_h, kw.zext(32) * dilation_w
        kh_linear = kh_offset * band_w
        # The row's part: (oh * stride_h - row0, ow * stride_w - col0), shared by the lanes.
        row_h = (oh_now.zext(32) * im2col["stride_h"].zext(32)) - im2col["row0"].zext(32)
        row_w = (ow_now.zext(32) * im2col["stride_w"].zext(32)) - im2col["col0"].zext(32)
        row_linear = row_h * band_w + row_w
        pad = im2col["pad_value"]
        out = []
        for j in range(lanes):
            if j:
                next_kw = kw + 1
                wrap_w = next_kw.eq(kernel_w)
                next_kh = m.mux(wrap_w, kh + 1, kh)
                wrap_h = wrap_w & next_kh.eq(kernel_h)
                kw, kw_offset = m.mux(wrap_w, 0, next_kw), m.mux(wrap_w, m.const(0, 32), kw_offset + dilation_w)
                kh = m.mux(wrap_h, 0, next_kh)
                kh_offset = m.mux(wrap_h, m.const(0, 32), m.mux(wrap_w, kh_offset + dilation_h, kh_offset))
                kh_linear = m.mux(wrap_h, m.const(0, 32), m.mux(wrap_w, kh_linear + dilation_h * band_w, kh_linear))
                channel_base = m.mux(wrap_h, channel_base + im2col["channel_stride"].zext(32), channel_base)
            ih, iw = row_h + kh_offset, row_w + kw_offset
            inside = (ih.slt(im2col["band_h"].zext(32)) & ih.sge(0) &
                      iw.slt(band_w) & iw.sge(0))
            index = channel_base + row_linear + kh_linear + kw_offset
            im2col_address = im2col["offset"].zext(32) + index
            matrix_address = (matrix["offset"].zext(32) + row.zext(32) * matrix["row_stride"].zext(32)
                              + matrix["col_stride"].zext(32) * j)
            address = m.mux(is_im2col, im2col_address, matrix_address)
            value = _element(m, spad.read(address[2:]), address, m.const(0, 1))[0:8]
            value = m.mux(is_im2col & ~inside, pad, value)
            in_view = m.mux(is_im2col, im2col["cols"], matrix["cols"]).ugt(j)
            # As the simulator does, stop on a read past the scratchpad (a view the
            # compiler should never produce).
            self.faults.append(tick & in_view & (~is_im2col | inside) & address.uge(self.config.spad_bytes[0]))
            out.append((value, in_view))
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
        dram_bits = config.dram_address_bits
        row = m.reg("dma_row", 16)
        col = m.reg("dma_col", 24)
        dram_row = m.reg("dma_dram_row", dram_bits)
        spad_row = m.reg("dma_spad_row", 24)
        col_now = m.mux(start, m.const(0, 24), col.q)
        here = Walk(m, m.mux(start, m.const(0, 16), row.q), col_now,
                    [(m.mux(start, f["dram_addr"][0:dram_bits], dram_row.q), col_now.zext(dram_bits)[0:dram_bits]),
                     (m.mux(start, f["spad_addr"], spad_row.q), col_now)])
        one = m.const(1, 24)
        lanes = here.lanes(config.bandwidth, f["row_bytes"],
                           [(f["dram_stride"][0:dram_bits], one.zext(dram_bits)[0:dram_bits]), (f["spad_stride"], one)])
        moving = active.q | start
        for lane in lanes[:-1]:
            valid = moving & lane.row.ult(f["rows"])
            dram_address, spad_address = lane.address(0), lane.address(1)
            spad_values = []
            for index, spad in enumerate(self.spads):
                chosen = f["spad"].eq(index)
                _store(m, spad, spad_address, self.dram.read(dram_address).zext(32), m.const(0, 1),
                       valid & loading & chosen)
                spad_values.append(_element(m, spad.read(spad_address[2:]), spad_address, m.const(0, 1)))
            self.dram.write(dram_address, m.select(f["spad"], spad_values)[0:8], valid & ~loading)
        following = lanes[-1]
        finished = moving & following.row.uge(f["rows"])
        row.set(following.row)
        col.set(following.col)
        dram_row.set(following.bases[0][0])
        spad_row.set(following.bases[1][0])
        active.set(moving & ~finished)
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
        # Element indices of the accumulator, bias and output views, walked together.
        row = m.reg("post_row", 16)
        col = m.reg("post_col", 16)
        resume = [(m.reg(f"post_row_base{k}", 32), m.reg(f"post_offset{k}", 32)) for k in range(3)]
        zero = m.const(0, 32)
        here = Walk(m, m.mux(start, m.const(0, 16), row.q), m.mux(start, m.const(0, 16), col.q),
                    [(m.mux(start, zero, base.q), m.mux(start, zero, offset.q)) for base, offset in resume])
        strides = [(view["row_stride"].zext(32), view["col_stride"].zext(32)) for view in (acc, bias, out)]
        strides[1] = (zero, strides[1][1])  # every output row adds the same bias row
        lanes = here.lanes(C, acc["cols"], strides)
        moving = active.q | start
        ofmap, filter_spad = self.spads[2], self.spads[1]
        bias_i32 = bias["dtype"].eq(isa.DTYPES.index("i32"))
        out_i32 = post["out_dtype"].eq(isa.DTYPES.index("i32"))
        for lane in lanes[:-1]:
            valid = moving & lane.row.ult(acc["rows"])
            value = ofmap.read(acc["offset"][2:].zext(32) + lane.address(0))  # i32: a word address
            bias_address = bias["offset"].zext(32) + m.mux(bias_i32, lane.address(1) << 2, lane.address(1))
            bias_value = _element(m, filter_spad.read(bias_address[2:]), bias_address, bias_i32)
            value = m.mux(post["bias"], value + bias_value, value)
            converted, floor = self.convert(post, value, out_i32)
            relu_value = m.mux(converted.slt(floor), floor, converted)
            result = m.mux(post["relu"], relu_value, converted)
            out_address = out["offset"].zext(32) + m.mux(out_i32, lane.address(2) << 2, lane.address(2))
            _store(m, ofmap, out_address, result, out_i32, valid)
        following = lanes[-1]
        finished = moving & following.row.uge(acc["rows"])
        row.set(following.row)
        col.set(following.col)
        for (base, offset), (next_base, next_offset) in zip(resume, following.bases):
            base.set(next_base)
            offset.set(next_offset)
        active.set(moving & ~finished)
        self.pending_clears.append((finished, post["tag"]))
        self.done_updates.append((finished, post["tag"], self.cycle.q + 1))
        self.post_idle = ~active.q & queue.empty

    def convert(self, post: Fields, value: Signal, out_i32: Signal) -> tuple[Signal, Signal]:
        """`value` (i32) in the output type, sign-extended to 32 bits, and relu's floor."""
        m = self.m
        requant = post["mode"].eq(isa.POST_MODES.index("requant"))
        wrapped = m.mux(out_i32, value, value[0:8].sext(32))
        shift = post["shift"].zext(64)
        # The signed 32 x 32 product as an unsigned one minus the sign's weight: with
        # zero-extended operands synthesis sees a 32 x 32 multiplier (DSP blocks), where
        # sign-extended ones would make it a 64 x 32 one in logic.
        multiplier = post["multiplier"].zext(64)
        product = value.zext(64) * multiplier - m.mux(value[31], multiplier << 32, m.const(0, 64))
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
        is_view = is_op(word, "view") | is_op(word, "view.im2col")
        simple = is_view | is_op(word, "nop") | is_op(word, "config") | is_op(word, "layer")
        wait_ready = is_wait & self._tag_ready(Fields(word, "wait")["tag"])
        settled = (self.array_idle & self.dma_idle & self.post_idle & self.cycle.q.uge(self.last_done.q)
                   & self.pending.q.eq(0))
        halt_now = running & is_halt & settled
        unknown = running & ~(simple | is_wait | is_halt | self.dma_instruction | is_op(word, "post")
                              | is_op(word, "preload") | is_op(word, "stream") | is_op(word, "drain"))
        stop = unknown | running & m.any_of(self.faults)
        advance = running & (simple | wait_ready) | self.array_issue | self.dma_issue | self.post_issue
        self.pc.set(self.pc.q + 1, when=advance)
        slot = Fields(word, "view")["slot"]
        for index, register in self.views.items():
            register.set(word, when=running & is_view & slot.eq(index))
        self.halted.set(1, when=halt_now | stop)
        self.error.set(1, when=stop)
        self.end_cycle.set(self.cycle.q, when=halt_now | stop)


