"""A model compiled for the PIM stack, run on the command-level simulator.

`run` stores the resident matrices (constants, and model inputs the layout
places in the banks, such as a KV cache) in a fresh stack, then executes the
program in order. PIM kernels run on the simulator, which computes their
results from the commands; host steps run the reference kernels. Time is
shared out by a list schedule over two engines, the stack and the host: a
step starts when its operands are ready and its engine is free. With
`dual_row_buffers` the engines overlap (NeuPIMs); without, they take turns.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from xdsl.dialects.builtin import StringAttr
from xdsl.ir import OpResult, SSAValue

from backends.pim import commands
from backends.pim.checker import check_trace
from backends.pim.program import Program, Step, host_energy_pj
from backends.pim.simulator import Stack
from compiler.artifact import Artifact, ModelSignature, random_inputs
from compiler.files import write_atomic
from compiler.interpreter import evaluate
from dialects import nn
from dialects.pim import (
    LAYER_ATTR,
    BroadcastOp,
    MacOp,
    ReadoutOp,
    ReduceOp,
    broadcast_values,
    reduce_values,
)


class PimArtifact(Artifact):
    def __init__(self, program: Program, signature: ModelSignature, check_timing: bool = True):
        super().__init__("pim", signature)
        self.program = program
        self.check_timing = check_timing
        config = program.config
        kernels = [s for s in program.steps if s.kernel is not None]
        self.report.update(
            channels=config.channels,
            units=config.channels * config.units,
            clock_hz=config.clock_hz,
            resident_rows_per_bank=program.rows,
            program_commands=sum(s.kernel.commands for s in kernels),
            placement=[{"layer": _layer_of(s), "mode": s.kernel.mode, **_layout_summary(s)} for s in kernels],
            host_ops=sorted({s.op.name for s in program.steps if s.engine == "host"}),
        )
        self.stack: Stack | None = None
        self.returned_override: dict[tuple[int, int], Iterator[np.ndarray]] | None = None

    def run_with_returned(self, inputs: dict[str, np.ndarray],
                          returned: dict[tuple[int, int], Iterator[np.ndarray]]) -> dict[str, np.ndarray]:
        """Run with the words the host receives from each (channel, unit) taken
        from `returned` (another model of the units, such as their Verilog)."""
        self.returned_override = returned
        try:
            return self.run(**inputs)
        finally:
            self.returned_override = None

    def _execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        program, config = self.program, self.program.config
        stack = Stack(config, program.rows)
        stack.returned_override = self.returned_override
        values: dict[SSAValue, np.ndarray] = {}
        for spec, arg in zip(self.signature.inputs, program.function.body.block.args):
            values[arg] = inputs[spec.name]
        for layout, matrix in program.resident():
            stack.write_matrix(layout, _value_of(matrix, values))

        ready: dict[SSAValue, int] = {}
        free = {"pim": 0, "host": 0}
        shared = not config.overlap
        pim_cycles = host_cycles = 0
        host_energy = 0.0
        for step in program.steps:
            op = step.op
            start = max([ready.get(v, 0) for v in op.operands], default=0)
            if step.engine != "free":
                start = max(start, free["pim"], free["host"]) if shared else max(start, free[step.engine])
            operands = [_value_of(v, values) for v in op.operands]
            if step.engine == "pim":
                run, result = stack.run(step.kernel, start, operands[0] if isinstance(op, MacOp) else None)
                end = run.end
                pim_cycles += end - start
            else:
                result = _host_value(op, operands)
                end = start + step.host_cycles
                host_cycles += step.host_cycles
                host_energy += host_energy_pj(step, config)
            if step.engine != "free":
                free[step.engine] = end
            values[op.results[0]] = result
            ready[op.results[0]] = end
        cycles = max([0, *ready.values()])
        stack.finish(cycles)
        self.stack = stack
        counters = stack.counters
        energy = dict(counters.energy_pj)
        energy["host"] = host_energy
        self.report.update(
            cycles=cycles, pim_cycles=pim_cycles, host_cycles=host_cycles,
            overlapped_cycles=max(0, pim_cycles + host_cycles - cycles),
            time_s=cycles / config.clock_hz,
            energy_pj=sum(energy.values()),
            sim_wall_time_s=stack.sim_seconds,
            trace_commands=len(stack.trace),
            **counters.as_dict(),
        )
        self.report["energy_breakdown_pj"] = {k: round(v, 3) for k, v in sorted(energy.items())}
        if self.check_timing:
            violations = check_trace(stack.trace_array(), config)
            self.report["timing_violations"] = len(violations)
            self.report["timing_check"] = "passed" if not violations else str(violations[0])
        outputs = program.function.body.block.last_op.operands  # func.return
        return {spec.name: np.ascontiguousarray(_value_of(v, values), dtype=spec.numpy_dtype)
                for spec, v in zip(self.signature.outputs, outputs)}

    def emit(self, kind: str, path: str) -> list[str]:
        """`commands`: every kernel's per-channel streams as text; `bin`: the
        same as 64-bit command words; `trace`: the scheduled commands of a run
        (on seed-0 random inputs unless the artifact has run); `verilog`: a
        directory with the bank unit's Verilog, a testbench and each busy
        unit's memory images of such a run (int8 models)."""
        target = Path(path)
        if kind == "commands":
            lines = []
            for step in self.program.steps:
                if step.kernel is None:
                    continue
                lines.append(f"# {_layer_of(step)} ({step.kernel.mode})")
                for channel, program in enumerate(step.kernel.streams):
                    lines += [f"ch{channel} {commands.describe(r)}" for r in program]
            write_atomic(target, "\n".join(lines) + "\n")
            return [str(target)]
        if kind == "bin":
            words = [commands.encode(s) for step in self.program.steps if step.kernel is not None
                     for s in step.kernel.streams]
            write_atomic(target, np.concatenate(words or [np.zeros(0, np.uint64)]).astype("<u8").tobytes())
            return [str(target)]
        if kind == "trace":
            if self.stack is None:
                self.run(**random_inputs(self.signature, 0))
            assert self.stack is not None
            trace = self.stack.trace_array()
            order = np.lexsort((trace["channel"], trace["cycle"]))
            write_atomic(target, "".join(f"{int(r['cycle'])} ch{int(r['channel'])} {commands.describe(r)}\n"
                                         for r in trace[order]))
            return [str(target)]
        if kind == "verilog":
            from backends.pim.rtl.emit import emit_verilog

            return emit_verilog(self, path)
        return super().emit(kind, path)


def _layer_of(step: Step) -> str:
    layer = step.op.attributes.get(LAYER_ATTR)
    return layer.data if isinstance(layer, StringAttr) else step.op.name


def _layout_summary(step: Step) -> dict[str, Any]:
    layout = step.kernel.layout  # type: ignore[union-attr]
    return {"m": layout.m, "k": layout.k, "n": layout.n, "dtype": layout.unit_dtype, "splits": layout.splits,
            "rows_per_bank": layout.bank_rows, "commands": step.kernel.commands}  # type: ignore[union-attr]


def _value_of(value: SSAValue, values: dict[SSAValue, np.ndarray]) -> np.ndarray:
    if value not in values and isinstance(value, OpResult) and isinstance(value.op, nn.ConstantOp):
        values[value] = value.op.array()
    return values[value]


def _host_value(op, operands: list[np.ndarray]) -> np.ndarray:
    """The value of a host or free step."""
    if isinstance(op, BroadcastOp):
        return broadcast_values(operands[0], op.get_layout())
    if isinstance(op, ReadoutOp):
        return operands[0]
    if isinstance(op, ReduceOp):
        x, w = (operands[1], operands[2]) if len(operands) == 3 else (None, None)
        result_type = op.result.type
        return reduce_values(operands[0], op.get_layout(), tuple(result_type.get_shape()),
                             nn.numpy_dtype(result_type.element_type), x, w, op.zero_points())
    return evaluate(op, operands)

