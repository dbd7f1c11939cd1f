"""A cycle-level simulator of the systolic accelerator, vectorised per tile.

It executes the instruction stream of `isa.py` twice over in one pass:

*Functionally*, on real bytes: DRAM and the three scratchpads are numpy byte
arrays, views are numpy strided views (or gathers, for im2col), and each
`stream` multiplies a whole tile with one numpy call. Integer products are
summed exactly in float64 (|sum| < 2^53) and wrapped to the i32
accumulators; f32 tiles multiply and accumulate in float32.

*In time*, with one clock per unit:

- the sequencer issues one instruction per cycle, in order; `wait` holds it
  until a tag completes;
- the array runs `preload` (R cycles: the stationary tile shifts in),
  `stream` (T cycles, one row per cycle) and `drain` (R + C - 2 cycles: the
  skewed partial sums leave the array) back to back, so one fold takes
  2R + C + T - 2 cycles (R + C + T - 2 output-stationary), SCALE-Sim's
  count. An array instruction waits for the array, not the sequencer, which
  goes on issuing `view`s meanwhile. Results leave the array from the
  stream's (R - 1)th cycle, and the array must know the drain's view by
  then: the drain instruction is found by reading ahead one instruction per
  cycle, and a drain more than R - 1 instructions after its stream holds the
  array for the difference;
- `dma.load`/`dma.store` and `post` enter a queue (QUEUE_DEPTH requests) of
  the DMA engine or the output unit and start, in order, no earlier than the
  cycle after they were issued and once the array has finished every
  instruction issued before them;
- the DMA engine moves up to `dram_bytes_per_cycle` bytes of one row per
  cycle, a beat never crossing into the next row: a transfer of `rows` rows
  of `row_bytes` occupies it rows x ceil(row_bytes / bandwidth) cycles
  (`dma_cycles`) and its tag completes `dram_latency` cycles after that (the
  latency of consecutive transfers overlaps);
- the output unit, beside the array, walks the output view one row at a
  time, up to C elements per cycle: rows x ceil(cols / C) cycles; a
  transposed output view (row stride 1, column stride other than 1) it
  walks one column at a time, cols x ceil(rows / C) cycles (`post_cycles`,
  `post_walks_columns`). It takes the next `post` once that is over, and the
  tag completes one cycle later, when the last outputs are written.

The RTL (`backends/systolic/rtl`) is built to this model and matches its
cycle counts exactly.

Cycles the array waits for data are stalls; the time the DMA engine works
while the array computes is the overlap that double buffering buys. The
host, when a `host` instruction hands it DRAM, takes no accelerator cycles.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np
from numpy.lib.stride_tricks import as_strided

from backends.systolic import isa
from compiler.diagnostics import LoomError
from dialects.systolic import ArrayConfig

NUMPY_DTYPES = {"i8": np.dtype(np.int8), "i32": np.dtype(np.int32), "f32": np.dtype(np.float32)}


class SimulationError(LoomError):
    """The program does something the hardware cannot (reads outside a scratchpad, ...)."""


@dataclass
class Counters:
    """What one layer (or the whole program) did."""

    cycles: int = 0
    fill_cycles: int = 0
    stream_cycles: int = 0
    drain_cycles: int = 0
    post_cycles: int = 0
    dma_cycles: int = 0
    overlap_cycles: int = 0
    macs: int = 0
    folds: int = 0
    dram_read_bytes: int = 0
    dram_write_bytes: int = 0
    array_read_bytes: int = 0
    array_write_bytes: int = 0
    post_read_bytes: int = 0
    post_write_bytes: int = 0

    @property
    def compute_cycles(self) -> int:
        """Cycles the array works: preloading, streaming and draining."""
        return self.fill_cycles + self.stream_cycles + self.drain_cycles

    @property
    def stall_cycles(self) -> int:
        return self.cycles - self.compute_cycles

    @property
    def dram_bytes(self) -> int:
        return self.dram_read_bytes + self.dram_write_bytes

    @property
    def sram_reads(self) -> int:
        """Bytes read from the scratchpads: by the array, the output unit and DMA stores."""
        return self.array_read_bytes + self.post_read_bytes + self.dram_write_bytes

    @property
    def sram_writes(self) -> int:
        """Bytes written to the scratchpads: by drains, the output unit and DMA loads."""
        return self.array_write_bytes + self.post_write_bytes + self.dram_read_bytes

    def add(self, other: Counters) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def utilization(self, pes: int) -> float:
        """MACs over what the PEs could do in the cycles the array computed."""
        return self.macs / (self.compute_cycles * pes) if self.compute_cycles else 0.0


@dataclass
class Result:
    total: Counters
    layers: list[Counters]
    wall_time_s: float
    instructions: int


def _overlap(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> int:
    """Total length of the intersection of two sorted lists of disjoint intervals."""
    i = j = total = 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        total += max(0, end - start)
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


@dataclass
class _LayerClock:
    counters: Counters
    start: int
    array: list[tuple[int, int]] = field(default_factory=list)
    dma: list[tuple[int, int]] = field(default_factory=list)


def fixed_point_scale(value: np.ndarray, multiplier, shift) -> np.ndarray:
    """value * multiplier / 2^shift on int64, rounded half away from zero: add
    2^(shift-1), less one for a negative product, then shift right (a shift of
    0 adds nothing)."""
    product = value * multiplier
    half = np.left_shift(np.int64(1), np.maximum(shift, 1) - 1)
    return (product + np.where(shift > 0, half - (product < 0), 0)) >> shift


QUEUE_DEPTH = 4  # requests the DMA engine and the output unit each hold before the sequencer waits


def _enqueue(starts: deque[int], issue: int) -> int:
    """The first cycle from `issue` on at which a unit's queue has room: it
    holds the requests issued before that cycle which have not started;
    `starts` are the start cycles of earlier requests, in order."""
    while starts and starts[0] < issue:
        starts.popleft()
    if len(starts) >= QUEUE_DEPTH:
        issue = starts[len(starts) - QUEUE_DEPTH] + 1
        while starts and starts[0] < issue:
            starts.popleft()
    return issue


def _next_drains(program: list[isa.Instruction]) -> list[int | None]:
    """For each position, where the next `drain` at or after it is."""
    found: int | None = None
    out: list[int | None] = [None] * len(program)
    for position in reversed(range(len(program))):
        if program[position].mnemonic == "drain":
            found = position
        out[position] = found
    return out


def dma_cycles(transfer: isa.Instruction, bandwidth: float) -> int:
    """Cycles a `dma.load`/`dma.store` occupies the DMA engine. A beat moves
    consecutive bytes of one row only, because a scratchpad port serves one
    run of consecutive bytes per cycle: each row costs whole beats."""
    return transfer["rows"] * math.ceil(transfer["row_bytes"] / bandwidth)


def post_walks_columns(out_view: isa.Instruction) -> bool:
    """Whether the output unit walks `out_view` a column at a time: when its
    columns, not its rows, are runs of consecutive elements (a transposed
    view, such as a convolution's NCHW output written pixel by pixel), so
    that every cycle writes one run."""
    return out_view["row_stride"] == 1 and out_view["col_stride"] != 1


def post_cycles(out_view: isa.Instruction, array_cols: int) -> int:
    """Cycles a `post` writing `out_view` occupies the output unit: one row
    (or, walking columns, one column) of the view at a time, up to
    `array_cols` elements of it per cycle."""
    lines, length = out_view["rows"], out_view["cols"]
    if post_walks_columns(out_view):
        lines, length = length, lines
    return lines * math.ceil(length / array_cols)


class Simulator:
    def __init__(self, config: ArrayConfig):
        self.config = config
        # Scratchpads are padded to whole 8-byte words so every dtype can view them.
        self.spads = [np.zeros(-(-size // 8) * 8, np.uint8)
                      for size in (config.ifmap_bytes, config.filter_bytes, config.ofmap_bytes)]
        self.typed: dict[tuple[int, np.dtype], np.ndarray] = {}
        self.gathers: dict[isa.Instruction, tuple[np.ndarray, np.ndarray]] = {}

    # -- views ------------------------------------------------------------------

    def _array_of(self, view: isa.Instruction) -> tuple[np.ndarray, int]:
        dtype = NUMPY_DTYPES[isa.DTYPES[view["dtype"]]]
        key = (view["spad"], dtype)
        if key not in self.typed:
            self.typed[key] = self.spads[view["spad"]].view(dtype)
        if view["offset"] % dtype.itemsize:
            raise SimulationError(f"view at byte {view['offset']} is not aligned to {dtype}")
        return self.typed[key], view["offset"] // dtype.itemsize

    def _matrix(self, view: isa.Instruction) -> np.ndarray:
        array, base = self._array_of(view)
        rows, cols, rs, cs = view["rows"], view["cols"], view["row_stride"], view["col_stride"]
        last = base + (rows - 1) * rs + (cols - 1) * cs
        if rows < 1 or cols < 1 or last >= array.size:
            raise SimulationError(f"a {rows}x{cols} view at element {base} leaves the {isa.SPADS[view['spad']]} "
                                  "scratchpad")
        size = array.itemsize
        return as_strided(array[base:], (rows, cols), (rs * size, cs * size))

    def _im2col(self, view: isa.Instruction) -> np.ndarray:
        array, base = self._array_of(view)
        if view not in self.gathers:
            v = view.fields()
            pixel0 = v["oh0"] * v["out_w"] + v["ow0"]
            k0 = (v["c0"] * v["kernel_h"] + v["kh0"]) * v["kernel_w"] + v["kw0"]
            i = pixel0 + np.arange(v["rows"])
            j = k0 + np.arange(v["cols"])
            oh, ow = np.divmod(i, v["out_w"])
            channel, within = np.divmod(j, v["kernel_h"] * v["kernel_w"])
            kh, kw = np.divmod(within, v["kernel_w"])
            ih = (oh * v["stride_h"])[:, None] + (kh * v["dilation_h"] - v["row0"])[None, :]
            iw = (ow * v["stride_w"])[:, None] + (kw * v["dilation_w"] - v["col0"])[None, :]
            valid = (ih >= 0) & (ih < v["band_h"]) & (iw >= 0) & (iw < v["band_w"])
            index = np.where(valid, channel[None, :] * v["channel_stride"] + ih * v["band_w"] + iw, 0)
            if len(self.gathers) > 4096:
                self.gathers.clear()
            self.gathers[view] = (index, valid)
        index, valid = self.gathers[view]
        if index.size and base + int(index.max()) >= array.size:
            raise SimulationError("an im2col view leaves the scratchpad")
        values = np.where(valid, array[base + index], array.dtype.type(view["pad_value"]))
        return values.T if view["transpose"] else values

    def read(self, slot: int) -> np.ndarray:
        view = self.views[slot]
        if view is None:
            raise SimulationError(f"view register {slot} is read before it is set")
        return self._im2col(view) if view.mnemonic == "view.im2col" else self._matrix(view)

    def writable(self, slot: int) -> np.ndarray:
        view = self.views[slot]
        if view is None or view.mnemonic != "view":
            raise SimulationError(f"view register {slot} must hold a matrix view to be written")
        return self._matrix(view)

    # -- arithmetic -------------------------------------------------------------

    def multiply(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        if self.floating:
            return np.matmul(left.astype(np.float32), right.astype(np.float32))
        # Exact: every product and partial sum of i8 values is far below 2^53.
        return np.matmul(left.astype(np.float64), right.astype(np.float64)).astype(np.int64)

    # -- running ----------------------------------------------------------------

    def run(self, program: list[isa.Instruction], dram: np.ndarray,
            host: Callable[[int], None] | None = None) -> Result:
        cfg = self.config
        rows, cols = cfg.rows, cfg.cols
        self.views: list[isa.Instruction | None] = [None] * isa.VIEW_SLOTS
        self.floating = True
        dataflow = cfg.dataflow
        stationary: np.ndarray | None = None
        queue: list[np.ndarray] = []  # ws/is: results leaving the array, in order
        pe_acc: np.ndarray | None = None  # os: the accumulators in the PEs
        # st: the cycle the sequencer can issue its next instruction; the
        # others: when the array, the DMA engine and the output unit are free.
        st = array_free = dma_free = post_free = last_done = 0
        dma_starts: deque[int] = deque()
        post_starts: deque[int] = deque()
        drains = _next_drains(program)
        done: dict[int, int] = {}
        total = Counters()
        layers: list[_LayerClock] = []
        outside = _LayerClock(Counters(), 0)  # work issued before the first layer marker
        clock = outside
        bandwidth, latency = cfg.dram_bytes_per_cycle, cfg.dram_latency
        started = time.perf_counter()

        def issue_array(duration: int) -> int:
            nonlocal st, array_free
            start = max(st, array_free)
            array_free, st = start + duration, start + 1
            return start

        def close(clock: _LayerClock, end: int) -> None:
            clock.counters.cycles = end - clock.start
            clock.counters.overlap_cycles = _overlap(clock.array, clock.dma)

        for position, ins in enumerate(program):
            op = ins.mnemonic
            try:
                c = clock.counters
                if op in ("view", "view.im2col"):
                    self.views[ins["slot"]] = ins
                    st += 1
                elif op in ("dma.load", "dma.store"):
                    nbytes = ins["rows"] * ins["row_bytes"]
                    self.dma(ins, dram, op == "dma.load")
                    issue = _enqueue(dma_starts, st)
                    start = max(issue + 1, array_free, dma_free)
                    dma_starts.append(start)
                    st = issue + 1
                    duration = dma_cycles(ins, bandwidth)
                    dma_free = start + duration
                    done[ins["tag"]] = dma_free + latency
                    last_done = max(last_done, dma_free + latency)
                    clock.dma.append((start, dma_free))
                    c.dma_cycles += duration
                    if op == "dma.load":
                        c.dram_read_bytes += nbytes
                    else:
                        c.dram_write_bytes += nbytes
                elif op == "wait":
                    if ins["tag"] not in done:
                        raise SimulationError(f"wait for tag {ins['tag']}, which nothing has issued")
                    st = max(st, done.pop(ins["tag"])) + 1
                elif op == "preload":
                    if dataflow == "os":
                        raise SimulationError("preload in an output-stationary dataflow")
                    stationary = self.read(isa.SLOT_PRELOAD).copy()
                    if stationary.shape[0] > rows or stationary.shape[1] > cols:
                        raise SimulationError(f"a {stationary.shape} tile does not fit the {rows}x{cols} array")
                    c.array_read_bytes += stationary.nbytes
                    start = issue_array(rows)
                    clock.array.append((start, start + rows))
                    c.fill_cycles += rows
                elif op == "stream":
                    left = self.read(isa.SLOT_LEFT)
                    c.array_read_bytes += left.size * left.itemsize
                    if dataflow == "os":
                        top = self.read(isa.SLOT_TOP)
                        if not ins["top"] or left.shape[1] != top.shape[0] or left.shape[0] > rows \
                                or top.shape[1] > cols:
                            raise SimulationError("an output-stationary stream needs m x T and T x n operands "
                                                  "that fit the array")
                        c.array_read_bytes += top.size * top.itemsize
                        product = self.multiply(left, top)
                        pe_acc = product if pe_acc is None else pe_acc + product
                        length = left.shape[1]
                        c.macs += left.shape[0] * length * top.shape[1]
                    else:
                        if stationary is None or left.shape[1] != stationary.shape[0]:
                            raise SimulationError("a stream's rows must be as long as the stationary tile is tall")
                        queue.append(self.multiply(left, stationary))
                        length = left.shape[0]
                        c.macs += length * stationary.shape[0] * stationary.shape[1]
                    # Results leave the array from its (rows - 1)th cycle on, and need the
                    # drain's view: a drain further ahead than that holds the array.
                    delay = 0
                    if dataflow != "os" and length > rows - 1 and drains[position] is not None:
                        delay = max(0, drains[position] - position - (rows - 1))
                    start = issue_array(length + delay)
                    clock.array.append((start, start + length + delay))
                    c.stream_cycles += length
                elif op == "drain":
                    results = pe_acc if dataflow == "os" else (np.concatenate(queue) if queue else None)
                    if results is None:
                        raise SimulationError("drain with nothing streamed")
                    target = self.writable(isa.SLOT_DRAIN)
                    if target.shape != results.shape:
                        raise SimulationError(f"drain of {results.shape} results into a {target.shape} view")
                    if ins["accumulate"]:
                        c.array_read_bytes += target.nbytes
                        results = target + results if self.floating else target.astype(np.int64) + results
                    target[...] = results if self.floating else results.astype(np.int64).astype(np.int32)
                    c.array_write_bytes += target.nbytes
                    queue, pe_acc = [], None
                    drain = rows + cols - 2
                    start = issue_array(drain)
                    clock.array.append((start, start + drain))
                    c.drain_cycles += drain
                    c.folds += 1
                elif op == "post":
                    self.post(ins, c)
                    issue = _enqueue(post_starts, st)
                    start = max(issue + 1, array_free, post_free)
                    post_starts.append(start)
                    st = issue + 1
                    duration = post_cycles(self.views[isa.SLOT_OUT], cols)
                    post_free = start + duration
                    # The outputs are written the cycle after the last accumulators are read.
                    done[ins["tag"]] = post_free + 1
                    last_done = max(last_done, post_free + 1)
                    c.post_cycles += duration
                elif op == "config":
                    if (ins["rows"], ins["cols"]) != (rows, cols) or isa.DATAFLOWS[ins["dataflow"]] != dataflow:
                        raise SimulationError(
                            f"the program is for a {ins['rows']}x{ins['cols']} {isa.DATAFLOWS[ins['dataflow']]} "
                            f"array, the simulator models {rows}x{cols} {dataflow}")
                    self.floating = isa.DTYPES[ins["acc_dtype"]] == "f32"
                    st += 1
                elif op == "layer":
                    settled = max(st, array_free, last_done)
                    if clock is not outside:
                        close(clock, settled)
                    clock = _LayerClock(Counters(), settled)
                    layers.append(clock)
                    st += 1
                elif op == "host":
                    settled = max(st, array_free, last_done)  # the host sees DRAM once every transfer has landed
                    st = settled + 1
                    if clock is not outside:
                        close(clock, settled)
                        clock = outside
                    if host is not None:
                        host(ins["op"])
                elif op == "halt":
                    break
                else:
                    st += 1
            except SimulationError as e:
                raise SimulationError(f"instruction {position} ({op}): {e.message}") from None
        end = max(st, array_free, last_done)
        if clock is not outside:
            close(clock, end)
        for layer in layers:
            total.add(layer.counters)
        total.add(outside.counters)
        total.cycles = end
        total.overlap_cycles = _overlap(sorted(a for l in [*layers, outside] for a in l.array),
                                        sorted(d for l in [*layers, outside] for d in l.dma))
        return Result(total, [layer.counters for layer in layers], time.perf_counter() - started, len(program))

    def dma(self, ins: isa.Instruction, dram: np.ndarray, load: bool) -> None:
        spad = self.spads[ins["spad"]]
        count, width = ins["rows"], ins["row_bytes"]
        dram_end = ins["dram_addr"] + (count - 1) * ins["dram_stride"] + width
        spad_end = ins["spad_addr"] + (count - 1) * ins["spad_stride"] + width
        if dram_end > dram.size:
            raise SimulationError(f"DMA reaches DRAM byte {dram_end}, past its {dram.size} bytes")
        if spad_end > spad.size:
            raise SimulationError(f"DMA reaches byte {spad_end} of the {isa.SPADS[ins['spad']]} scratchpad "
                                  f"({spad.size} bytes)")
        outside = as_strided(dram[ins["dram_addr"]:], (count, width), (ins["dram_stride"], 1))
        inside = as_strided(spad[ins["spad_addr"]:], (count, width), (ins["spad_stride"], 1))
        if load:
            inside[...] = outside
        else:
            outside[...] = inside

    def post(self, ins: isa.Instruction, c: Counters) -> None:
        """`out = relu(convert(acc + bias))`.

        Integer sums wrap to i32 as the unit's adder does. `requant` scales by
        a fixed-point multiplier (one, or one per column read from view 7 when
        `per_channel` is set), adds the zero point, saturates, and relu
        clamps at the zero point."""
        acc = self.read(isa.SLOT_ACC)
        out = self.writable(isa.SLOT_OUT)
        if acc.shape != out.shape:
            raise SimulationError(f"post from a {acc.shape} accumulator view to a {out.shape} output view")
        value = acc.astype(np.float32) if self.floating else acc.astype(np.int64)
        c.post_read_bytes += acc.size * acc.itemsize
        if ins["bias"]:
            bias = self.read(isa.SLOT_BIAS)
            if bias.shape != (1, acc.shape[1]):
                raise SimulationError(f"the bias view must be 1x{acc.shape[1]}")
            value = value + (bias.astype(np.float32) if self.floating else bias.astype(np.int64))
            c.post_read_bytes += bias.size * bias.itemsize
        if not self.floating:
            value = value.astype(np.int32).astype(np.int64)
        dtype = NUMPY_DTYPES[isa.DTYPES[ins["out_dtype"]]]
        mode = isa.POST_MODES[ins["mode"]]
        floor = 0
        if mode == "requant":
            multiplier, shift = self.requant_scales(ins, acc.shape[1], c)
            value = fixed_point_scale(value, multiplier, shift) + ins["zero_point"]
            info = np.iinfo(dtype)
            value = np.clip(value, info.min, info.max)
            floor = ins["zero_point"]
        converted = value.astype(dtype)
        if ins["relu"]:
            converted = np.maximum(converted, dtype.type(floor))
        out[...] = converted
        c.post_write_bytes += out.nbytes

    def requant_scales(self, ins: isa.Instruction, cols: int, c: Counters) -> tuple[np.ndarray, np.ndarray]:
        """The multiplier and shift of each column: the instruction's, or row 0
        and row 1 of the per-channel view (i32)."""
        if not ins["per_channel"]:
            return np.int64(ins["multiplier"]), np.int64(ins["shift"])
        scales = self.read(isa.SLOT_SCALES)
        if scales.shape != (2, cols) or scales.dtype != np.int32:
            raise SimulationError(f"per-channel requantization reads a 2x{cols} i32 view of multipliers and shifts")
        c.post_read_bytes += scales.nbytes
        multiplier, shift = scales.astype(np.int64)
        if np.any(multiplier < 0) or np.any((shift < 0) | (shift > 63)):
            raise SimulationError("requantization multipliers must be non-negative and shifts in [0, 63]")
        return multiplier, shift
