"""Schedule every engine's loop nests and choose dataflow or time multiplexing.

Reads the directives `hls-directives` attached and the device tables of the
hardware description (`target-config`, default fpga-ecp5): each nest gets a
modulo schedule (list schedule when not pipelined) with its achieved II,
every body op its start cycle (`hls.cycle`) and bound unit (`hls.unit`), every
engine its latency and DSP / LUT figures (`hls.estimate`), and the model
function the chosen mode (`hls.mode`) and whole-design estimates. The
models behind these numbers are in backends/fpga/hls_model.py and design.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass

from backends.fpga.design import schedule_model
from backends.fpga.device import FpgaDevice
from compiler.model import find_model


@dataclass(frozen=True)
class HlsSchedulePass(ModulePass):
    """Schedule engines' loop nests (modulo scheduling, DSP/LUT binding) and choose dataflow or time multiplexing."""

    name = "hls-schedule"

    target_config: str = ""
    mode: str = "auto"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        schedule_model(find_model(op, None), FpgaDevice.load(self.target_config or None), self.mode)
