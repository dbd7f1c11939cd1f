"""Per-inference latency of every sample model: Loom CPU against the interpreter and onnxruntime.

    .venv/bin/python benchmarks/cpu_models.py [samples/lenet.loom ...] [--min-time 0.5]

For each model it times

- Loom `run()`: `artifact.run(**inputs)`, the public API (input checks,
  output allocation, one native call);
- Loom native: the compiled entry point alone, called through ctypes on
  buffers allocated once, which is what a C caller of the emitted shared
  library pays plus one ctypes call;
- the reference interpreter (`target="interp"`);
- onnxruntime on the same model exported by `nn_to_onnx`, CPU execution
  provider and default session options, once with one intra-op thread and
  once with ORT's default thread count.

Before any timing, every runtime's outputs are compared with the reference
interpreter on the untouched model; an error above the tolerance is printed
and makes the script exit with status 1 (after the table, which marks the
model). A latency is the median over N runs after a warm-up, N chosen so
the runs take at least `--min-time` seconds in all (and N >= 5); a run is a
batch of back-to-back inferences lasting about a millisecond, so the clock's
own cost does not count for the fastest models. Ratios divide by Loom
`run()`, which pays Python-side overheads comparable to `InferenceSession.run`.
Timings are only as steady as the machine: run it on an otherwise idle one.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import llvmlite.binding as llvm
import numpy as np
import onnxruntime as ort

import compiler
from backends.cpu.abi import OutputBlock, from_storage, to_storage
from backends.cpu.toolchain import host_target
from compiler.artifact import Artifact, random_inputs
from compiler.interpreter import run_model
from compiler.model import find_model
from nn_to_onnx import DEFAULT_OPSET, UnsupportedError, to_onnx

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-4
MIN_RUNS = 5
BATCH_SECONDS = 1e-3
WARMUP_SECONDS = 0.1

Outputs = dict[str, np.ndarray]


@dataclass
class Runtime:
    """One way of running a model: `infer` performs one inference and returns its outputs."""

    label: str
    infer: Callable[[], Outputs] | None
    unavailable: str = ""  # why `infer` is None


# --------------------------------------------------------------------------
# The runtimes
# --------------------------------------------------------------------------


class NativeCall:
    """The compiled entry point on buffers prepared once, as a C caller would use it.

    The buffers are kept on the object: the raw pointers passed to the entry
    point are only valid while those arrays live.
    """

    def __init__(self, artifact: Artifact, inputs: Outputs):
        signature = artifact.signature
        staged = [to_storage(spec, inputs[spec.name]) for spec in signature.inputs]
        results, result_addresses = OutputBlock(signature.outputs).allocate()
        self.buffers = [buffer for buffer, _ in staged] + results
        self.pointers = [a for _, a in staged] + result_addresses
        self.entry = artifact._entry  # the artifact has no public handle on its native function
        self.outputs = {spec.name: from_storage(spec, out)
                        for spec, out in zip(signature.outputs, results)}

    def __call__(self) -> Outputs:
        self.entry(*self.pointers)
        return self.outputs


def ort_session(model_bytes: bytes, intra_op_threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def ort_runtimes(artifact: Artifact, inputs: Outputs) -> list[Runtime]:
    labels = {"ORT 1 thread": 1, "ORT default": None}
    try:
        model_bytes = to_onnx(artifact.reference_module).SerializeToString()
    except UnsupportedError as e:
        return [Runtime(label, None, f"not expressible in ONNX: {e}") for label in labels]
    runtimes = []
    names = [spec.name for spec in artifact.signature.outputs]
    for label, threads in labels.items():
        try:
            session = ort_session(model_bytes, threads)
        except Exception as e:  # onnxruntime raises its own exception types for missing kernels
            runtimes.append(Runtime(label, None, f"onnxruntime cannot load it: {e}"))
            continue
        runtimes.append(Runtime(label, lambda s=session: dict(zip(names, s.run(names, inputs)))))
    return runtimes


@dataclass
class Subject:
    """One sample model ready to check and time."""

    model: str
    reference: Outputs  # the interpreter's outputs on the untouched model
    runtimes: list[Runtime]
    loom_threads: int


def prepare(path: Path, seed: int) -> Subject:
    """Compile `path` for each runtime and compute the reference outputs on seeded inputs."""
    cpu = compiler.compile(path, target="cpu")
    interp = compiler.compile(path, target="interp")
    inputs = random_inputs(cpu.signature, seed)
    reference = run_model(find_model(cpu.reference_module, None), inputs)
    runtimes = [
        Runtime("Loom run()", lambda: cpu.run(**inputs)),
        Runtime("Loom native", NativeCall(cpu, inputs)),
        Runtime("interp", lambda: interp.run(**inputs)),
        *ort_runtimes(cpu, inputs),
    ]
    return Subject(cpu.model, reference, runtimes, cpu.report.get("threads", 1))


# --------------------------------------------------------------------------
# Checking and timing
# --------------------------------------------------------------------------


def max_abs_error(outputs: Outputs, reference: Outputs) -> float:
    """The largest elementwise difference over all outputs.

    Equal values (infinities included) and NaN against NaN count as agreeing;
    any other NaN, and a missing or misshapen output, make the error infinite.
    """
    error = 0.0
    for name, want in reference.items():
        got = outputs.get(name)
        if got is None or np.shape(got) != want.shape:
            return math.inf
        got, want = np.asarray(got, np.float64), want.astype(np.float64)
        agree = (got == want) | (np.isnan(got) & np.isnan(want))
        diff = np.where(agree, 0.0, np.abs(got - want))
        if np.isnan(diff).any():
            return math.inf
        if diff.size:
            error = max(error, float(diff.max()))
    return error


def median_latency(infer: Callable[[], object], min_time: float) -> float:
    """Median seconds per inference over at least MIN_RUNS batches totalling `min_time`.

    Each runtime is timed on its own: interleaving them lets the thread pools
    of onnxruntime and of numpy's BLAS, which spin for a while after a call,
    slow down whichever runtime comes next.
    """
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < WARMUP_SECONDS:
        infer()
        calls += 1
    estimate = (time.perf_counter() - start) / calls
    batch = max(1, round(BATCH_SECONDS / estimate))
    runs = max(MIN_RUNS, math.ceil(min_time / (batch * estimate)))
    samples = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(runs):
            start = time.perf_counter()
            for _ in range(batch):
                infer()
            samples.append((time.perf_counter() - start) / batch)
    finally:
        gc.enable()
    return statistics.median(samples)


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def cpu_model_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def print_header(min_time: float) -> None:
    host = host_target()
    llvm_version = ".".join(map(str, llvm.llvm_version_info))
    packages = ", ".join(f"{name} {version(name)}" for name in
                         ("loom", "numpy", "xdsl", "llvmlite", "onnx", "onnxruntime"))
    print(f"date:     {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine:  {cpu_model_name()}, {os.cpu_count()} logical CPUs, {platform.machine()}, "
          f"LLVM host CPU {host.cpu}")
    print(f"versions: Python {platform.python_version()}, {packages}, LLVM {llvm_version}, "
          f"ONNX opset {DEFAULT_OPSET}")
    print(f"method:   median latency per inference (µs) over >= {MIN_RUNS} runs and >= {min_time} s "
          f"after warm-up; ratios are relative to Loom run(); ORT default = onnxruntime's own "
          f"intra-op thread count")
    print()


def fmt_us(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e6:,.1f}"


def fmt_ratio(numerator: float | None, denominator: float) -> str:
    return "n/a" if numerator is None else f"{numerator / denominator:.2f}x"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples", nargs="*", type=Path,
                        default=sorted((ROOT / "samples").glob("*.loom")))
    parser.add_argument("--min-time", type=float, default=0.5,
                        help="seconds of timed runs per model and runtime (default 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    args = parser.parse_args()

    print_header(args.min_time)
    rows: list[tuple[str, dict[str, float | None]]] = []
    mismatches: list[str] = []
    mismatched_models: set[str] = set()
    notes: list[str] = []
    for path in args.samples:
        subject = prepare(path, args.seed)
        model, runtimes = subject.model, subject.runtimes
        errors = []
        for rt in runtimes:
            if rt.infer is None:
                errors.append(f"{rt.label} n/a")
                notes.append(f"{model}, {rt.label}: {rt.unavailable}")
                continue
            error = max_abs_error(rt.infer(), subject.reference)
            errors.append(f"{rt.label} {error:.1e}")
            if not error <= TOLERANCE:
                mismatches.append(f"{model}: {rt.label} differs from the interpreter by {error:.3g}")
                mismatched_models.add(model)
        print(f"check {model:<18} (Loom threads: {subject.loom_threads}) "
              "max abs err vs interpreter: " + ", ".join(errors), flush=True)
        latencies = {rt.label: None if rt.infer is None else median_latency(rt.infer, args.min_time)
                     for rt in runtimes}
        rows.append((model, latencies))

    labels = list(rows[0][1]) if rows else []
    columns = ["model", *(f"{label} µs" for label in labels),
               "ORT 1t / Loom", "ORT def / Loom", "interp / Loom"]
    print()
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|")
    for model, latencies in rows:
        loom = latencies["Loom run()"]
        flagged = model + (" (!)" if model in mismatched_models else "")
        cells = [flagged, *(fmt_us(latencies[label]) for label in labels),
                 fmt_ratio(latencies["ORT 1 thread"], loom),
                 fmt_ratio(latencies["ORT default"], loom),
                 fmt_ratio(latencies["interp"], loom)]
        print("| " + " | ".join(cells) + " |")
    for note in notes:
        print(f"n/a: {note}")
    for mismatch in mismatches:
        print(f"MISMATCH: {mismatch}", file=sys.stderr)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
