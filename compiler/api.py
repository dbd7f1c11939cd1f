"""The compiler driver behind `compiler.compile` and the `loom` CLI.

    source ──frontend──▶ nn module ──model pipeline──▶ ──target pipeline──▶ backend.build ─▶ Artifact

The nn-level module exactly as the frontend produced it is kept on the
artifact (`reference_module`), so `check` compares a target against the
reference interpreter on IR that no pass has touched: a wrong rewrite in any
pass shows up as a numerical difference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from xdsl.dialects.builtin import IntegerAttr, ModuleOp

from backends import registry as backend_registry
from backends.base import Backend, CompileOptions
from compiler import frontend, interpreter
from compiler.artifact import Artifact
from compiler.context import make_context
from compiler.diagnostics import LoomError
from compiler.mlir import parse_mlir
from compiler.model import find_model, signature_of
from compiler.pass_manager import PassManager, PassManagerOptions



def quantize_pass(options: CompileOptions) -> str:
    """The `quantize` pass spelled with the options' scheme and data, or ''."""
    if not options.quantize:
        return ""
    args = {"scheme": options.quantize, "calibration": options.calibration,
            "quant-config": options.quant_config}
    spelled = " ".join(f'{k}="{v}"' for k, v in args.items() if v)
    return f"quantize{{{spelled}}}"


def model_pipeline(options: CompileOptions) -> str:
    """Target-independent simplification run on every model before lowering."""
    passes = [
        "fold-constants",
        "fold-batchnorm" if options.fusion else "",
        quantize_pass(options),
        "canonicalize",
        "cse",
        "dce",
        "schedule-memory",
    ]
    return ",".join(p for p in passes if p)


MODEL_PIPELINE = model_pipeline(CompileOptions())

Source = str | Path


@dataclass
class Stages:
    """IR text at the points a user may want to see or emit."""

    nn: str = ""
    lowered: str = ""
    timings: list[tuple[str, float]] = field(default_factory=list)
    snapshots: dict[str, ModuleOp] = field(default_factory=dict)


def load_weights(weights: str | Path | Mapping[str, Any] | None) -> dict[str, np.ndarray] | None:
    """Accept a path to an .npz file or a mapping of name -> array."""
    if weights is None:
        return None
    if isinstance(weights, Mapping):
        return {k: np.asarray(v) for k, v in weights.items()}
    path = Path(weights)
    if not path.is_file():
        raise LoomError(f"weights file '{path}' does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise LoomError(f"cannot read weights file '{path}': {e}") from None


def _looks_like_path(source: str) -> bool:
    return "\n" not in source and "{" not in source and source.strip().endswith((".loom", ".mlir", ".onnx"))


def load_module(source: Source, weights: str | Path | Mapping[str, Any] | None = None) -> ModuleOp:
    """Parse a .loom, .mlir or .onnx file (by path) or .loom source text into an nn module."""
    loaded = load_weights(weights)
    if isinstance(source, Path) or _looks_like_path(source):
        path = Path(source)
        if not path.is_file():
            raise LoomError(f"no such file: '{path}'")
        if path.suffix == ".mlir":
            return parse_mlir(path.read_text(), str(path))
        if path.suffix == ".onnx":
            if loaded is not None:
                raise LoomError("an ONNX model carries its own weights; --weights applies to .loom files")
            from compiler.onnx import import_onnx

            return import_onnx(path)
        return frontend.load_file(path, weights=loaded)
    return frontend.parse_source(source, "<string>", weights=loaded)


def select_model(module: ModuleOp, model: str | None) -> ModuleOp:
    """A new module holding only the chosen model (cloned, so `module` is untouched)."""
    chosen = find_model(module, model)
    return ModuleOp([chosen.clone()])


def get_backend(target: str) -> Backend:
    cls = backend_registry.get_backend(target)
    if cls is None:
        known = ", ".join(backend_registry.backend_names())
        raise LoomError(f"unknown target '{target}' (known: {known})")
    return cls()


def compile(
    source: Source | ModuleOp,
    target: str = "cpu",
    *,
    model: str | None = None,
    weights: str | Path | Mapping[str, Any] | None = None,
    passes: str = "",
    options: CompileOptions | None = None,
    pass_options: PassManagerOptions | None = None,
) -> Artifact:
    """Compile one model for `target` and return its runnable artifact.

    `source` is a path to a .loom/.mlir file, .loom source text, or an nn
    module. `passes` is an extra pipeline run on the nn module before the
    target's lowering.
    """
    options = options or CompileOptions()
    parsed = source if isinstance(source, ModuleOp) else load_module(source, weights)
    reference = select_model(parsed, model)
    signature = signature_of(find_model(reference, None))
    backend = get_backend(target)

    module = reference.clone()
    ctx = make_context()
    pipeline = ",".join(p for p in (model_pipeline(options), passes) if p)
    stages = Stages()
    model_pm = PassManager.from_pipeline(ctx, pipeline, pass_options)
    model_pm.run(module)
    stages.nn = str(module)
    memory = memory_figures(module)
    if options.quantize:
        # A quantized target is checked against the quantized model, which is
        # what it was asked to compute; the float model only tells how much
        # quantization costs (see the quantization report).
        reference = module.clone()
    target_pm = PassManager.from_pipeline(ctx, backend.pipeline(options), pass_options)
    target_pm.run(module)
    stages.lowered = str(module)
    stages.timings = model_pm.timings + target_pm.timings
    stages.snapshots = model_pm.snapshots | target_pm.snapshots

    artifact = backend.build(module, signature, options)
    artifact.reference_module = reference
    artifact.stages = stages
    memory |= memory_figures(module)
    if memory:
        artifact.report["memory"] = memory
    if options.quantize:
        from passes.quantize import quant_report

        artifact.report["quantization"] = quant_report(reference)
    return artifact


def memory_figures(module: ModuleOp) -> dict[str, int]:
    """Byte counts the memory passes recorded on the model function
    (`loom.peak_bytes_before`, `loom.arena_bytes`, ...), keyed without the prefix."""
    func_op = find_model(module, None)
    return {
        name.removeprefix("loom."): attr.value.data
        for name, attr in func_op.attributes.items()
        if name.startswith("loom.") and "_bytes" in name and isinstance(attr, IntegerAttr)
    }


@dataclass
class CheckResult:
    outputs: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    max_abs_err: float


def check(artifact: Artifact, inputs: Mapping[str, Any]) -> CheckResult:
    """Run `artifact` and the reference interpreter on the same inputs."""
    outputs = artifact.run(**inputs)
    reference = interpreter.run_model(
        find_model(artifact.reference_module, None), dict(inputs)
    )
    err = 0.0
    for name, ref in reference.items():
        got = outputs[name].astype(np.float64)
        want = ref.astype(np.float64)
        if got.shape != want.shape:
            raise LoomError(f"output '{name}' has shape {got.shape}, reference {want.shape}")
        if want.size:
            err = max(err, float(np.max(np.abs(got - want))))
    artifact.report["max_abs_err"] = err
    return CheckResult(outputs, reference, err)


def default_tolerance(artifact: Artifact) -> float:
    """Tolerance for `--check`: tight for f32, one ulp-ish of the narrow types otherwise."""
    dtypes = {spec.dtype for spec in artifact.signature.outputs}
    if dtypes & {"f16", "bf16"}:
        return 5e-2
    if dtypes <= {"i8", "i32"}:
        return 0.0
    return 1e-4
