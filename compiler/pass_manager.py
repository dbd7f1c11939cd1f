"""Runs MLIR-style pipeline strings with verification, IR dumps and timing.

The pipeline syntax is xDSL's (and mlir-opt's): ``a,b{opt=1},c``. The IR is
verified after every pass so a broken pass is named, not discovered later by
a backend.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass
from xdsl.utils.arg_spec import parse_pipeline
from xdsl.utils.exceptions import ArgSpecParseError, VerifyException

from compiler.diagnostics import InternalError, LoomError
from passes import registry


@dataclass
class PassManagerOptions:
    print_ir_after_all: bool = False
    print_ir_after: set[str] = field(default_factory=set)
    timing: bool = False
    snapshot_after: set[str] = field(default_factory=set)  # pass names whose output is kept
    stream: TextIO | None = None  # default: sys.stderr at the time of printing


def quote_option(text: str) -> str:
    """`text` as a string value in a pipeline (`tile{tiles="..."}`), so a
    backend can spell user-given options into its pipeline safely."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_pipeline(pipeline: str) -> list[ModulePass]:
    """Parse `pipeline` into pass instances; unknown names are user errors."""
    passes: list[ModulePass] = []
    try:
        specs = list(parse_pipeline(pipeline))
    except ArgSpecParseError as e:
        raise LoomError(f"invalid pass pipeline '{pipeline}': {e}") from None
    for spec in specs:
        cls = registry.get_pass(spec.name)
        if cls is None:
            raise LoomError(
                f"unknown pass '{spec.name}' (known: {', '.join(registry.pass_names())})"
            )
        try:
            passes.append(cls.from_pass_spec(spec))
        except Exception as e:  # xDSL reports bad options with various exception types
            raise LoomError(f"invalid options for pass '{spec.name}': {e}") from None
    return passes


class PassManager:
    def __init__(self, ctx: Context, passes: list[ModulePass], options: PassManagerOptions | None = None):
        self.ctx = ctx
        self.passes = passes
        self.options = options or PassManagerOptions()
        self.timings: list[tuple[str, float]] = []
        self.snapshots: dict[str, ModuleOp] = {}

    @classmethod
    def from_pipeline(cls, ctx: Context, pipeline: str, options: PassManagerOptions | None = None) -> PassManager:
        return cls(ctx, build_pipeline(pipeline), options)

    @property
    def stream(self) -> TextIO:
        return self.options.stream or sys.stderr

    def run(self, module: ModuleOp) -> None:
        opts = self.options
        for p in self.passes:
            start = time.perf_counter()
            p.apply(self.ctx, module)
            self.timings.append((p.name, time.perf_counter() - start))
            try:
                module.verify()
            except VerifyException as e:
                raise InternalError(f"IR failed to verify after pass '{p.name}': {e}") from e
            if p.name in opts.snapshot_after:
                self.snapshots[p.name] = module.clone()
            if opts.print_ir_after_all or p.name in opts.print_ir_after:
                print(f"// -----// IR Dump After {p.name} //----- //", file=self.stream)
                print(module, file=self.stream)
        if opts.timing:
            self.print_timing()

    def print_timing(self) -> None:
        total = sum(t for _, t in self.timings) or 1e-12
        out = self.stream
        print("===-------------------------------------------------------===", file=out)
        print("                    Pass execution timing", file=out)
        print("===-------------------------------------------------------===", file=out)
        print(f"  Total: {total * 1e3:.3f} ms", file=out)
        for name, t in self.timings:
            print(f"  {t * 1e3:10.3f} ms  {100 * t / total:5.1f}%  {name}", file=out)
