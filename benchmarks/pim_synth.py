"""FPGA resources and Fmax of the PIM bank unit's Verilog on a Lattice ECP5.

    .venv/bin/python benchmarks/pim_synth.py

The unit (`pim_unit`: command decoder, register file, 32 i8 x i8 -> i32 MAC
lanes, read-out) is generated for the `pim-hbm` description as in `loom
compile --target pim --emit verilog`, synthesized alone (the behavioural
banks and the trace replay are simulation only) with yosys `synth_ecp5`
(the YoWASP pip build). Prints LUT4, flip-flop, DSP (MULT18X18D), block RAM
(DP16KD), LUT RAM and carry counts. There is no Fmax: the unit's ports (a
command word, the host's data word, the bank's column, the read-out column:
about 870 bits) are wider than any ECP5 package has pins, so nextpnr cannot
place it alone; beside a DRAM bank they are on-die wires, not pins.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from backends.pim.rtl.design import UNIT
from backends.pim.rtl.images import rtl_config
from backends.pim.rtl.run import unit_verilog
from backends.rtl import synth
from compiler.targets import load_target
from passes.pim_map import pim_config


def main() -> None:
    config = rtl_config(pim_config(load_target("pim-hbm")), 1)
    print(f"ECP5 (synth_ecp5); {UNIT} with {config.lanes} i8 lanes, {config.grf} input registers of "
          f"{config.column_bits} bits, {config.accs} accumulators of {config.acc_bits} bits\n")
    print("| unit | LUT4 | FF | DSP (MULT18X18D) | BRAM (DP16KD) | LUT RAM | carry | tool time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="loom-synth-") as work:
        r = synth.synthesize(unit_verilog(config), UNIT, Path(work))
    seconds = time.perf_counter() - started
    print(f"| {UNIT} | {r.luts} | {r.ffs} | {r.dsps} | {r.brams} | {r.lutram} | {r.carry} | {seconds:.0f} s |")


if __name__ == "__main__":
    main()
