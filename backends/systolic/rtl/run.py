"""Run a compiled program on the accelerator's Verilog under Verilator.

The Verilog depends only on the hardware parameters (`rtl_config`), so
programs for the same array share one export and one Verilator build; the
program and the DRAM's banks are `$readmemh` files read at time zero from
the run's directory.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backends.rtl import verilator
from backends.rtl.export import export_verilog
from backends.rtl.netlist import design
from backends.systolic.codegen import Compiled
from backends.systolic.rtl import design as systolic_design
from backends.systolic.rtl.program import check_program, cycle_limit, images, rtl_config
from compiler.diagnostics import InternalError
from compiler.files import write_tree

HARNESS = verilator.Harness(systolic_design.TOP, scalars=("cycles", "error"),
                            readout_address="dbg_addr", readout_data="dbg_data", readout_latency=1)


@functools.cache
def verilog(config: systolic_design.RtlConfig) -> dict[str, str]:
    """The accelerator's Verilog files for these parameters."""
    return export_verilog(design(systolic_design.build(config).finish()))


@dataclass
class RtlRun:
    outputs: dict[str, np.ndarray]
    cycles: int
    dram: np.ndarray


def run_rtl(compiled: Compiled, inputs: dict[str, np.ndarray]) -> RtlRun:
    """Execute the program on the RTL; outputs are read back from its DRAM."""
    check_program(compiled)
    config = rtl_config(compiled)
    build = verilator.build(verilog(config), HARNESS)
    with tempfile.TemporaryDirectory(prefix="loom-rtl-") as work:
        workdir = Path(work)
        write_tree(workdir, images(compiled, inputs, config))
        result = build.run(workdir, cycle_limit(compiled), 0, compiled.dram_bytes)
    if not result.done or result.scalars["error"]:
        raise InternalError(f"the RTL did not halt cleanly (done={result.done}, error={result.scalars['error']}, "
                            f"after {result.ticks} cycles)")
    dram = np.array(result.words, np.uint8)
    return RtlRun({name: place.read(dram) for name, place in compiled.outputs.items()}, result.scalars["cycles"],
                  dram)
