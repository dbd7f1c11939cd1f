"""A model compiled for the systolic accelerator, run on its simulator.

`run` loads the DRAM image (constants) and the inputs into a fresh DRAM,
executes the program, and lets the host run the nn ops the array cannot
(reference-interpreter kernels on DRAM contents) when the program reaches
their `host` instruction. The report holds the host/accelerator split and
the layers from the start, and once run the simulator's counts for the
whole program and per layer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from backends.systolic import isa
from backends.systolic.codegen import Compiled, Place
from backends.systolic.simulator import Counters, Result, Simulator
from compiler.artifact import Artifact, ModelSignature
from compiler.files import write_atomic
from compiler.interpreter import evaluate


def _counts(counters: Counters, pes: int) -> dict[str, Any]:
    return {
        "cycles": counters.cycles,
        "compute_cycles": counters.compute_cycles,
        "stall_cycles": counters.stall_cycles,
        "fill_cycles": counters.fill_cycles,
        "stream_cycles": counters.stream_cycles,
        "drain_cycles": counters.drain_cycles,
        "utilization": counters.utilization(pes),
        "macs": counters.macs,
        "dram_bytes": counters.dram_bytes,
        "dram_read_bytes": counters.dram_read_bytes,
        "dram_write_bytes": counters.dram_write_bytes,
        "sram_reads": counters.sram_reads,
        "sram_writes": counters.sram_writes,
        "dma_cycles": counters.dma_cycles,
        "dma_overlap_cycles": counters.overlap_cycles,
        "post_cycles": counters.post_cycles,
    }


class SystolicArtifact(Artifact):
    def __init__(self, compiled: Compiled, signature: ModelSignature):
        super().__init__("systolic", signature)
        self.compiled = compiled
        config = compiled.config
        self.report.update(
            array=f"{config.rows}x{config.cols}",
            dataflow=config.dataflow,
            instructions=len(compiled.program),
            program_bytes=isa.HEADER.size + len(compiled.program) * isa.INSTRUCTION_BYTES,
            dram_footprint_bytes=compiled.dram_bytes,
            host_ops=[{"op": call.kind, "reason": call.reason} for call in compiled.host_calls],
            layers=[{"name": layer.name, "fused": layer.fused, **layer.problem} for layer in compiled.layers],
        )
        self.last_result: Result | None = None

    def _execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        compiled = self.compiled
        dram = np.zeros(compiled.dram_bytes, np.uint8)
        dram[:compiled.image.size] = compiled.image
        for name, place in compiled.inputs.items():
            place.write(dram, inputs[name])

        def host(index: int) -> None:
            call = compiled.host_calls[index]
            call.result.write(dram, evaluate(call.op, [p.read(dram) for p in call.operands]))

        result = Simulator(compiled.config).run(compiled.program, dram, host)
        self.last_result = result
        self.fill_report(result)
        return {name: place.read(dram) for name, place in compiled.outputs.items()}

    def fill_report(self, result: Result) -> None:
        config = self.compiled.config
        pes = config.rows * config.cols
        total = result.total
        self.report.update(_counts(total, pes))
        self.report.update(
            overall_utilization=total.macs / (total.cycles * pes) if total.cycles else 0.0,
            time_s=total.cycles / config.clock_hz,
            sim_wall_time_s=result.wall_time_s,
            sim_macs_per_s=total.macs / result.wall_time_s if result.wall_time_s else 0.0,
            layers=[{"name": layer.name, "fused": layer.fused, **layer.problem, **_counts(counters, pes)}
                    for layer, counters in zip(self.compiled.layers, result.layers)],  # counts once run
        )

    def emit(self, kind: str, path: str) -> list[str]:
        """`asm`: the program as text; `bin`: the program as binary; `dram`:
        the initial DRAM image and a JSON map of where inputs and outputs go;
        `verilog`: a directory with the accelerator's RTL, the program and its
        data as memory images, and a Verilator testbench (int8 programs)."""
        target = Path(path)
        if kind == "asm":
            write_atomic(target, isa.disassemble(self.compiled.program))
            return [str(target)]
        if kind == "bin":
            write_atomic(target, isa.to_binary(self.compiled.program))
            return [str(target)]
        if kind == "dram":
            layout = target.with_suffix(".json")

            def describe(place: Place) -> dict[str, Any]:
                return {"address": place.address, "shape": list(place.shape), "dtype": str(place.dtype)}

            compiled = self.compiled
            write_atomic(target, compiled.image.tobytes())
            write_atomic(layout, json.dumps({
                "dram_bytes": compiled.dram_bytes,
                "inputs": {k: describe(p) for k, p in compiled.inputs.items()},
                "outputs": {k: describe(p) for k, p in compiled.outputs.items()},
                "host_ops": [call.kind for call in compiled.host_calls],
            }, indent=2, sort_keys=True) + "\n")
            return [str(target), str(layout)]
        if kind == "verilog":
            from backends.systolic.rtl.emit import emit_verilog

            return emit_verilog(self.compiled, path)
        return super().emit(kind, path)
