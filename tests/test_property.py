"""Random small elementwise/matmul graphs, written as DSL text, compile for the
CPU and agree with the reference interpreter."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import compiler
from compiler.artifact import random_inputs

UNARY = ["relu({})", "tanh({})", "sigmoid({})", "-{}", "gelu({})"]
BINARY = ["{} + {}", "{} - {}", "{} * {}", "{} / (1.5 + {} * {})"]


@st.composite
def models(draw) -> str:
    shapes = {"x": [draw(st.integers(1, 4)), draw(st.integers(1, 6))]}
    lines = [f"  input x: f32[{shapes['x'][0]}, {shapes['x'][1]}]"]
    for i in range(draw(st.integers(1, 6))):
        src = draw(st.sampled_from(sorted(shapes)))
        rows, cols = shapes[src]
        kind = draw(st.sampled_from(["unary", "binary", "matmul"]))
        name = f"v{i}"
        if kind == "unary":
            expr, shape = draw(st.sampled_from(UNARY)).format(src), [rows, cols]
        elif kind == "matmul":
            inner = draw(st.integers(1, 6))
            lines.append(f"  param w{i}: f32[{cols}, {inner}] = uniform(-1.0, 1.0, seed={i})")
            expr, shape = f"{src} @ w{i}", [rows, inner]
        else:
            operand_shape = draw(st.sampled_from([[cols], [1, cols], [rows, 1], [rows, cols]]))
            dims = ", ".join(map(str, operand_shape))
            lines.append(f"  param p{i}: f32[{dims}] = normal(0.0, 1.0, seed={i})")
            template = draw(st.sampled_from(BINARY))
            expr = template.format(src, f"p{i}", f"p{i}")
            shape = [rows, cols]
        lines.append(f"  {name} = {expr}")
        shapes[name] = shape
    lines.append(f"  output {name}")
    return "model g {\n" + "\n".join(lines) + "\n}\n"


@settings(max_examples=30, deadline=None)
@given(models(), st.integers(0, 2**16))
def test_random_graphs_match_interpreter(source: str, seed: int) -> None:
    artifact = compiler.compile(source, target="cpu")
    inputs = random_inputs(artifact.signature, seed)
    result = compiler.check(artifact, inputs)
    scale = max(1.0, max(float(np.max(np.abs(r))) for r in result.reference.values()))
    assert result.max_abs_err <= 1e-4 * scale, source
