"""hw/comb/seq IR built in xDSL -> SystemVerilog, through CIRCT's Python bindings.

xDSL prints the design in the dialects' custom syntax, which CIRCT parses
(their generic forms differ). CIRCT then lowers memories to Verilog arrays
(`lower-seq-firmem`, `hw-memory-sim`) and registers to always blocks
(`lower-seq-to-sv`) and `export_split_verilog` writes one file per module,
so Verilator's file-name rule holds. CIRCT's memory model keeps a clock
input on combinational read ports that it never reads; its files carry a
`lint_off UNUSEDSIGNAL` so `verilator -Wall` stays quiet about it. Randomised
initial values are turned off: they need macros the exported file does not
define, and every register here has a reset anyway. Source locations are
left out so the same design always gives the same bytes. A design with
`fsm.machine`s has them lowered first (`convert-fsm-to-sv`: one module per
machine, its states an enum typedef in `fsm_enum_typedefs.sv`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from xdsl.dialects.builtin import ModuleOp

from compiler.diagnostics import InternalError

PIPELINE = ("builtin.module(canonicalize, cse, lower-seq-firmem, lower-seq-to-sv{disable-reg-randomization}, "
            "hw-memory-sim{disable-mem-randomization disable-reg-randomization}, "
            "hw.module(prettify-verilog), hw.module(hw-cleanup))")
FSM_PIPELINE = "builtin.module(convert-fsm-to-sv)"
LOWERING_OPTIONS = "locationInfoStyle=none,omitVersionComment,disallowLocalVariables"


MEMORY_PRAGMA = "/* verilator lint_off UNUSEDSIGNAL */  // CIRCT's memory model: R*_clk is unused\n"


def export_verilog(design: ModuleOp) -> dict[str, str]:
    """The design as SystemVerilog, file name -> text in the order the files
    must be read (`filelist.f`'s); CIRCT's diagnostics become an InternalError."""
    import circt
    from circt import ir, passmanager

    text = str(design)
    with ir.Context() as context:
        circt.register_dialects(context)
        diagnostics: list[str] = []

        def collect(diagnostic: ir.Diagnostic) -> bool:
            diagnostics.append(str(diagnostic))
            return True

        handler = context.attach_diagnostic_handler(collect)
        try:
            module = ir.Module.parse(text)
            module.operation.attributes["circt.loweringOptions"] = ir.StringAttr.get(LOWERING_OPTIONS)
            if any(op.name == "fsm.machine" for op in design.ops):
                passmanager.PassManager.parse(FSM_PIPELINE).run(module.operation)
            passmanager.PassManager.parse(PIPELINE).run(module.operation)
            with tempfile.TemporaryDirectory(prefix="loom-verilog-") as directory:
                circt.export_split_verilog(module, directory)
                files = _read_files(Path(directory))
        except (ir.MLIRError, ValueError) as error:
            detail = "\n".join(diagnostics) or str(error)
            raise InternalError(f"CIRCT could not export the design: {detail}") from None
        finally:
            handler.detach()
    if diagnostics:
        raise InternalError("CIRCT reported while exporting the design:\n" + "\n".join(diagnostics))
    return files


def _read_files(directory: Path) -> dict[str, str]:
    names = (directory / "filelist.f").read_text().split()
    files = {}
    for name in names:
        text = (directory / name).read_text()
        files[name] = MEMORY_PRAGMA + text if "reg " in text and "Memory[" in text else text
    return files
