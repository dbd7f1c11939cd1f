"""The `loom` command line, mostly in-process (fast) with a few real subprocesses."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
from xdsl.passes import ModulePass

import compiler
from backends.interp import InterpreterBackend
from compiler.cli import EXIT_INTERNAL_ERROR, build_parser, main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_check_json(capsys, root) -> None:
    code, out, _ = run_cli(capsys, "run", str(root / "samples/mlp.loom"), "--check", "--report", "json")
    assert code == 0
    report = json.loads(out)
    assert report["target"] == "cpu" and report["model"] == "mlp"
    assert report["outputs"]["y"] == {"shape": [1, 10], "dtype": "f32"}
    assert 0 <= report["max_abs_err"] <= 1e-4
    assert report["wall_time_s"] > 0


def test_run_with_inputs_file(capsys, root, tmp_path) -> None:
    x = np.linspace(-1, 1, 784, dtype=np.float32).reshape(1, 784)
    np.savez(tmp_path / "in.npz", x=x)
    code, out, _ = run_cli(capsys, "run", str(root / "samples/mlp.loom"), "--inputs", str(tmp_path / "in.npz"),
                           "--save-outputs", str(tmp_path / "out.npz"))
    assert code == 0 and "output y: float32[1, 10]" in out
    expected = compiler.compile(root / "samples/mlp.loom", target="interp").run(x=x)["y"]
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["y"], expected, atol=1e-5)


def test_run_rejects_wrong_input_shape(capsys, root, tmp_path) -> None:
    np.savez(tmp_path / "in.npz", x=np.zeros((2, 784), np.float32))
    code, _, err = run_cli(capsys, "run", str(root / "samples/mlp.loom"), "--inputs", str(tmp_path / "in.npz"))
    assert code == 1
    assert "input 'x' must have shape [1, 784]" in err


@pytest.mark.parametrize(
    "kind, suffixes",
    [("obj", [".o", ".h"]), ("shared", [".so", ".h"]), ("llvm", [".ll"]), ("asm", [".s"]),
     ("ir", [".mlir"]), ("nn", [".mlir"])],
)
def test_compile_emits(capsys, root, tmp_path, kind, suffixes) -> None:
    out = tmp_path / f"mlp{suffixes[0]}"
    code, _, err = run_cli(capsys, "compile", str(root / "samples/mlp.loom"), "--emit", kind, "-o", str(out))
    assert code == 0, err
    for suffix in suffixes:
        written = out.with_suffix(suffix)
        assert written.is_file() and written.stat().st_size > 0, written


def test_emitted_ir_roundtrips_through_opt(capsys, root, tmp_path) -> None:
    nn_file = tmp_path / "lenet.nn.mlir"
    assert run_cli(capsys, "compile", str(root / "samples/lenet.loom"), "--emit", "nn", "-o", str(nn_file))[0] == 0
    code, out, _ = run_cli(capsys, "opt", str(nn_file))
    assert code == 0
    assert out == nn_file.read_text()
    # and the printed nn module compiles and runs like the source it came from
    code, _, err = run_cli(capsys, "run", str(nn_file), "--check")
    assert code == 0, err


def test_check_lists_models(capsys, root) -> None:
    code, out, _ = run_cli(capsys, "check", str(root / "samples/transformer_block.loom"))
    assert code == 0 and "ok" in out


def test_print_ir_and_timing(capsys, root) -> None:
    code, _, err = run_cli(capsys, "run", str(root / "samples/xor.loom"), "--print-ir-after-all", "--timing")
    assert code == 0
    assert "IR Dump After convert-nn-to-linalg" in err and "IR Dump After bufferize" in err
    assert "Pass execution timing" in err
    code, _, err = run_cli(capsys, "run", str(root / "samples/xor.loom"), "--print-ir-after", "bufferize")
    assert err.count("IR Dump After") == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "samples/mlp.loom", "-p", "no-such-pass"], "unknown pass 'no-such-pass'"),
        (["run", "samples/mlp.loom", "--target", "tpu"], "unknown target 'tpu'"),
        (["run", "samples/missing.loom"], "no such file"),
        (["run", "samples/mlp.loom", "--model", "other"], "no model named 'other'"),
        (["run", "samples/mlp.loom", "--weights", "nope.npz"], "weights file 'nope.npz' does not exist"),
    ],
)
def test_user_errors(capsys, root, monkeypatch, argv, message) -> None:
    monkeypatch.chdir(root)
    code, _, err = run_cli(capsys, *argv)
    assert code == 1
    assert message in err and "Traceback" not in err


def test_listings(capsys) -> None:
    code, out, _ = run_cli(capsys, "passes")
    assert code == 0 and "convert-nn-to-linalg" in out and "fold-constants" in out
    code, out, _ = run_cli(capsys, "targets")
    assert code == 0 and "cpu" in out and "interp" in out


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def test_every_command_and_option_is_described() -> None:
    parser = build_parser()
    commands = _subcommands(parser)
    helped = {a.dest for a in parser._actions if isinstance(a, argparse._SubParsersAction) for a in a._choices_actions}
    assert helped == set(commands)
    for name, command in commands.items():
        assert command.description, f"loom {name} has no description"
        for action in command._actions:
            assert action.help, f"loom {name}: {action.option_strings or action.dest} has no help"


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("loom ")


class RecordingBackend(InterpreterBackend):
    """The interpreter, remembering the options it was built with."""

    name = "test-recording"
    seen: dict = {}

    def build(self, module, signature, options):
        RecordingBackend.seen = dict(options.extra)
        return super().build(module, signature, options)


def test_target_options_reach_the_backend(capsys, root) -> None:
    compiler.register_backend(RecordingBackend)
    code, _, _ = run_cli(capsys, "run", str(root / "samples/xor.loom"), "--target", "test-recording",
                         "-X", "reuse_factor=16", "--target-option", "mode=a=b", "--array", "4x4")
    assert code == 0
    assert RecordingBackend.seen == {"reuse_factor": "16", "mode": "a=b", "array": "4x4"}
    code, _, err = run_cli(capsys, "run", str(root / "samples/xor.loom"), "-X", "reuse_factor")
    assert code == 1 and "-X expects KEY=VALUE, got 'reuse_factor'" in err


class ExplodingPass(ModulePass):
    """Raises, standing in for a buggy pass."""

    name = "test-explode"

    def apply(self, ctx, op) -> None:
        raise RuntimeError("boom")


def test_internal_errors_are_labelled(capsys, root) -> None:
    compiler.register_pass(ExplodingPass)
    code, _, err = run_cli(capsys, "run", str(root / "samples/xor.loom"), "-p", "test-explode")
    assert code == EXIT_INTERNAL_ERROR
    assert "internal error: RuntimeError: boom" in err


class OffByOneBackend(InterpreterBackend):
    """The interpreter with every output shifted: `--check` must catch it."""

    name = "test-off-by-one"

    def build(self, module, signature, options):
        artifact = super().build(module, signature, options)
        execute = artifact._execute
        artifact._execute = lambda inputs: {k: v + 1 for k, v in execute(inputs).items()}
        return artifact


def test_check_fails_on_wrong_results(capsys, root) -> None:
    compiler.register_backend(OffByOneBackend)
    code, _, err = run_cli(capsys, "run", str(root / "samples/xor.loom"), "--target", "test-off-by-one", "--check")
    assert code == 1 and "exceeds tolerance" in err


def test_real_process_exit_status(root, tmp_path) -> None:
    bad = tmp_path / "bad.loom"
    bad.write_text("model m {\n  input x: f32[2]\n  y = relu(x\n  output y\n}\n")
    out = tmp_path / "m.o"
    proc = subprocess.run([sys.executable, "-m", "compiler.cli", "compile", str(bad), "-o", str(out)],
                          capture_output=True, text=True, cwd=root)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"{bad}:")
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_explain_reports_fusion_tiles_schedule_and_memory(capsys, root, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(capsys, "compile", str(root / "samples/mlp.loom"), "--explain")
    assert code == 0 and list(tmp_path.iterdir()) == []  # explaining writes nothing
    assert "matmul -> add -> relu(h)" in out  # the schedule
    kernel = next(line for line in out.splitlines() if "matmul + add + relu" in line)  # an epilogue fused
    assert " h " in kernel and " us " in kernel  # with its tiles' predicted time
    assert "arena:" in out and "peak intermediate memory" in out
    code, out, _ = run_cli(capsys, "compile", str(root / "samples/mlp.loom"), "--explain",
                           "--tile", "matmul=1,16,32")
    kernel = next(line for line in out.splitlines() if "matmul + add + relu" in line)
    assert "-,16,32" in kernel  # a tile covering its whole dim shows as "-"


def test_no_fusion_keeps_every_op_in_its_own_loop_nest(capsys, root) -> None:
    code, out, _ = run_cli(capsys, "compile", str(root / "samples/mlp.loom"), "--explain", "--no-fusion")
    assert code == 0
    kernels = out.split("kernels")[1].split("memory:")[0]
    assert "matmul + add" not in kernels and " relu " in kernels and " add " in kernels
