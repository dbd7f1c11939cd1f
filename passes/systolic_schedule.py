"""How a `systolic.gemm` is cut into folds and tiles: shared by the passes.

A *fold* is one use of the array: the stationary operand is preloaded (not
in output-stationary), a stream of T rows passes through, and the results
drain. Fold order and fold sizes are SCALE-Sim's, so compute cycles can be
compared with it one to one:

- ws: for each column tile of N, for each row tile of K: preload W, stream
  all M rows of X, drain M x n partial sums (accumulated over K in the ofmap
  scratchpad);
- is: for each column tile of M, for each row tile of K: preload X^T,
  stream all N columns of W, drain n x m partial sums;
- os: for each column tile of N, for each row tile of M: stream K steps of
  X and W from two edges, drain the m x n outputs.

Scratchpads hold tiles copied from DRAM. An operand that fits its
scratchpad whole is fetched once and stays (*resident*); otherwise every
fold fetches the tiles it needs into rotating slots (at least two, so the
next tile is in flight while the current one is used; up to four when they
fit, to cover DRAM latency). Results gather in *panels* in the
ofmap scratchpad: accumulators, and the post-processed outputs waiting to
be written back (`panel_slots` of each). When the M rows of a ws fold (or
the N columns of an is fold) do not fit one panel, the fold is split into
several, which costs an extra fill and drain each.

Convolutions are matrix products of the im2col matrix (M = output pixels,
K = C/groups * kh * kw, N = output channels per group), but the matrix is
never formed: X tiles are bands of input rows of the NCHW feature map and
the array reads them through im2col views, so DRAM traffic and scratchpad
space are those of the feature map. Pixel tiles never straddle two images.

Operands have their own element sizes (`ElementBytes`): a quantized layer
multiplies i8 tiles, adds an i32 bias, reads per-column requantization
multipliers and shifts (`scales`, i32, resident beside the bias) and writes
i8 or i32 outputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

from xdsl.ir import Attribute

from dialects import nn
from dialects.systolic import (
    IM2COL_LIMITS,
    MAX_VIEW_EXTENT,
    ArrayConfig,
    GemmProblem,
    Im2colView,
    MatrixView,
    View,
)

ACC_BYTES = 4  # i32 or f32 accumulators
ALIGNMENT = 64  # bytes; scratchpad regions start on this boundary
STREAM_SLOTS = 4  # the most tiles of one streamed operand on chip at once (3 in flight ahead)


def _aligned(size: int) -> int:
    return -(-size // ALIGNMENT) * ALIGNMENT


class NotOnArray(Exception):
    """The op cannot run on the array with this configuration; the message says why."""


@dataclass(frozen=True)
class ElementBytes:
    """Bytes per element of a kernel's DRAM operands; 0 for one it does not have."""

    operands: int  # x and w
    output: int  # y
    bias: int = 0
    scales: int = 0  # per-column requantization multipliers and shifts

    def of(self, operand: str) -> int:
        return {"x": self.operands, "w": self.operands, "y": self.output, "bias": self.bias,
                "scales": self.scales}[operand]

    @staticmethod
    def of_types(operand: Attribute, output: Attribute, bias: Attribute | None = None,
                 per_channel: bool = False) -> ElementBytes:
        def size(t: Attribute) -> int:
            return nn.numpy_dtype(t).itemsize

        return ElementBytes(size(operand), size(output), size(bias) if bias is not None else 0,
                            ACC_BYTES if per_channel else 0)


# --------------------------------------------------------------------------
# Operands in DRAM and the boxes copied from them
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """A box of a DRAM operand (`x`, `w` or `bias`), copied whole and
    contiguously into one scratchpad buffer."""

    operand: str
    start: tuple[int, ...]
    size: tuple[int, ...]

    @property
    def level(self) -> str:
        return "ifmap" if self.operand == "x" else "filter"

    @property
    def elements(self) -> int:
        return math.prod(self.size)


@dataclass(frozen=True)
class Layout:
    """Shapes of the kernel's DRAM buffers (`x`, `w`, `bias`, `scales`, `y`)
    and the geometry needed to cut them.

    Matmul: x [M, K], w [1, K, N], y [M, N]. Convolution: x [B, C, H, W],
    w [groups, K, N], y [B, groups * N, OH * OW]. bias [groups * N],
    scales [2, groups * N]. Convolution padding reads `pad_value`.
    """

    problem: GemmProblem
    sizes: ElementBytes
    pad_value: int = 0

    @property
    def conv(self):
        return self.problem.conv

    @property
    def images(self) -> int:
        return self.problem.input_shape[0] if self.conv else 1

    @property
    def pixels(self) -> int:
        """Output pixels (rows of X) per image."""
        return self.problem.m // self.images

    @property
    def out_w(self) -> int:
        return self.problem.output_shape[3] if self.conv else self.pixels

    def shapes(self) -> dict[str, tuple[int, ...]]:
        p = self.problem
        columns = {"bias": (p.groups * p.n,), "scales": (2, p.groups * p.n)}
        if self.conv is None:
            return {"x": (p.m, p.k), "w": (1, p.k, p.n), **columns, "y": (p.m, p.n)}
        b, _, oh, ow = p.output_shape
        return {"x": p.input_shape, "w": (p.groups, p.k, p.n), **columns, "y": (b, p.groups * p.n, oh * ow)}

    def whole(self, operand: str) -> Box:
        shape = self.shapes()[operand]
        return Box(operand, (0,) * len(shape), shape)

    def bytes_of(self, operand: str) -> int:
        return math.prod(self.shapes()[operand]) * self.sizes.of(operand)

    # -- X ------------------------------------------------------------------

    def input_rows(self, p0: int, p1: int) -> tuple[int, int]:
        """Rows [lo, hi) of the input image that output pixels [p0, p1) read
        (at least one row, so a band is never empty)."""
        conv = self.conv
        assert conv is not None
        height = self.problem.input_shape[2]
        oh0, oh1 = p0 // self.out_w, (p1 - 1) // self.out_w
        lo = oh0 * conv.stride[0] - conv.padding[0]
        hi = oh1 * conv.stride[0] - conv.padding[0] + (conv.kernel[0] - 1) * conv.dilation[0] + 1
        lo, hi = max(0, lo), min(height, hi)
        if lo >= hi:  # every row these pixels read is padding: any one row will do
            lo = min(lo, height - 1)
            hi = lo + 1
        return lo, hi

    def channels(self, group: int, k0: int, k1: int) -> tuple[int, int]:
        """Input channels [lo, hi) holding window elements [k0, k1) of `group`."""
        conv = self.conv
        assert conv is not None
        window = conv.kernel[0] * conv.kernel[1]
        first = group * (self.problem.input_shape[1] // conv.groups)
        return first + k0 // window, first + (k1 - 1) // window + 1

    def x_box(self, image: int, group: int, p0: int, p1: int, k0: int, k1: int) -> Box:
        """The smallest box of x holding rows [p0, p1) x columns [k0, k1) of
        the im2col matrix of `image` and `group`."""
        if self.conv is None:
            return Box("x", (p0, k0), (p1 - p0, k1 - k0))
        c0, c1 = self.channels(group, k0, k1)
        h0, h1 = self.input_rows(p0, p1)
        width = self.problem.input_shape[3]
        return Box("x", (image, c0, h0, 0), (1, c1 - c0, h1 - h0, width))

    def x_view(self, box: Box, image: int, group: int, p0: int, p1: int, k0: int, k1: int) -> View:
        """Rows [p0, p1) x columns [k0, k1) of the im2col matrix, read from `box`."""
        if self.conv is None:
            return MatrixView(p1 - p0, k1 - k0, (p0 - box.start[0]) * box.size[1] + k0 - box.start[1],
                              box.size[1], 1)
        conv = self.conv
        window = conv.kernel[0] * conv.kernel[1]
        _, c_box, h_box, w_box = box.size
        first_channel = group * (self.problem.input_shape[1] // conv.groups)
        skipped = box.start[1] - first_channel  # channels of the group before the box
        plane = h_box * w_box
        offset = (image - box.start[0]) * c_box * plane
        if skipped < 0:  # a box holding several groups: start at this group's first channel
            offset += -skipped * plane
            skipped = 0
        return Im2colView(
            rows=p1 - p0, cols=k1 - k0, offset=offset, pixel0=p0, k0=k0 - skipped * window,
            out_w=self.out_w, kernel_h=conv.kernel[0], kernel_w=conv.kernel[1],
            stride_h=conv.stride[0], stride_w=conv.stride[1],
            dilation_h=conv.dilation[0], dilation_w=conv.dilation[1],
            row0=conv.padding[0] + box.start[2], col0=conv.padding[1], band_h=h_box, band_w=w_box,
            channel_stride=plane, pad_value=self.pad_value,
        )

    # -- W ------------------------------------------------------------------

    def w_box(self, group: int, k0: int, k1: int, n0: int, n1: int) -> Box:
        return Box("w", (group, k0, n0), (1, k1 - k0, n1 - n0))

    def w_view(self, box: Box, group: int, k0: int, k1: int, n0: int, n1: int) -> MatrixView:
        """Rows [k0, k1) x columns [n0, n1) of group `group`'s weight matrix."""
        _, k_box, n_box = box.size
        offset = ((group - box.start[0]) * k_box + k0 - box.start[1]) * n_box + n0 - box.start[2]
        return MatrixView(k1 - k0, n1 - n0, offset, n_box, 1)


# --------------------------------------------------------------------------
# Output panels
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    """Outputs gathered in the ofmap scratchpad before post-processing:
    pixels [p0, p1) of `image` x output columns [n0, n1) of `group`. The
    accumulators are row-major [pixels, columns], `pitch` elements a row.
    A convolution's output is transposed (NCHW), so the output unit walks
    it a column at a time and reads a column of accumulators per cycle; an
    odd pitch spreads those over the banks of the hardware's accumulator
    memory, where an even one would put several in one bank."""

    index: int
    image: int
    group: int
    p0: int
    p1: int
    n0: int
    n1: int
    odd_pitch: bool = False

    @property
    def rows(self) -> int:
        return self.p1 - self.p0

    @property
    def cols(self) -> int:
        return self.n1 - self.n0

    @property
    def pitch(self) -> int:
        return self.cols | 1 if self.odd_pitch else self.cols

    def acc_view(self) -> MatrixView:
        return MatrixView(self.rows, self.cols, 0, self.pitch, 1)


def output_box(layout: Layout, panel: Panel) -> Box:
    """Where a panel's outputs go in y, and the shape of its output buffer."""
    if layout.conv is None:
        return Box("y", (panel.p0, panel.n0), (panel.rows, panel.cols))
    channel = panel.group * layout.problem.n + panel.n0
    return Box("y", (panel.image, channel, panel.p0), (1, panel.cols, panel.rows))


def output_view(layout: Layout, panel: Panel) -> MatrixView:
    """The panel as (pixel, column) in its output buffer (row-major `output_box` size)."""
    if layout.conv is None:
        return MatrixView(panel.rows, panel.cols, 0, panel.cols, 1)
    return MatrixView(panel.rows, panel.cols, 0, 1, panel.rows)


def bias_view(layout: Layout, panel: Panel) -> MatrixView:
    return MatrixView(1, panel.cols, panel.group * layout.problem.n + panel.n0, 0, 1)


def scales_view(layout: Layout, panel: Panel) -> MatrixView:
    """The panel's columns of the multipliers (row 0) and shifts (row 1)."""
    p = layout.problem
    return MatrixView(2, panel.cols, panel.group * p.n + panel.n0, p.groups * p.n, 1)


# --------------------------------------------------------------------------
# Steps: what the array does, in order
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Operand:
    """A view of a box, as an array op reads it."""

    box: Box
    view: View


@dataclass(frozen=True)
class Preload:
    source: Operand


@dataclass(frozen=True)
class Stream:
    left: Operand
    top: Operand | None = None


@dataclass(frozen=True)
class Drain:
    panel: Panel
    view: MatrixView
    accumulate: bool


@dataclass(frozen=True)
class Finish:
    """The panel is complete: post-process it and write it back."""

    panel: Panel


Step = Preload | Stream | Drain | Finish


def step_operands(step: Step) -> list[Operand]:
    if isinstance(step, Preload):
        return [step.source]
    if isinstance(step, Stream):
        return [step.left] + ([step.top] if step.top is not None else [])
    return []


@dataclass(frozen=True)
class Region:
    """A fixed part of a scratchpad: `name` is an operand held resident
    (`x`, `w`, `bias`) or a slot (`slot0`, `acc1`, ...)."""

    name: str
    offset: int
    size: int


# --------------------------------------------------------------------------
# The plan: residency and tile sizes
# --------------------------------------------------------------------------


def _split(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(total, start + size)


@dataclass(frozen=True)
class Plan:
    """Residency of X and W and the tile sizes of everything streamed.

    `panel` is the most pixels (ws) or columns (is) one panel holds;
    `chunk` the most rows (ws: output pixels, is: columns of W, os: steps of
    K) one streamed tile holds; `panel_slots` how many panels are in flight.
    """

    layout: Layout
    config: ArrayConfig
    x_resident: bool
    w_resident: bool
    panel: int
    chunk: int
    panel_slots: int = 1

    @property
    def problem(self) -> GemmProblem:
        return self.layout.problem

    @property
    def has_bias(self) -> bool:
        return self.layout.sizes.bias > 0

    @property
    def has_scales(self) -> bool:
        return self.layout.sizes.scales > 0

    def column_boxes(self) -> list[Box]:
        """The per-column operands the output unit reads: bias and scales, resident."""
        return [self.layout.whole(name) for name, present in (("bias", self.has_bias), ("scales", self.has_scales))
                if present]

    def resident_boxes(self) -> list[Box]:
        boxes = self.column_boxes()
        if self.x_resident:
            boxes.append(self.layout.whole("x"))
        if self.w_resident:
            boxes.append(self.layout.whole("w"))
        return boxes

    def steps(self) -> Iterator[Step]:
        return {"ws": self._weight_stationary, "is": self._input_stationary,
                "os": self._output_stationary}[self.config.dataflow]()

    def regions(self) -> dict[str, list[Region]]:
        """The fixed regions of each scratchpad, in address order: resident
        operands, then 2 to `STREAM_SLOTS` slots for a streamed operand (as
        many as fit: the tile in use and the ones prefetched behind it); in
        the ofmap scratchpad `panel_slots` accumulator and output panels."""
        element = self.layout.sizes
        resident = {box: box.elements * element.of(box.operand) for box in self.resident_boxes()}
        streamed = {"ifmap": 0, "filter": 0}
        acc = out = 0
        for step in self.steps():
            for operand in step_operands(step):
                if operand.box not in resident:
                    level = operand.box.level
                    streamed[level] = max(streamed[level], operand.box.elements * element.of(operand.box.operand))
            if isinstance(step, Finish):
                acc = max(acc, step.panel.rows * step.panel.pitch * ACC_BYTES)
                out = max(out, step.panel.rows * step.panel.cols * element.output)
        sizes: dict[str, list[tuple[str, int]]] = {"ifmap": [], "filter": [], "ofmap": []}
        for box, size in resident.items():
            sizes[box.level].append((box.operand, size))
        for level, size in streamed.items():
            if size:
                room = self.config.scratchpad_bytes(level) - sum(_aligned(s) for _, s in sizes[level])
                slots = max(2, min(STREAM_SLOTS, room // _aligned(size)))
                sizes[level] += [(f"slot{i}", size) for i in range(slots)]
        slots = range(self.panel_slots)
        sizes["ofmap"] = [(f"acc{i}", acc) for i in slots] + [(f"out{i}", out) for i in slots]
        out_regions: dict[str, list[Region]] = {}
        for level, named in sizes.items():
            offset, placed = 0, []
            for name, size in named:
                placed.append(Region(name, offset, size))
                offset += _aligned(size)
            out_regions[level] = placed
        return out_regions

    def overflow(self) -> tuple[str, int] | None:
        """The first scratchpad the schedule does not fit, with the bytes it needs."""
        for level, placed in self.regions().items():
            need = placed[-1].offset + placed[-1].size if placed else 0
            if need > self.config.scratchpad_bytes(level):
                return level, need
        return None

    # -- helpers --------------------------------------------------------------

    def _x(self, image: int, group: int, p0: int, p1: int, k0: int, k1: int, transpose: bool = False) -> Operand:
        layout = self.layout
        box = layout.whole("x") if self.x_resident else layout.x_box(image, group, p0, p1, k0, k1)
        view = layout.x_view(box, image, group, p0, p1, k0, k1)
        return Operand(box, view.transposed() if transpose else view)

    def _w(self, group: int, k0: int, k1: int, n0: int, n1: int, transpose: bool = False) -> Operand:
        layout = self.layout
        box = layout.whole("w") if self.w_resident else layout.w_box(group, k0, k1, n0, n1)
        view = layout.w_view(box, group, k0, k1, n0, n1)
        return Operand(box, view.transposed() if transpose else view)

    def _pixel_tiles(self, size: int) -> Iterator[tuple[int, int, int]]:
        """(image, p0, p1) tiles of at most `size` pixels, never across images."""
        for image in range(self.layout.images):
            for p0, p1 in _split(self.layout.pixels, size):
                yield image, p0, p1

    def _panel_row_tiles(self) -> Iterator[tuple[int, int, int]]:
        """Pixel ranges of ws panels: whole output rows for convolutions."""
        size = self.panel
        if self.layout.conv is not None:
            size = max(1, size // self.layout.out_w) * self.layout.out_w
        return self._pixel_tiles(size)

    def _stream_chunks(self, p0: int, p1: int) -> Iterator[tuple[int, int]]:
        """ws stream tiles of a panel: whole output rows for convolutions."""
        size = min(self.chunk, MAX_VIEW_EXTENT)
        if self.layout.conv is not None and not self.x_resident:
            size = max(1, size // self.layout.out_w) * self.layout.out_w
        for a, b in _split(p1 - p0, size):
            yield p0 + a, p0 + b

    def _k_chunk(self) -> int:
        """os stream tiles along K: whole channels for convolutions."""
        size = min(self.chunk, MAX_VIEW_EXTENT)
        if self.layout.conv is not None:
            window = self.layout.conv.kernel[0] * self.layout.conv.kernel[1]
            size = max(1, size // window) * window
        return size

    # -- the three dataflows ----------------------------------------------------

    def _weight_stationary(self) -> Iterator[Step]:
        p, rows, cols = self.problem, self.config.rows, self.config.cols
        odd_pitch = self.layout.conv is not None  # the hardware's output unit walks a conv panel by columns
        index = 0
        for group in range(p.groups):
            for image, p0, p1 in self._panel_row_tiles():
                for n0, n1 in _split(p.n, cols):
                    panel = Panel(index, image, group, p0, p1, n0, n1, odd_pitch)
                    index += 1
                    for k0, k1 in _split(p.k, rows):
                        yield Preload(self._w(group, k0, k1, n0, n1))
                        for q0, q1 in self._stream_chunks(p0, p1):
                            yield Stream(self._x(image, group, q0, q1, k0, k1))
                        yield Drain(panel, panel.acc_view(), k0 > 0)
                    yield Finish(panel)

    def _input_stationary(self) -> Iterator[Step]:
        p, rows, cols = self.problem, self.config.rows, self.config.cols
        index = 0
        for group in range(p.groups):
            for image, p0, p1 in self._pixel_tiles(cols):
                for b0, b1 in _split(p.n, self.panel):
                    panel = Panel(index, image, group, p0, p1, b0, b1)
                    index += 1
                    for k0, k1 in _split(p.k, rows):
                        yield Preload(self._x(image, group, p0, p1, k0, k1, transpose=True))
                        for n0, n1 in _split(b1 - b0, min(self.chunk, MAX_VIEW_EXTENT)):
                            yield Stream(self._w(group, k0, k1, b0 + n0, b0 + n1, transpose=True))
                        yield Drain(panel, panel.acc_view().transposed(), k0 > 0)
                    yield Finish(panel)

    def _output_stationary(self) -> Iterator[Step]:
        p, rows, cols = self.problem, self.config.rows, self.config.cols
        index = 0
        for group in range(p.groups):
            for n0, n1 in _split(p.n, cols):
                for image, p0, p1 in self._pixel_tiles(rows):
                    panel = Panel(index, image, group, p0, p1, n0, n1)
                    index += 1
                    for k0, k1 in _split(p.k, self._k_chunk()):
                        yield Stream(self._x(image, group, p0, p1, k0, k1), self._w(group, k0, k1, n0, n1))
                    yield Drain(panel, panel.acc_view(), False)
                    yield Finish(panel)


# --------------------------------------------------------------------------
# Choosing the plan
# --------------------------------------------------------------------------


def panel_slots(config: ArrayConfig, element_bytes: int) -> int:
    """Panels in flight at once. A ws or is panel spans whole folds, long
    enough to post-process and write back the previous one, so one slot
    suffices; an os panel is one fold, so up to three (as many as fit) keep
    the output unit and the write-back off the array's critical path."""
    if config.dataflow != "os":
        return 1
    outputs = config.rows * config.cols
    slot = _aligned(outputs * ACC_BYTES) + _aligned(outputs * element_bytes)
    return max(1, min(3, config.ofmap_bytes // slot))


def _largest(limit: int, fits) -> int:
    """The largest n in [1, limit] with fits(n), by bisection (fits is monotone); 0 if none."""
    if limit < 1 or not fits(1):
        return 0
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _check_conv_limits(problem: GemmProblem) -> None:
    conv = problem.conv
    if conv is None:
        return
    _, _, height, width = problem.input_shape
    _, _, out_h, out_w = problem.output_shape
    values = {"kernel": max(conv.kernel), "stride": max(conv.stride), "dilation": max(conv.dilation),
              "padding": max(conv.padding), "width": max(width, out_w), "height": height + conv.padding[0],
              "pixels": out_h * out_w, "window": problem.k}
    for what, value in values.items():
        if value > IM2COL_LIMITS[what]:
            raise NotOnArray(f"the im2col unit handles {what} up to {IM2COL_LIMITS[what]}, this layer needs {value}")


def make_plan(problem: GemmProblem, config: ArrayConfig, sizes: ElementBytes, pad_value: int = 0) -> Plan:
    """Residency and tile sizes for `problem`, or NotOnArray saying what does not fit.

    Panel and chunk sizes start from the largest the scratchpads could take
    and are halved until the exact footprint of the schedule fits.
    """
    _check_conv_limits(problem)
    layout = Layout(problem, sizes, pad_value)
    columns = sum(_aligned(layout.bytes_of(name)) for name in ("bias", "scales") if sizes.of(name))
    x_resident = layout.bytes_of("x") <= config.ifmap_bytes
    w_resident = columns + layout.bytes_of("w") <= config.filter_bytes
    per_output = ACC_BYTES + sizes.output  # an accumulator and its post-processed value
    row = {"ws": min(config.cols, problem.n), "is": min(config.cols, problem.m), "os": 1}[config.dataflow]
    slots = panel_slots(config, sizes.output)
    panel = max(1, min(MAX_VIEW_EXTENT, config.ofmap_bytes // (slots * row * per_output)))
    chunk = max(problem.m, problem.n, problem.k)
    plan = Plan(layout, config, x_resident, w_resident, panel, chunk, slots)
    while True:
        over = plan.overflow()
        if over is None:
            return plan
        level, need = over
        shrink = "panel" if level == "ofmap" else "chunk"
        size = getattr(plan, shrink) // 2
        if size < 1:
            raise NotOnArray(
                f"one {config.dataflow} fold of this {problem.m}x{problem.k}x{problem.n} product needs {need} "
                f"bytes of the {config.scratchpad_bytes(level)}-byte {level} scratchpad")
        plan = replace(plan, **{shrink: size})
