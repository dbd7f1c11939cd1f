"""FPGA resources and Fmax of the systolic array's Verilog on a Lattice ECP5.

    .venv/bin/python benchmarks/systolic_synth.py [--scratchpad BYTES] [--dram BYTES] [ROWSxCOLS ...]

(default: 8 KiB scratchpads, a 16 KiB DRAM, a 512-instruction program
memory, arrays 4x4 and 8x8). Each array is generated as in `loom compile
--emit verilog`, synthesized with yosys `synth_ecp5` (flattened, so each
memory's output register folds into its block RAM; LUTs mapped with ABC's
classic mapper) and, when it fits the LFE5U-85F (CABGA381), placed and
routed with nextpnr-ecp5 (router2) at 100 MHz requested (both the YoWASP
pip builds). Prints LUT4, flip-flop, DSP (MULT18X18D), block RAM (DP16KD),
LUT RAM and carry counts, Fmax and the path that sets it. The program
memory is loaded through the design's `load_*` port, so its contents stay
out of the netlist.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from backends.fpga.device import FpgaDevice
from backends.rtl import synth
from backends.systolic.rtl.design import TOP, RtlConfig
from backends.systolic.rtl.run import verilog
from compiler.diagnostics import InternalError

PROGRAM_WORDS = 512
BANDWIDTH = 4
LATENCY = 100
DEVICE_LUTS = FpgaDevice.load("fpga-ecp5").luts  # LFE5U-85F: LUT4s, two per CCU2C carry cell


def measure(rows: int, cols: int, scratchpad: int, dram: int) -> tuple[synth.SynthReport, str, str, float]:
    """The synthesis report, nextpnr's verdict (Fmax or why there is none), the
    critical path and the tools' time."""
    config = RtlConfig(rows, cols, (scratchpad,) * 3, dram, PROGRAM_WORDS, BANDWIDTH, LATENCY)
    started = time.perf_counter()
    path = ""
    with tempfile.TemporaryDirectory(prefix="loom-synth-") as work:
        report = synth.synthesize(verilog(config), TOP, Path(work), lut_mapper="abc")
        if report.luts + 2 * report.carry > DEVICE_LUTS:
            placed = "does not fit"
        else:
            try:
                placed = f"{synth.place_and_route(TOP, Path(work), router='router2'):.2f}"
                slowest = synth.critical_path(Path(work))
                path = (f"{slowest.total_ns:.1f} ns ({slowest.logic_ns:.1f} logic, {slowest.routing_ns:.1f} "
                        f"routing, {slowest.cells} cells) from {slowest.start} to {slowest.end}")
            except InternalError as error:
                placed = f"nextpnr failed: {str(error).splitlines()[-1]}"
    return report, placed, path, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("arrays", nargs="*", default=["4x4", "8x8"])
    parser.add_argument("--scratchpad", type=int, default=8192, help="bytes in each scratchpad")
    parser.add_argument("--dram", type=int, default=16384, help="bytes of DRAM")
    args = parser.parse_args()
    print(f"ECP5 LFE5U-85F ({DEVICE_LUTS} LUT4); scratchpads {args.scratchpad} B each, DRAM {args.dram} B, "
          f"{BANDWIDTH} B/cycle DMA\n")
    print("| array | LUT4 | FF | DSP | BRAM | LUT RAM | carry | Fmax (MHz) | tool time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    paths = {}
    for array in args.arrays:
        rows, cols = map(int, array.split("x"))
        r, placed, paths[array], seconds = measure(rows, cols, args.scratchpad, args.dram)
        print(f"| {array} | {r.luts} | {r.ffs} | {r.dsps} | {r.brams} | {r.lutram} | {r.carry} | {placed} | "
              f"{seconds:.0f} s |", flush=True)
    for array, path in paths.items():
        if path:
            print(f"\n{array} critical path: {path}")


if __name__ == "__main__":
    main()
