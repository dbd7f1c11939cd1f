"""The xDSL context every part of Loom parses and builds IR in."""

from __future__ import annotations

from xdsl.context import Context
from xdsl.dialects import affine, arith, func, linalg, math, memref, scf, tensor, vector
from xdsl.dialects.builtin import Builtin

from dialects.hls import HLS
from dialects.mem import MEM
from dialects.nn import NN
from dialects.pim import PIM
from dialects.systolic import SYSTOLIC
from dialects.quant import QUANT


def make_context() -> Context:
    """A context with Loom's dialects and the upstream ones its lowerings use."""
    ctx = Context()
    for dialect in (Builtin, func.Func, arith.Arith, math.Math, scf.Scf, memref.MemRef,
                    linalg.Linalg, tensor.Tensor, affine.Affine, vector.Vector, NN, MEM, QUANT, SYSTOLIC, HLS, PIM):
        ctx.load_dialect(dialect)
    return ctx
