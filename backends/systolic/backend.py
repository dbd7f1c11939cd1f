"""The `systolic` target: a systolic array with scratchpads, run on a cycle-level simulator."""

from __future__ import annotations

from xdsl.dialects.builtin import ModuleOp

from backends.base import Backend, CompileOptions
from backends.systolic.artifact import SystolicArtifact
from backends.systolic.codegen import compile_program
from compiler.artifact import ModelSignature
from compiler.pass_manager import quote_option
from passes.convert_to_systolic import DEFAULT_TARGET, check_dataflow, parse_array


def systolic_pipeline(options: CompileOptions) -> str:
    """nn -> products and convolutions (with their epilogues) placed on the
    array, the rest marked for the host -> each placed op expanded into its
    fold schedule. `extra["array"]` (RxC) and `extra["dataflow"]` override
    the hardware description; without fusion, epilogues stay on the host."""
    array = options.extra.get("array") or ""
    dataflow = options.extra.get("dataflow") or ""
    if array:
        parse_array(array)
    if dataflow:
        check_dataflow(dataflow)
    spelled = [f"target-config={quote_option(options.target_config or DEFAULT_TARGET)}"]
    spelled += [f"array={quote_option(array)}"] if array else []
    spelled += [f"dataflow={quote_option(dataflow)}"] if dataflow else []
    spelled += [] if options.fusion else ["fuse-epilogues=false"]
    return f"convert-to-systolic{{{' '.join(spelled)}}},dce,tile-systolic"


class SystolicBackend(Backend):
    name = "systolic"
    description = "systolic array (ws/os/is) with scratchpads, on a cycle-level simulator; --array RxC, --dataflow"
    emit_kinds = ("asm", "bin", "dram", "verilog")

    def pipeline(self, options: CompileOptions) -> str:
        return systolic_pipeline(options)

    def build(self, module: ModuleOp, signature: ModelSignature, options: CompileOptions) -> SystolicArtifact:
        return SystolicArtifact(compile_program(module, signature), signature)
