"""The `pim` target: bank-level processing-in-memory units in an HBM2 stack, on a DRAM-timing simulator."""

from __future__ import annotations

from xdsl.dialects.builtin import ModuleOp

from backends.base import Backend, CompileOptions
from backends.pim.artifact import PimArtifact
from backends.pim.program import build_program
from compiler.artifact import ModelSignature
from compiler.pass_manager import quote_option
from passes.pim_map import DEFAULT_TARGET


def pim_pipeline(options: CompileOptions) -> str:
    """nn -> GEMVs placed on the units with their matrices laid out, the rest
    left to the host -> each placed product expanded into broadcast, MAC,
    read-out and host reduction. `extra["pim_precision"]` ('f16') and
    `extra["pim_mode"]` (all-bank, per-bank, host) override the cost model."""
    spelled = [f"target-config={quote_option(options.target_config or DEFAULT_TARGET)}"]
    for key, option in (("pim_precision", "precision"), ("pim_mode", "mode")):
        if options.extra.get(key):
            spelled.append(f"{option}={quote_option(str(options.extra[key]))}")
    return f"pim-map{{{' '.join(spelled)}}},dce,pim-expand"


class PimBackend(Backend):
    name = "pim"
    description = "HBM-PIM style bank units on a command-level DRAM-timing simulator (GEMV on PIM, rest on the host)"
    emit_kinds = ("commands", "bin", "trace", "verilog")

    def pipeline(self, options: CompileOptions) -> str:
        return pim_pipeline(options)

    def build(self, module: ModuleOp, signature: ModelSignature, options: CompileOptions) -> PimArtifact:
        return PimArtifact(build_program(module), signature,
                           check_timing=bool(options.extra.get("pim_check_timing", True)))
