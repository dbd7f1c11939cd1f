"""A model compiled for the FPGA target, run on the schedule simulator or its RTL.

The report holds the design from the start (mode and why, per-layer II,
latency, DSP / LUT / EBR estimates, whether it fits) and, once run, the
simulated cycles and time, which must equal the schedule's latency.
`run_rtl` runs the integer region on its Verilog under Verilator instead
(`backends/fpga/rtl`); `emit("verilog", dir)` writes that Verilog.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from backends.fpga.design import DesignEstimate
from backends.fpga.device import FpgaDevice
from backends.fpga.simulator import Simulator
from compiler.artifact import Artifact, ModelSignature, coerce_inputs
from compiler.model import find_model


def _layer(design: DesignEstimate, index: int) -> dict[str, Any]:
    engine = design.engines[index]
    main = max(engine.nests, key=lambda n: n.latency, default=None)
    return {
        "name": engine.name,
        "reuse_factor": engine.engine.reuse_factor.value.data if engine.engine.reuse_factor else None,
        "ii": (main.ii or 0) if main else 0,
        "lanes": main.lanes if main else 0,
        "start": engine.start,
        "latency": engine.latency,
        "dsp": engine.dsps,
        "lut": engine.luts,
        "bram": design.engine_brams(engine.name),
        "nests": [{"op": str(n.op.attributes.get("loom.op", n.op.name)).strip('"'), "ii": n.ii or 0,
                   "depth": n.depth, "iterations": n.iterations, "lanes": n.lanes, "latency": n.latency}
                  for n in engine.nests],
    }


class FpgaArtifact(Artifact):
    def __init__(self, module: ModuleOp, signature: ModelSignature, device: FpgaDevice, design: DesignEstimate,
                 chosen: str):
        super().__init__("fpga", signature)
        self.module = module
        self.device = device
        self.design = design
        self.simulator = Simulator(find_model(module, None), device)
        self.report.update(
            device=device.name,
            clock_hz=device.clock_hz,
            design_choice=chosen,
            **design.summary(),
            device_resources={"dsp": device.dsps, "lut": device.luts, "bram": device.ebr_blocks},
            utilization=design.utilization(),
            estimated_latency_s=design.latency / device.clock_hz,
            layers=[_layer(design, i) for i in range(len(design.engines))],
        )

    def _execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs, runs, cycles = self.simulator.run([inputs[spec.name] for spec in self.signature.inputs])
        self.report.update(cycles=cycles, latency_s=cycles / self.device.clock_hz,
                           simulated_layers=[{"name": r.name, "start": r.start, "cycles": r.cycles} for r in runs])
        return {spec.name: np.asarray(out, spec.numpy_dtype) for spec, out in zip(self.signature.outputs, outputs)}

    @functools.cached_property
    def rtl(self):
        """The integer region's Verilog (generated once)."""
        from backends.fpga.rtl.run import generate

        return generate(self.simulator.model, self.design)

    def run_rtl(self, **inputs: Any) -> dict[str, np.ndarray]:
        """Run with the integer region on its Verilog under Verilator; the report gains
        `rtl_cycles` (counted by the design), `rtl_expected_cycles` (the schedule's)
        and `rtl_total_cycles` (with the host nests' scheduled cycles)."""
        from backends.fpga.rtl.run import run

        arrays = coerce_inputs(self.signature, inputs)
        result = run(self.rtl, self.simulator.model, self.simulator, [arrays[s.name] for s in self.signature.inputs])
        self.report.update(rtl_cycles=result.rtl_cycles, rtl_expected_cycles=self.rtl.region.expected_cycles(),
                           rtl_total_cycles=result.cycles)
        return {spec.name: np.asarray(out, spec.numpy_dtype) for spec, out in zip(self.signature.outputs, result.outputs)}

    def emit(self, kind: str, path: str) -> list[str]:
        """`verilog`: a directory with the integer region's RTL, memory images, a
        Verilator testbench and a report."""
        if kind == "verilog":
            from backends.fpga.rtl.emit import emit_verilog

            return emit_verilog(self.rtl, self.report, Path(path))
        return super().emit(kind, path)
