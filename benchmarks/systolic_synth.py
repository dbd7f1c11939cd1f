"""FPGA resources and Fmax of the systolic array's Verilog on a Lattice ECP5.

    .venv/bin/python benchmarks/systolic_synth.py [ROWSxCOLS ...]     (default: 4x4 8x8)

Each array is generated as in `loom compile --emit verilog`, synthesized with
yosys `synth_ecp5` and placed and routed with nextpnr-ecp5 on an LFE5U-85F
(CABGA381, 100 MHz requested), both the YoWASP pip builds. Prints LUT4,
flip-flop, DSP (MULT18X18D), block RAM (DP16KD), LUT RAM and carry counts and
the Fmax nextpnr achieved.

The memories here are tiny (256 B ifmap and filter, 512 B ofmap, 256 B DRAM,
32 instructions): the timing model lets every lane of a view, an im2col
gather, a skewed drain column or a DMA beat address any byte in the same
cycle, so the design gives each lane its own scratchpad port and yosys maps
the scratchpads to flip-flops and read multiplexers, whose size rather than
the array dominates the figures. The program memory is loaded through the
design's `load_*` port, so its contents stay out of the netlist. The tools
take minutes per design (mostly ABC9).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from backends.rtl import synth
from backends.systolic.rtl.design import TOP, RtlConfig
from backends.systolic.rtl.run import verilog

SPAD_BYTES = (256, 256, 512)
DRAM_BYTES = 256
PROGRAM_WORDS = 32
BANDWIDTH = 4
LATENCY = 100


def measure(rows: int, cols: int) -> tuple[synth.SynthReport, float]:
    config = RtlConfig(rows, cols, SPAD_BYTES, DRAM_BYTES, PROGRAM_WORDS, BANDWIDTH, LATENCY)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="loom-synth-") as work:
        report = synth.synthesize(verilog(config), TOP, Path(work))
        report.fmax_mhz = synth.place_and_route(TOP, Path(work))
    return report, time.perf_counter() - started


def main(arrays: list[str]) -> None:
    print(f"ECP5 LFE5U-85F; scratchpads {SPAD_BYTES} B, DRAM {DRAM_BYTES} B, {BANDWIDTH} B/cycle DMA\n")
    print("| array | LUT4 | FF | DSP (MULT18X18D) | BRAM (DP16KD) | LUT RAM | carry | Fmax (MHz) | tool time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for array in arrays:
        rows, cols = map(int, array.split("x"))
        r, seconds = measure(rows, cols)
        print(f"| {array} | {r.luts} | {r.ffs} | {r.dsps} | {r.brams} | {r.lutram} | {r.carry} | "
              f"{r.fmax_mhz:.1f} | {seconds:.0f} s |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["4x4", "8x8"])
