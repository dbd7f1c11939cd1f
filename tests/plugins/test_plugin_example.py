"""The example plugin in samples/plugins/loom-cbackend, installed as a user would.

The plugin is pip-installed into the test environment once (a file lock
keeps parallel workers from installing it twice, and an up-to-date install
is left alone), then exercised through the `loom` command line, which finds
it only through its entry points, and in-process through runtime
registration. docs/extending.md quotes the plugin's code; the last test keeps
those quotes true.
"""

from __future__ import annotations

import fcntl
import importlib
import importlib.metadata
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import numpy as np
import pytest

import compiler
from backends.registry import get_backend
from compiler.artifact import ModelSignature, TensorSpec, random_inputs
from compiler.context import make_context
from compiler.interpreter import run_model
from compiler.mlir import parse_mlir
from compiler.model import find_model
from passes.registry import get_pass

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "samples/plugins/loom-cbackend"
DOC = ROOT / "docs/extending.md"


def loom(*argv: str) -> subprocess.CompletedProcess[str]:
    """The `loom` command in a fresh interpreter, which sees only installed plugins."""
    return subprocess.run([sys.executable, "-m", "compiler.cli", *argv], cwd=ROOT, capture_output=True, text=True)


def installed_copy_is_current() -> bool:
    """Whether the installed `loom-cbackend` has this checkout's modules and entry points."""
    importlib.invalidate_caches()
    try:
        dist = importlib.metadata.distribution("loom-cbackend")
    except importlib.metadata.PackageNotFoundError:
        return False
    declared = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]["entry-points"]
    wanted = {(group, name, value) for group, points in declared.items() for name, value in points.items()}
    if {(ep.group, ep.name, ep.value) for ep in dist.entry_points} != wanted:
        return False
    modules = {f.name: f for f in dist.files or () if f.parent.name == "loom_cbackend" and f.suffix == ".py"}
    sources = {path.name: path for path in (PLUGIN / "loom_cbackend").glob("*.py")}
    return modules.keys() == sources.keys() and all(
        Path(dist.locate_file(modules[name])).read_bytes() == path.read_bytes() for name, path in sources.items()
    )


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> None:
    lock_file = Path(sysconfig.get_paths()["purelib"]) / ".loom-cbackend-install.lock"
    with open(lock_file, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not installed_copy_is_current():
            # pip builds inside the source tree; a copy keeps build/ and *.egg-info out of the checkout.
            source = tmp_path_factory.mktemp("plugin") / "loom-cbackend"
            shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
            pip = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                 "--disable-pip-version-check", "--quiet", str(source)],
                capture_output=True, text=True,
            )
            assert pip.returncode == 0, pip.stdout + pip.stderr
        assert installed_copy_is_current()


@pytest.fixture(scope="module")
def plugin(installed_plugin: None):
    """The plugin package imported in this process (the checkout's copy and the installed one are equal)."""
    sys.path.insert(0, str(PLUGIN))
    try:
        return importlib.import_module("loom_cbackend")
    finally:
        sys.path.remove(str(PLUGIN))


# --------------------------------------------------------------------------
# Installed: found through entry points
# --------------------------------------------------------------------------


def test_listings_show_the_plugin(installed_plugin: None) -> None:
    passes, targets = loom("passes"), loom("targets")
    assert passes.returncode == 0 and targets.returncode == 0, passes.stderr + targets.stderr
    assert re.search(r"^div-to-mul +Turn f32 division by a constant into multiplication", passes.stdout, re.M)
    assert re.search(r"^c +one portable C file built with the system C compiler", targets.stdout, re.M)


def test_run_checks_against_the_interpreter(installed_plugin: None) -> None:
    run = loom("run", "samples/mlp.loom", "-p", "div-to-mul", "--target", "c", "--check")
    assert run.returncode == 0, run.stderr
    assert "model mlp on c" in run.stdout
    assert re.search(r"^  c_source_bytes: [1-9]\d*$", run.stdout, re.M)
    assert re.search(r"^  cc: \S+", run.stdout, re.M)


def test_compile_emits_a_standalone_c_file(installed_plugin: None, tmp_path: Path) -> None:
    out = tmp_path / "block.c"
    compiled = loom("compile", "samples/transformer_block.loom", "-p", "div-to-mul", "--target", "c",
                    "--emit", "c", "-o", str(out))
    assert compiled.returncode == 0, compiled.stderr
    source = out.read_text()
    assert re.search(r"^void loom_transformer_block\(float \*x_\d+, float \*y_\d+\) \{$", source, re.M)
    # `scores / 8` reached the C file as a multiplication by 1/8.
    assert "0x1p-3f" in source and "0x1p+3f" not in source
    cc = shutil.which("cc") or shutil.which("gcc")
    syntax = subprocess.run([cc, "-std=c11", "-fsyntax-only", "-Wall", "-Werror", str(out)],
                            capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


# --------------------------------------------------------------------------
# In-process: runtime registration and the artifact contract
# --------------------------------------------------------------------------


@pytest.mark.parametrize("sample", ["xor", "mlp", "transformer_block"])
def test_runtime_registration(plugin, sample: str) -> None:
    compiler.register_pass(plugin.DivToMulPass)
    compiler.register_backend(plugin.CBackend)
    assert get_pass("div-to-mul") is plugin.DivToMulPass and get_backend("c") is plugin.CBackend
    artifact = compiler.compile(ROOT / f"samples/{sample}.loom", target="c", passes="div-to-mul")
    result = compiler.check(artifact, random_inputs(artifact.signature, seed=3))
    assert result.max_abs_err <= 1e-4


def test_artifact_report_and_emit(plugin, tmp_path: Path) -> None:
    compiler.register_backend(plugin.CBackend)
    artifact = compiler.compile(ROOT / "samples/xor.loom", target="c")
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    np.testing.assert_array_equal(artifact.run(x=x)["y"], [[0], [1], [1], [0]])
    assert artifact.report["c_source_bytes"] == len(artifact.source.encode())
    assert Path(artifact.report["cc"]).name in ("cc", "gcc")
    assert artifact.emit("c", str(tmp_path / "xor.c")) == [str(tmp_path / "xor.c")]
    assert (tmp_path / "xor.c").read_text() == artifact.source
    artifact.emit("ir", str(tmp_path / "xor.mlir"))
    assert "scf.for" in (tmp_path / "xor.mlir").read_text()
    with pytest.raises(compiler.LoomError, match="cannot emit 'llvm'"):
        artifact.emit("llvm", str(tmp_path / "xor.ll"))


@pytest.mark.parametrize(
    "source, message",
    [
        ("model m {\n input x: f16[4]\n y = x * 2\n output y\n}", "cannot translate func.func: f16 values"),
        ("model m {\n input a: i32[4]\n input b: i32[4]\n y = a / b\n output y\n}",
         "cannot translate arith.divsi"),
    ],
)
def test_unsupported_ops_are_named(plugin, source: str, message: str) -> None:
    compiler.register_backend(plugin.CBackend)
    with pytest.raises(compiler.LoomError, match=re.escape(message)):
        compiler.compile(source, target="c")


def test_loop_carried_values(plugin) -> None:
    """iter_args: a running sum, its previous value, and a pair swapped on every iteration."""
    module = parse_mlir("""
builtin.module {
  func.func @carry(%x: memref<7xf32>, %y: memref<4xf32>) attributes {loom.model, loom.inputs = ["x"], loom.outputs = ["y"]} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c2 = arith.constant 2 : index
    %c3 = arith.constant 3 : index
    %c7 = arith.constant 7 : index
    %zero = arith.constant 0.0 : f32
    %first = memref.load %x[%c0] : memref<7xf32>
    %second = memref.load %x[%c1] : memref<7xf32>
    %r:4 = scf.for %i = %c0 to %c7 step %c1 iter_args(%sum = %zero, %previous = %zero, %a = %first, %b = %second) -> (f32, f32, f32, f32) {
      %v = memref.load %x[%i] : memref<7xf32>
      %next = arith.addf %sum, %v : f32
      scf.yield %next, %sum, %b, %a : f32, f32, f32, f32
    }
    memref.store %r#0, %y[%c0] : memref<4xf32>
    memref.store %r#1, %y[%c1] : memref<4xf32>
    memref.store %r#2, %y[%c2] : memref<4xf32>
    memref.store %r#3, %y[%c3] : memref<4xf32>
    func.return
  }
}
""")
    signature = ModelSignature("carry", (TensorSpec("x", (7,), "f32"),), (TensorSpec("y", (4,), "f32"),))
    artifact = plugin.CArtifact(plugin.c_source.translate_to_c(module, signature), signature, opt_level=2)
    x = np.array([3, 5, -1, 2, 8, 0.5, 4], np.float32)
    # seven swaps leave the pair exchanged
    np.testing.assert_array_equal(artifact.run(x=x)["y"], [x.sum(), x[:-1].sum(), x[1], x[0]])


# --------------------------------------------------------------------------
# The div-to-mul pass on its own
# --------------------------------------------------------------------------


def divide(plugin, source: str, weights: dict[str, np.ndarray]):
    """(module before, module after div-to-mul) for a model given as DSL text."""
    before = compiler.load_module(source, weights)
    after = before.clone()
    plugin.DivToMulPass().apply(make_context(), after)
    after.verify()
    return before, after


def op_names(module) -> list[str]:
    return [op.name for op in module.walk() if op.name.startswith("nn.")]


def test_division_by_a_constant_becomes_multiplication(plugin) -> None:
    divisor = np.array([2.0, -0.5, 3.0], np.float32)
    before, after = divide(plugin, "model m {\n input x: f32[2, 3]\n param c: f32[3]\n y = x / c\n output y\n}",
                           {"c": divisor})
    assert op_names(before) == ["nn.constant", "nn.div"]
    assert op_names(after) == ["nn.constant", "nn.mul"]  # the divisor itself is gone
    (factor,) = [op for op in after.walk() if op.name == "nn.constant"]
    np.testing.assert_array_equal(factor.array(), np.float32(1) / divisor)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    want = run_model(find_model(before, None), {"x": x})["y"]
    got = run_model(find_model(after, None), {"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


def test_scalar_literal_divisor(plugin) -> None:
    _, after = divide(plugin, "model m {\n input x: f32[4]\n y = x / 8\n output y\n}", {})
    assert op_names(after) == ["nn.constant", "nn.mul"]
    (factor,) = [op for op in after.walk() if op.name == "nn.constant"]
    assert factor.array().shape == () and factor.array() == np.float32(0.125)


@pytest.mark.parametrize(
    "source, weights",
    [
        # dividing by an input: nothing is known about it
        ("model m {\n input x: f32[3]\n input z: f32[3]\n y = x / z\n output y\n}", {}),
        # a zero in the divisor has no finite reciprocal
        ("model m {\n input x: f32[3]\n param c: f32[3]\n y = x / c\n output y\n}",
         {"c": np.array([2, 0, 4], np.float32)}),
        # 1/1e-40 overflows f32
        ("model m {\n input x: f32[3]\n param c: f32[3]\n y = x / c\n output y\n}",
         {"c": np.array([2, 1e-40, 4], np.float32)}),
        # integer division truncates; there is no reciprocal to take
        ("model m {\n input x: i32[3]\n param c: i32[3]\n y = x / c\n output y\n}",
         {"c": np.array([2, 3, 4], np.int32)}),
        # narrow floats would lose more than the last bit
        ("model m {\n input x: bf16[3]\n param c: bf16[3]\n y = x / c\n output y\n}",
         {"c": np.array([2, 3, 4], np.float32)}),
    ],
    ids=["input-divisor", "zero", "overflowing-reciprocal", "integer", "bf16"],
)
def test_divisions_left_alone(plugin, source: str, weights: dict[str, np.ndarray]) -> None:
    before, after = divide(plugin, source, weights)
    assert str(after) == str(before)


# --------------------------------------------------------------------------
# docs/extending.md quotes the plugin faithfully
# --------------------------------------------------------------------------

QUOTE = re.compile(r"^```\w*\n# from (\S+)\n(.*?)^```$", re.S | re.M)
ELISION = "# [...]\n"


def test_doc_quotes_match_the_plugin() -> None:
    """Every code block starting with `# from PATH` is a verbatim excerpt of PATH.

    A `# [...]` line in a block skips code: the pieces around it must appear
    in the file in order.
    """
    quotes = QUOTE.findall(DOC.read_text())
    assert len(quotes) >= 5
    for path, block in quotes:
        text = (ROOT / path).read_text()
        position = 0
        for piece in block.split(ELISION):
            found = text.find(piece, position)
            assert found >= 0, f"docs/extending.md quotes code that is not in {path}:\n{piece}"
            position = found + len(piece)
