"""PyTorch modules exported to ONNX with torch's own exporter compile with
Loom and compute what torch computes.

Both exporters are exercised: the default one (torch.export based, which
emits opset 18+ graphs through onnxscript) and the legacy TorchScript one
that older tools still produce.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import compiler
from compiler.diagnostics import LoomError

TOLERANCE = 1e-4


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2)
        self.fc = nn.Linear(8 * 3 * 3, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = nn.functional.avg_pool2d(torch.relu(self.conv2(x)), 2)
        return torch.softmax(self.fc(torch.flatten(x, 1)), dim=-1)


class AttentionBlock(nn.Module):
    """Pre-norm single-head self-attention with a GELU feed-forward."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)
        self.scale = width ** -0.5

    def forward(self, x):
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        attention = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)
        x = x + self.proj(attention @ v)
        return x + self.down(nn.functional.gelu(self.up(self.norm2(x)), approximate="tanh"))


MODULES = {
    "mlp": (lambda: nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 10), nn.Sigmoid()), (1, 20)),
    "cnn": (SmallCNN, (1, 1, 28, 28)),
    "attention": (AttentionBlock, (1, 8, 32)),
}


def _export(name: str, path, dynamo: bool):
    torch.manual_seed(0)
    make, shape = MODULES[name]
    module = make().eval()
    example = torch.randn(*shape)
    with torch.no_grad():
        if isinstance(module, SmallCNN):  # non-trivial running statistics for the folded batchnorm
            module.bn1.running_mean.uniform_(-0.5, 0.5)
            module.bn1.running_var.uniform_(0.5, 2.0)
        expected = module(example).numpy()
    torch.onnx.export(module, (example,), str(path), input_names=["x"], output_names=["y"],
                      dynamo=dynamo, **({} if dynamo else {"opset_version": 17}))
    return example.numpy(), expected


@pytest.mark.parametrize(
    "name, dynamo",
    [("attention", True), ("cnn", True), ("attention", False), ("mlp", False)],
    ids=["attention-torch.export", "cnn-torch.export", "attention-torchscript", "mlp-torchscript"],
)
def test_exported_module_matches_torch(tmp_path, name, dynamo):
    x, expected = _export(name, tmp_path / f"{name}.onnx", dynamo)
    artifact = compiler.compile(str(tmp_path / f"{name}.onnx"), target="cpu")
    (got,) = artifact.run(x=x).values()
    assert got.shape == expected.shape
    assert np.max(np.abs(got - expected)) <= TOLERANCE


def test_unsupported_torch_operator_is_named(tmp_path):
    """An operator the DSL lacks is reported by name, not dropped."""

    class Cumulative(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, dim=-1)

    torch.onnx.export(Cumulative(), (torch.randn(2, 5),), str(tmp_path / "c.onnx"),
                      input_names=["x"], output_names=["y"], dynamo=False, opset_version=17)
    with pytest.raises(LoomError, match="CumSum"):
        compiler.compile(str(tmp_path / "c.onnx"), target="cpu")
