"""The `loom` command line.

User errors print `path:line:col: error: ...` and exit 1; a bug in Loom
prints "internal error" with the traceback and exits 3, so the two are never
confused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from compiler.diagnostics import LoomError

EXIT_USER_ERROR = 1
EXIT_INTERNAL_ERROR = 3


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a .loom model file (or an nn-level .mlir module)")
    p.add_argument("--model", help="which model of the file (needed when it defines several)")
    p.add_argument("--target", default="cpu", help="target to compile for (see `loom targets`)")
    p.add_argument("--weights", metavar="W.npz", help="values of params declared without an initializer")
    p.add_argument("-p", "--passes", default="", metavar="PIPELINE",
                   help="extra nn-level pass pipeline, e.g. 'fold-constants,cse'")
    p.add_argument("-O", dest="opt_level", type=int, default=3, choices=range(4), help="optimisation level")
    p.add_argument("--target-config", metavar="NAME|FILE.toml",
                   help="hardware description: a built-in name (host, systolic-16x16, ...) or a TOML file")
    p.add_argument("--no-fusion", dest="fusion", action="store_false", help="disable operator fusion")
    p.add_argument("--tile", action="append", default=[], metavar="OP=T1,T2,...",
                   help="override tile sizes for an op kind (matmul, conv2d, ...) or a DSL value name")
    p.add_argument("--threads", type=int, metavar="N", help="threads for parallel loops (default: all cores)")
    p.add_argument("--array", metavar="RxC", help="systolic target: array rows x columns (overrides --target-config)")
    p.add_argument("--dataflow", choices=["ws", "os", "is"],
                   help="systolic target: weight, output or input stationary (overrides --target-config)")
    p.add_argument("-X", "--target-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a target-specific option (repeatable), e.g. -X reuse_factor=16 for fpga, "
                        "-X pim_mode=per-bank for pim; see the target's page in docs/targets/")
    _add_quantize_args(p)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loom")
    except PackageNotFoundError:
        return "(not installed)"


def _add_quantize_args(p: argparse.ArgumentParser, scheme_flag: str = "--quantize") -> None:
    p.add_argument(scheme_flag, dest="quantize", metavar="SCHEME",
                   help="quantize: int8, int8-per-channel, w4-group32/64/128, w4-awq or mixed")
    p.add_argument("--calibration", metavar="C.npz", help="calibration inputs (arrays with a leading sample dim)")
    p.add_argument("--quant-config", metavar="Q.toml", help="per-layer precision overrides")
    p.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass (stderr)")
    p.add_argument("--print-ir-after", action="append", default=[], metavar="PASS",
                   help="print the IR after the named pass (repeatable)")
    p.add_argument("--timing", action="store_true", help="print pass timing (stderr)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loom",
        description="Loom: compile neural-network models written in the .loom DSL (or ONNX) for CPUs and "
                    "accelerators, and run them against a reference interpreter.",
        epilog="examples:\n"
               "  loom run samples/mlp.loom --check                      compile for the CPU, run, compare\n"
               "  loom compile samples/lenet.loom --emit shared -o lenet.so\n"
               "  loom run samples/lenet.loom --target systolic --array 8x8 --report json\n"
               "  loom import model.onnx -o model.loom\n"
               "  loom COMMAND --help                                    options of one command\n"
               "docs: README.md and docs/ (dsl.md, passes.md, targets/, extending.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"loom {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compile", help="compile a model and write the result",
                       description="Compile a model and write IR, LLVM IR, an object file or a shared library.")
    _add_model_args(p)
    p.add_argument("-o", "--output", metavar="OUT", help="output file (default: MODEL.EXT in the current directory)")
    p.add_argument("--explain", action="store_true",
                   help="print per-op fusion groups, tile sizes, schedule order, predicted time and "
                        "traffic, and memory figures (writes no file unless -o or --emit is given)")
    p.add_argument("--emit", default=None,
                   help="what to write: nn (nn-level IR), ir (lowered IR), or a target kind "
                        "such as llvm, asm, obj, shared, verilog (a directory) (default: the target's first kind)")

    p = sub.add_parser("run", help="compile and run a model",
                       description="Compile a model, run it on given or random inputs and report.")
    _add_model_args(p)
    inputs = p.add_mutually_exclusive_group()
    inputs.add_argument("--inputs", metavar="I.npz", help="input arrays by input name")
    inputs.add_argument("--random-inputs", type=int, metavar="SEED", default=None,
                        help="deterministic random inputs (default seed 0 when --inputs is absent)")
    p.add_argument("--check", action="store_true",
                   help="compare with the reference interpreter; exit 1 if the error exceeds --tolerance")
    p.add_argument("--tolerance", type=float, default=None, help="max abs error for --check")
    p.add_argument("--report", choices=["text", "json"], default="text", help="report format")
    p.add_argument("--print-outputs", action="store_true", help="print output values")
    p.add_argument("--save-outputs", metavar="O.npz", help="write outputs to an .npz file")

    p = sub.add_parser("check", help="parse and verify a model file without compiling",
                       description="Parse, type-check and verify a .loom, .mlir or .onnx file.")
    p.add_argument("file", help="a .loom, .mlir or .onnx model file")
    p.add_argument("--weights", metavar="W.npz", help="values of params declared without an initializer")

    p = sub.add_parser("opt", help="run a pass pipeline on an MLIR module and print it",
                       description="Parse an MLIR (or .loom) module, run a pipeline, print the result.")
    p.add_argument("file", help="an MLIR module in generic or custom form, or a .loom file")
    p.add_argument("-p", "--passes", default="", metavar="PIPELINE",
                   help="comma-separated passes with options, e.g. 'convert-nn-to-linalg,fuse-elementwise{}' "
                        "(see `loom passes`)")
    p.add_argument("-o", "--output", metavar="OUT", help="write the result here instead of stdout")
    p.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass (stderr)")
    p.add_argument("--print-ir-after", action="append", default=[], metavar="PASS",
                   help="print the IR after the named pass (repeatable)")
    p.add_argument("--timing", action="store_true", help="print pass timing (stderr)")

    p = sub.add_parser("import", help="convert an ONNX model to .loom source and an .npz weights file",
                       description="Convert an ONNX model to a .loom file and the .npz file of its params.")
    p.add_argument("file", help="an .onnx model")
    p.add_argument("-o", "--output", metavar="OUT.loom",
                   help="output file: .loom source, or .mlir for the IR, which quantized models need "
                        "(default: FILE with suffix .loom, in the current directory)")
    p.add_argument("--weights-out", metavar="W.npz", help="weights file (default: OUT with suffix .npz)")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                   help="size of a named dynamic input dim (repeatable)")
    p.add_argument("--name", help="model name (default: the file's stem)")

    p = sub.add_parser("quantize", help="quantize a model and write its nn-level IR",
                       description="Quantize a model (post-training, calibrated on sample inputs), write the "
                                   "quantized nn-level IR and print a per-layer report.")
    p.add_argument("file", help="a .loom model file (or an nn-level .mlir module)")
    p.add_argument("--model", help="which model of the file (needed when it defines several)")
    p.add_argument("--weights", metavar="W.npz", help="values of params declared without an initializer")
    _add_quantize_args(p, "--scheme")
    p.add_argument("-o", "--output", metavar="OUT", help="output file (default: MODEL.q.mlir in the current directory)")
    p.add_argument("--report", choices=["text", "json"], default="text", help="report format")

    _add_dse_parser(sub)

    sub.add_parser("passes", help="list registered passes",
                   description="List every pass a pipeline can name: built-in, from installed plugins "
                               "(entry points in the loom.passes group) and registered at runtime.")
    sub.add_parser("targets", help="list registered targets",
                   description="List every --target: built-in, from installed plugins (entry points in the "
                               "loom.backends group) and registered at runtime.")
    return parser


def _add_dse_parser(sub) -> None:
    p = sub.add_parser("dse", help="explore FPGA designs: reuse factors x partitions, Pareto table",
                       description="Sweep reuse factors and array-partition caps of the fpga target, print the "
                                   "Pareto front of latency against DSP/LUT/EBR estimates and the fastest design "
                                   "that fits the device.")
    p.add_argument("file", help="a .loom model file (or an nn-level .mlir module)")
    p.add_argument("--model", help="which model of the file (needed when it defines several)")
    p.add_argument("--target", default="fpga", choices=["fpga"], help="target to explore (only fpga)")
    p.add_argument("--weights", metavar="W.npz", help="values of params declared without an initializer")
    p.add_argument("--target-config", metavar="NAME|FILE.toml", help="FPGA description (default fpga-ecp5)")
    p.add_argument("--reuse", default="", metavar="R1,R2,...",
                   help="reuse factors to sweep (default: powers of two up to the largest loop nest)")
    p.add_argument("--partition", default="0,2", metavar="P1,P2,...",
                   help="banks per array dim to sweep; 0 means as many as the lanes need (default 0,2)")
    p.add_argument("--mode", default="auto", choices=["auto", "dataflow", "time-multiplexed"],
                   help="one engine per layer connected by FIFOs, one shared engine, or whichever fits (default)")
    p.add_argument("--all", action="store_true", help="print every point, not only the Pareto front")
    p.add_argument("--report", choices=["text", "json"], default="text", help="report format")
    _add_quantize_args(p)


def _positive_list(text: str, flag: str, allow_zero: bool = False) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = [-1]
    if any(v < (0 if allow_zero else 1) for v in values):
        raise LoomError(f"{flag} expects a comma-separated list of {'non-negative' if allow_zero else 'positive'} "
                        f"integers, got '{text}'")
    return values


def cmd_dse(args: argparse.Namespace) -> int:
    import compiler
    from backends.fpga.device import FpgaDevice
    from backends.fpga.dse import explore, fastest_fitting, pareto, reuse_ladder

    # Compiled at reuse factor 1 only to reach the engine level; the sweep schedules copies of it.
    options = compiler.CompileOptions(target_config=args.target_config, quantize=args.quantize,
                                      calibration=args.calibration, quant_config=args.quant_config,
                                      extra={"mode": args.mode, "reuse_factor": 1})
    artifact = compiler.compile(args.file, target="fpga", model=args.model, weights=args.weights,
                                options=options, pass_options=_pass_options(args))
    module = artifact.module
    reuse = _positive_list(args.reuse, "--reuse") or reuse_ladder(module)
    partitions = _positive_list(args.partition, "--partition", allow_zero=True) or [0]

    def progress(done: int, total: int) -> None:
        width = 30
        filled = width * done // total
        print(f"\rexploring [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="", file=sys.stderr,
              flush=True)
        if done == total:
            print(file=sys.stderr)

    device = FpgaDevice.load(args.target_config)
    points = explore(module, device, reuse, partitions, args.mode, progress)
    front = pareto(points)
    best = fastest_fitting(points)
    shown = points if args.all else front
    if args.report == "json":
        print(json.dumps({"device": device.name, "points": [p.as_dict() for p in points],
                          "pareto": [p.as_dict() for p in front],
                          "fastest_fitting": best.as_dict() if best else None}, sort_keys=True))
        return 0
    print(f"model {artifact.model} on {device.name}: {len(points)} designs, {len(front)} on the Pareto front")
    header = f"{'reuse':>6} {'part':>4} {'mode':<16} {'latency':>9} {'interval':>9} {'DSP':>5} {'LUT':>7} {'EBR':>4}  fits"
    print(header)
    for p in shown:
        mark = " *" if p is best else ""
        print(f"{p.reuse_factor:>6} {p.partition or 'auto':>4} {p.mode:<16} {p.latency:>9} {p.interval:>9} "
              f"{p.dsp:>5} {p.lut:>7} {p.bram:>4}  {'yes' if p.fits else 'no'}{mark}")
    if best:
        print(f"fastest design that fits: reuse factor {best.reuse_factor}, partition "
              f"{best.partition or 'auto'}, {best.mode}, {best.latency} cycles "
              f"({best.latency / device.clock_hz * 1e6:.3g} us at {device.clock_hz / 1e6:g} MHz)")
    else:
        print(f"no design fits {device.name}")
    return 0


def _pass_options(args: argparse.Namespace):
    from compiler.pass_manager import PassManagerOptions

    return PassManagerOptions(
        print_ir_after_all=args.print_ir_after_all,
        print_ir_after=set(args.print_ir_after),
        timing=args.timing,
        snapshot_after=getattr(args, "snapshot_after", set()),
    )


def _parse_tiles(specs: list[str]) -> dict[str, tuple[int, ...]]:
    tiles: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        key, _, sizes = spec.partition("=")
        try:
            values = tuple(int(v) for v in sizes.split(","))
        except ValueError:
            values = ()
        if not key or not values or any(v < 1 for v in values):
            raise LoomError(f"--tile expects OP=T1,T2,... with positive integers, got '{spec}'")
        tiles[key] = values
    return tiles


def _target_options(args: argparse.Namespace) -> dict[str, str]:
    """`CompileOptions.extra`: every -X KEY=VALUE, then the systolic flags."""
    extra = {}
    for spec in args.target_option:
        key, equals, value = spec.partition("=")
        if not key or not equals:
            raise LoomError(f"-X expects KEY=VALUE, got '{spec}'")
        extra[key] = value
    extra.update({k: v for k, v in (("array", args.array), ("dataflow", args.dataflow)) if v})
    return extra


def _compile(args: argparse.Namespace):
    import compiler

    if args.threads is not None and args.threads < 1:
        raise LoomError(f"--threads must be at least 1, got {args.threads}")
    options = compiler.CompileOptions(
        opt_level=args.opt_level,
        fusion=args.fusion,
        tiles=_parse_tiles(args.tile),
        threads=args.threads,
        target_config=args.target_config,
        quantize=args.quantize,
        calibration=args.calibration,
        quant_config=args.quant_config,
        extra=_target_options(args),
    )
    return compiler.compile(
        args.file,
        target=args.target,
        model=args.model,
        weights=args.weights,
        passes=args.passes,
        options=options,
        pass_options=_pass_options(args),
    )


def cmd_compile(args: argparse.Namespace) -> int:
    if args.explain:
        from compiler.explain import EXPLAIN_AFTER

        args.snapshot_after = {"schedule-memory", EXPLAIN_AFTER}
    artifact = _compile(args)
    if args.explain:
        from compiler.explain import explain

        print(explain(artifact))
        if not (args.output or args.emit):
            return 0
    from backends.registry import get_backend

    kinds = get_backend(args.target).emit_kinds
    kind = args.emit or (kinds[0] if kinds else "ir")
    suffix = {"nn": ".nn.mlir", "ir": ".mlir", "llvm": ".ll", "asm": ".s", "obj": ".o", "shared": ".so"}
    output = args.output or f"{artifact.model}{suffix.get(kind, '.' + kind)}"
    for written in artifact.emit(kind, output):
        print(f"wrote {written}", file=sys.stderr)
    return 0


def _read_inputs(args: argparse.Namespace, artifact) -> dict[str, np.ndarray]:
    from compiler.artifact import random_inputs

    if args.inputs:
        path = Path(args.inputs)
        if not path.is_file():
            raise LoomError(f"inputs file '{path}' does not exist")
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    return random_inputs(artifact.signature, args.random_inputs or 0)


def _describe(array: np.ndarray) -> str:
    return f"{array.dtype}{list(array.shape)}"


def cmd_run(args: argparse.Namespace) -> int:
    from compiler.api import check, default_tolerance
    from compiler.files import write_atomic

    artifact = _compile(args)
    inputs = _read_inputs(args, artifact)
    failed = False
    if args.check:
        result = check(artifact, inputs)
        outputs = result.outputs
        tolerance = default_tolerance(artifact) if args.tolerance is None else args.tolerance
        failed = result.max_abs_err > tolerance
        artifact.report["tolerance"] = tolerance
    else:
        outputs = artifact.run(**inputs)
    if args.save_outputs:
        import io

        buffer = io.BytesIO()
        np.savez(buffer, **outputs)
        write_atomic(args.save_outputs, buffer.getvalue())

    report: dict[str, Any] = dict(artifact.report)
    if args.report == "json":
        print(json.dumps(report, sort_keys=True, default=float))
    else:
        print(f"model {artifact.model} on {artifact.target}")
        for name, value in outputs.items():
            print(f"  output {name}: {_describe(value)}")
            if args.print_outputs:
                with np.printoptions(precision=5, suppress=True, threshold=64):
                    print("    " + str(value).replace("\n", "\n    "))
        for key, value in report.items():
            if key not in ("outputs", "model", "target"):
                print(f"  {key}: {value:.6g}" if isinstance(value, float) else f"  {key}: {value}")
    if failed:
        print(
            f"error: max abs error {report['max_abs_err']:.3g} exceeds tolerance {report['tolerance']:.3g}",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from compiler.api import load_module
    from compiler.model import models, signature_of

    module = load_module(args.file, args.weights)
    for f in models(module):
        sig = signature_of(f)
        ins = ", ".join(f"{s.name}: {s.describe()}" for s in sig.inputs)
        outs = ", ".join(f"{s.name}: {s.describe()}" for s in sig.outputs)
        print(f"{args.file}: model {sig.name} ({ins}) -> ({outs}) ok")
    return 0


def cmd_opt(args: argparse.Namespace) -> int:
    from compiler.api import load_module
    from compiler.context import make_context
    from compiler.files import write_atomic
    from compiler.pass_manager import PassManager

    module = load_module(args.file)
    PassManager.from_pipeline(make_context(), args.passes, _pass_options(args)).run(module)
    text = str(module) + "\n"
    if args.output:
        write_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def _parse_dims(specs: list[str]) -> dict[str, int]:
    dims = {}
    for spec in specs:
        name, _, size = spec.partition("=")
        if not name or not size.isdigit() or int(size) < 1:
            raise LoomError(f"--dim expects NAME=SIZE with a positive size, got '{spec}'")
        dims[name] = int(size)
    return dims


def cmd_import(args: argparse.Namespace) -> int:
    from compiler.onnx import import_to_loom

    output = args.output or Path(args.file).with_suffix(".loom").name
    for written in import_to_loom(args.file, output, args.weights_out, model_name=args.name,
                                  dims=_parse_dims(args.dim)):
        print(f"wrote {written}", file=sys.stderr)
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    import compiler
    from compiler.api import load_module, model_pipeline, select_model
    from compiler.context import make_context
    from compiler.files import write_atomic
    from compiler.model import find_model
    from compiler.pass_manager import PassManager
    from passes.quantize import format_quant_report, quant_report

    module = select_model(load_module(args.file, args.weights), args.model)
    options = compiler.CompileOptions(
        quantize=args.quantize or "int8-per-channel", calibration=args.calibration, quant_config=args.quant_config
    )
    PassManager.from_pipeline(make_context(), model_pipeline(options), _pass_options(args)).run(module)
    output = args.output or f"{find_model(module, None).sym_name.data}.q.mlir"
    write_atomic(output, str(module) + "\n")
    print(f"wrote {output}", file=sys.stderr)
    report = quant_report(module)
    if args.report == "json":
        print(json.dumps(report, sort_keys=True))
    else:
        print(format_quant_report(report))
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    from passes import registry

    for name in registry.pass_names():
        print(f"{name:28} {registry.describe(name)}")
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from backends import registry

    for name in registry.backend_names():
        print(f"{name:12} {registry.describe(name)}")
    return 0


COMMANDS = {
    "compile": cmd_compile,
    "run": cmd_run,
    "check": cmd_check,
    "opt": cmd_opt,
    "import": cmd_import,
    "quantize": cmd_quantize,
    "dse": cmd_dse,
    "passes": cmd_passes,
    "targets": cmd_targets,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except LoomError as e:
        print(e.render(), file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stdout = open(os.devnull, "w")
        return 0
    except Exception as e:  # anything else is a bug in Loom
        traceback.print_exc()
        print(f"loom: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        print("loom: this is a bug in Loom, not in your input; please report it with the input above",
              file=sys.stderr)
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
