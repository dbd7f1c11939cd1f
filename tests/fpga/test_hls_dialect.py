"""The hls dialect: verification and print/parse round trips."""

from __future__ import annotations

import pytest
from xdsl.utils.exceptions import VerifyException

from compiler.diagnostics import LoomError
from compiler.mlir import parse_mlir
from dialects import hls

MODULE = """builtin.module {
  func.func @f(%x: tensor<4xf32>) -> tensor<4xf32> {
    %e = hls.engine "fc1" attributes {reuse_factor = 4 : i64, hls.pipeline = #hls.pipeline<ii = 2>, hls.unroll = #hls.unroll<factors = [1, 4]>, hls.partition = [[#hls.partition<cyclic, dim = 1, factor = 8>, #hls.partition<complete, dim = 0>, #hls.partition<block, dim = 2, factor = 3>], []]} {
      hls.yield %x : tensor<4xf32>
    } : tensor<4xf32>
    %s = hls.stream %e {depth = 4 : i64} : tensor<4xf32>
    func.return %s : tensor<4xf32>
  }
}"""


def test_print_parse_roundtrip() -> None:
    module = parse_mlir(MODULE)
    text = str(module)
    assert str(parse_mlir(text)) == text
    engine = next(op for op in module.walk() if isinstance(op, hls.EngineOp))
    assert engine.layer_name == "fc1" and engine.reuse_factor.value.data == 4
    cyclic, complete, block = engine.attributes[hls.PARTITION_ATTR].data[0].data
    assert (cyclic.kind, cyclic.dim, cyclic.factor) == ("cyclic", 1, 8)
    assert cyclic.bank_of(13, 32) == 5 and complete.bank_of(3, 4) == 3 and block.bank_of(7, 9) == 2
    assert engine.attributes[hls.UNROLL_ATTR].factors == (1, 4)


@pytest.mark.parametrize("bad, message", [
    ("#hls.pipeline<ii = 2>", "#hls.pipeline<ii = 0>"),
    ("#hls.unroll<factors = [1, 4]>", "#hls.unroll<factors = [0, 4]>"),
    ("depth = 4 : i64", "depth = 0 : i64"),
    ("reuse_factor = 4 : i64", "reuse_factor = 0 : i64"),
    ("hls.yield %x : tensor<4xf32>", "%y = tensor.empty() : tensor<2xf32>\n      hls.yield %y : tensor<2xf32>"),
])
def test_verifier_rejects(bad: str, message: str) -> None:
    with pytest.raises((LoomError, VerifyException)):
        parse_mlir(MODULE.replace(bad, message))


def test_partition_kind_checked() -> None:
    with pytest.raises((LoomError, VerifyException)):
        parse_mlir(MODULE.replace("#hls.partition<block", "#hls.partition<diagonal"))
