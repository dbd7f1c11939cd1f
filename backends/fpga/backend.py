"""The `fpga` target: layer engines with HLS schedules, run on a cycle-level schedule simulator."""

from __future__ import annotations

from xdsl.dialects.builtin import ModuleOp

from backends.base import Backend, CompileOptions
from backends.fpga.artifact import FpgaArtifact
from backends.fpga.design import MODES, estimate_design
from backends.fpga.device import FpgaDevice
from backends.fpga.dse import apply_design, explore, fastest_fitting, reuse_ladder
from compiler.artifact import ModelSignature
from compiler.diagnostics import InternalError, LoomError
from compiler.model import find_model
from compiler.pass_manager import quote_option
from dialects import hls


def fpga_pipeline(options: CompileOptions) -> str:
    """nn -> engines -> loop nests -> (when a reuse factor is given) directives and schedule.

    `extra`: `reuse_factor`, `layers` (per-layer reuse factors), `partition`
    (banks per array dim, 0 = enough), `mode` (auto, dataflow,
    time-multiplexed). Without a reuse factor the backend explores reuse
    factors and builds the fastest design that fits the device."""
    extra = options.extra
    mode = extra.get("mode", "auto")
    if mode not in MODES:
        raise LoomError(f"the fpga target's mode is one of {', '.join(MODES)}, got '{mode}'")
    passes = ["hls-form-engines", "convert-nn-to-linalg"]
    passes += ["fuse-elementwise"] if options.fusion else []
    if "reuse_factor" in extra or "layers" in extra:
        directives = [f"reuse-factor={int(extra.get('reuse_factor', 1))}", f"partition={int(extra.get('partition', 0))}"]
        directives += [f"layers={quote_option(extra['layers'])}"] if extra.get("layers") else []
        schedule = [f"mode={quote_option(mode)}"]
        schedule += [f"target-config={quote_option(options.target_config)}"] if options.target_config else []
        passes += [f"hls-directives{{{' '.join(directives)}}}", f"hls-schedule{{{' '.join(schedule)}}}"]
    return ",".join(passes)


class FpgaBackend(Backend):
    name = "fpga"
    description = "FPGA layer engines with HLS schedules (reuse factor, II, DSP/LUT/EBR), on a schedule simulator or as Verilog"
    emit_kinds = ("verilog",)

    def pipeline(self, options: CompileOptions) -> str:
        return fpga_pipeline(options)

    def build(self, module: ModuleOp, signature: ModelSignature, options: CompileOptions) -> FpgaArtifact:
        device = FpgaDevice.load(options.target_config)
        model = find_model(module, None)
        chosen = "given"
        if hls.MODE_ATTR not in model.attributes:
            mode = options.extra.get("mode", "auto")
            points = explore(module, device, reuse_ladder(module), mode=mode)
            best = fastest_fitting(points) or min(points, key=lambda p: (p.dsp, p.lut, p.bram, p.latency))
            apply_design(module, device, best.reuse_factor, best.partition, mode)
            chosen = "fastest fitting design" if best.fits else "smallest design (none fits)"
            options.extra.setdefault("reuse_factor", best.reuse_factor)
        # Estimated under the mode asked for, so the report says why auto chose what it did.
        design = estimate_design(model, device, options.extra.get("mode", "auto"))
        if design.mode != model.attributes[hls.MODE_ATTR].data:  # type: ignore[union-attr]
            raise InternalError(f"the design was scheduled {model.attributes[hls.MODE_ATTR]} but estimates {design.mode}")
        return FpgaArtifact(module, signature, device, design, chosen)
