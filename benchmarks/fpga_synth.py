"""The FPGA target's mlp RTL on a Lattice ECP5: estimates against yosys and nextpnr.

    .venv/bin/python benchmarks/fpga_synth.py [REUSE ...]     (default: 2048 8192)

For each reuse factor, samples/mlp.loom is quantized to int8 (random
calibration data), scheduled for fpga-ecp5, and its integer region is
generated as `loom compile --target fpga --emit verilog` writes it. The
estimate columns are the scheduler's figures for the nests in that region;
the synthesized ones come from yosys `synth_ecp5` (LUT4, CCU2C carry
cells of two LUTs each, TRELLIS_DPR16X4 LUT RAM, TRELLIS_FF, MULT18X18D,
DP16KD) and nextpnr-ecp5 on an LFE5U-85F (CABGA381, 100 MHz requested):
the LUTs it placed (TRELLIS_COMB, what the device's 83640 LUTs count and
the estimate predicts) and Fmax. Both tools are the YoWASP pip builds. The WebAssembly tools take
minutes per design. Prints a markdown table.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import compiler
from backends.base import CompileOptions
from backends.fpga.design import nests_area
from backends.fpga.rtl.region import Region
from backends.fpga.rtl.run import generate
from backends.fpga.rtl.top import TOP
from backends.rtl import synth
from backends.rtl.verilator import MEMORY_INIT_DEFINE
from compiler.model import find_model

ROOT = Path(__file__).resolve().parents[1]


def region_estimate(region: Region, device) -> dict[str, int]:
    """The scheduler's DSP / LUT / EBR figures for the nests and buffers of the region."""
    dsp, lut = nests_area(region.nests, device, shared=region.mode != "dataflow")
    bram = sum(layout.banks * device.ebr_blocks_for(layout.depth, layout.width)
               for layout in region.layouts.values() if layout.depth * layout.width > device.register_bits)
    return {"dsp": dsp, "lut": lut, "bram": bram}


def measure(reuse: int, calibration: Path) -> str:
    options = CompileOptions(quantize="int8", calibration=str(calibration), extra={"reuse_factor": reuse})
    artifact = compiler.compile(ROOT / "samples" / "mlp.loom", target="fpga", options=options)
    rtl = generate(find_model(artifact.module, None), artifact.design)
    estimate = region_estimate(rtl.region, artifact.device)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="loom-fpga-synth-") as work:
        workdir = Path(work)
        for name, text in rtl.initial_images().items():
            (workdir / name).write_text(text)
        report = synth.synthesize(rtl.sources, TOP, workdir, defines=(MEMORY_INIT_DEFINE,))
        report.fmax_mhz = synth.place_and_route(TOP, workdir)
        placed = json.loads((workdir / "pnr.json").read_text())["utilization"]["TRELLIS_COMB"]["used"]
    seconds = time.perf_counter() - started
    return (f"| {reuse} | {artifact.report['mode']} | {rtl.region.expected_cycles()} | {estimate['lut']} / {placed} | "
            f"{report.luts} + 2 x {report.carry} + {report.lutram} | {report.ffs} | {estimate['dsp']} / {report.dsps} | "
            f"{estimate['bram']} / {report.brams} | {report.fmax_mhz:.1f} | {seconds:.0f} s |")


def main(reuse_factors: list[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="loom-fpga-cal-") as work:
        calibration = Path(work) / "calibration.npz"
        np.savez(calibration, x=np.random.default_rng(0).standard_normal((8, 1, 784)).astype(np.float32))
        print("mlp int8 on ECP5 LFE5U-85F: estimate / synthesized\n")
        print("| reuse | mode | RTL cycles | LUTs (TRELLIS_COMB) | LUT4 + 2 x CCU2C + DPR16X4 | FF | DSP (MULT18X18D) "
              "| EBR (DP16KD) | Fmax (MHz) | tool time |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for reuse in reuse_factors:
            print(measure(reuse, calibration), flush=True)


if __name__ == "__main__":
    main([int(r) for r in sys.argv[1:]] or [2048, 8192])
