"""Per-inference latency of every sample model: Loom CPU against the interpreter and onnxruntime.

    .venv/bin/python benchmarks/cpu_models.py [samples/lenet.loom ...] [--min-time 0.5]

For each model it times

- Loom `run()`: `artifact.run(**inputs)`, the public API (input checks,
  copies into the call's buffers, fresh output arrays, one native call),
  compiled with the default pipeline for one thread;
- Loom native: the compiled (packed) entry point alone, called through
  ctypes on buffers allocated once, which is what a C caller of the
  emitted shared library pays plus one ctypes call;
- Loom unfused `run()`: the same with `--no-fusion` (no elementwise
  fusion, no batchnorm folding, no epilogues in the tile loops);
- Loom `run()` built for every core, when that build splits any loop over
  threads (a column appears only then);
- the reference interpreter (`target="interp"`);
- onnxruntime on the same model exported by `nn_to_onnx`, CPU execution
  provider and default session options but the intra-op thread count: one,
  then every core.

Before any timing, every runtime's outputs are compared with the reference
interpreter on the untouched model; an error above the tolerance is printed
and makes the script exit with status 1 (after the table, which marks the
model). The runtimes of a model are then timed in rounds, each round
running one batch of every runtime in a shuffled order, so that a change in
the machine's load hits them all alike; a batch is as many back-to-back
inferences as last about 20 ms, long enough that what the runtime before
left behind (cold caches, a thread pool still spinning) weighs little and
the clock's own cost not at all. A latency is the median over the batches,
of which there are at least 5 and at least `--min-time` seconds per
runtime. Ratios divide by Loom `run()`, which pays Python-side overheads
comparable to `InferenceSession.run`. Timings are only as steady as the
machine: run it on an otherwise idle one.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import math
import os
import platform
import random
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
from backends.base import CompileOptions
from backends.cpu.abi import aligned_block, decode, encode
from backends.cpu.toolchain import host_target
from compiler.artifact import Artifact, random_inputs
from compiler.interpreter import run_model
from compiler.model import find_model
from nn_to_onnx import DEFAULT_OPSET, UnsupportedError, to_onnx

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-4
MIN_RUNS = 5
BATCH_SECONDS = 20e-3
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
        self.specs = signature.outputs
        self.buffers, pointers = aligned_block(signature.inputs + signature.outputs)
        for spec, buffer in zip(signature.inputs, self.buffers):
            buffer[...] = encode(spec, inputs[spec.name])
        self.results = self.buffers[len(signature.inputs):]
        self.pointers = (ctypes.c_void_p * len(pointers))(*pointers)
        self.address = ctypes.addressof(self.pointers)
        self.entry = artifact._packed_entry  # the artifact has no public handle on its native function

    def __call__(self) -> Outputs:
        self.entry(self.address)
        return {spec.name: decode(spec, out) for spec, out in zip(self.specs, self.results)}


def ort_session(model_bytes: bytes, intra_op_threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def ort_runtimes(artifact: Artifact, inputs: Outputs, cores: int) -> list[Runtime]:
    labels = {"ORT 1 thread": 1, f"ORT {cores} threads": cores}
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
    parallel_loops: int  # in the build for every core


def prepare(path: Path, seed: int, cores: int) -> Subject:
    """Compile `path` for each runtime and compute the reference outputs on seeded inputs."""
    cpu = compiler.compile(path, target="cpu", options=CompileOptions(threads=1))
    unfused = compiler.compile(path, target="cpu", options=CompileOptions(threads=1, fusion=False))
    parallel = compiler.compile(path, target="cpu", options=CompileOptions(threads=cores))
    interp = compiler.compile(path, target="interp")
    inputs = random_inputs(cpu.signature, seed)
    reference = run_model(find_model(cpu.reference_module, None), inputs)
    runtimes = [
        Runtime("Loom run()", lambda: cpu.run(**inputs)),
        Runtime("Loom native", NativeCall(cpu, inputs)),
        Runtime("Loom unfused run()", lambda: unfused.run(**inputs)),
    ]
    parallel_loops = parallel.report["parallel_loops"]
    if parallel_loops:
        runtimes.append(Runtime(f"Loom {cores} threads run()", lambda: parallel.run(**inputs)))
    runtimes += [Runtime("interp", lambda: interp.run(**inputs)), *ort_runtimes(cpu, inputs, cores)]
    return Subject(cpu.model, reference, runtimes, parallel_loops)


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


def batch_size(infer: Callable[[], object]) -> int:
    """Inferences per batch: as many as last BATCH_SECONDS, after a warm-up."""
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < WARMUP_SECONDS:
        infer()
        calls += 1
    return max(1, round(BATCH_SECONDS * calls / (time.perf_counter() - start)))


def median_latencies(runtimes: list[Runtime], min_time: float) -> dict[str, float]:
    """Median seconds per inference of each runtime, timed in interleaved rounds.

    Every round times one batch of each runtime, in an order shuffled anew
    each round: a runtime slows the one after it (onnxruntime's thread pool
    keeps spinning for a while after a call), so no runtime may always
    follow the same one. Rounds go on until every runtime has MIN_RUNS
    batches and `min_time` seconds of them.
    """
    batches = {rt.label: batch_size(rt.infer) for rt in runtimes}
    samples: dict[str, list[float]] = {rt.label: [] for rt in runtimes}
    spent = dict.fromkeys(samples, 0.0)
    order = random.Random(0)
    gc.collect()
    gc.disable()
    try:
        while any(len(samples[label]) < MIN_RUNS or spent[label] < min_time for label in samples):
            for rt in order.sample(runtimes, len(runtimes)):
                batch, infer = batches[rt.label], rt.infer
                start = time.perf_counter()
                for _ in range(batch):
                    infer()
                elapsed = time.perf_counter() - start
                samples[rt.label].append(elapsed / batch)
                spent[rt.label] += elapsed
    finally:
        gc.enable()
    return {label: statistics.median(times) for label, times in samples.items()}


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def cpu_model_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def print_header(min_time: float, cores: int) -> None:
    host = host_target()
    llvm_version = ".".join(map(str, llvm.llvm_version_info))
    packages = ", ".join(f"{name} {version(name)}" for name in
                         ("loom", "numpy", "xdsl", "llvmlite", "onnx", "onnxruntime"))
    print(f"date:     {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine:  {cpu_model_name()}, {os.cpu_count()} logical CPUs, {platform.machine()}, "
          f"LLVM host CPU {host.cpu}")
    print(f"versions: Python {platform.python_version()}, {packages}, LLVM {llvm_version}, "
          f"ONNX opset {DEFAULT_OPSET}")
    print(f"method:   median latency per inference (µs) over >= {MIN_RUNS} batches and >= {min_time} s "
          f"per runtime, runtimes interleaved batch by batch after a warm-up; Loom built for 1 thread "
          f"(and for {cores} where that splits a loop); ratios are relative to Loom run()")
    print()


def fmt_us(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e6:,.1f}"


def fmt_ratio(numerator: float | None, denominator: float | None) -> str:
    return "n/a" if numerator is None or denominator is None else f"{numerator / denominator:.2f}x"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples", nargs="*", type=Path,
                        default=sorted((ROOT / "samples").glob("*.loom")))
    parser.add_argument("--min-time", type=float, default=0.5,
                        help="seconds of timed runs per model and runtime (default 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    args = parser.parse_args()
    cores = os.cpu_count() or 1

    print_header(args.min_time, cores)
    rows: list[tuple[str, dict[str, float | None]]] = []
    mismatches: list[str] = []
    mismatched_models: set[str] = set()
    notes: list[str] = []
    for path in args.samples:
        subject = prepare(path, args.seed, cores)
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
        print(f"check {model:<18} (loops over {cores} threads: {subject.parallel_loops}) "
              "max abs err vs interpreter: " + ", ".join(errors), flush=True)
        latencies: dict[str, float | None] = {rt.label: None for rt in runtimes}
        latencies |= median_latencies([rt for rt in runtimes if rt.infer is not None], args.min_time)
        rows.append((model, latencies))

    labels = list(dict.fromkeys(label for _, latencies in rows for label in latencies))
    ort_labels = [label for label in labels if label.startswith("ORT")]
    columns = ["model", *(f"{label} µs" for label in labels),
               *(f"{label.replace(' threads', 't').replace(' thread', 't')} / Loom" for label in ort_labels),
               "unfused / fused"]
    print()
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|")
    for model, latencies in rows:
        loom = latencies["Loom run()"]
        flagged = model + (" (!)" if model in mismatched_models else "")
        cells = [flagged, *(fmt_us(latencies.get(label)) for label in labels),
                 *(fmt_ratio(latencies[label], loom) for label in ort_labels),
                 fmt_ratio(latencies["Loom unfused run()"], loom)]
        print("| " + " | ".join(cells) + " |")
    for note in notes:
        print(f"n/a: {note}")
    for mismatch in mismatches:
        print(f"MISMATCH: {mismatch}", file=sys.stderr)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
