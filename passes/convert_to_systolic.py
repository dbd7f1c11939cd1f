"""Place matrix products and convolutions on a systolic array; leave the rest to the host.

Every `nn.matmul` and `nn.conv2d` the array can run becomes a `systolic.gemm`
that also absorbs its epilogue: a bias add along the output columns (or
channels) and a relu, when each intermediate value has no other use. The
post-processing unit beside the array applies them to the accumulators, so
the intermediate tensors never exist. Convolution weights are rearranged
into the [groups, K, N] matrix the array reads (at compile time when they
are constants).

Whatever stays an nn op runs on the host; the pass marks each such op with
`systolic.host` saying why, so the host/accelerator split can be read off
the IR. An op stays on the host when its kind is not a product, its dtype is
not one the multipliers take (i8, and f32 in simulation), a matmul has
batched weights, or one fold of it does not fit the scratchpads.

The hardware comes from a description (`target-config`); `array` (RxC) and
`dataflow` override it. The result is stored as the module attribute
`systolic.config`, which `tile-systolic` and the backend read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, StringAttr, TensorType
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    GreedyRewritePatternApplier,
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)
from xdsl.rewriter import InsertPoint

from compiler.diagnostics import LoomError
from compiler.frontend.signatures import suggestion
from compiler.model import models
from compiler.targets import TargetDescription, load_target
from dialects import nn
from dialects.systolic import (
    CONFIG_ATTR,
    DATAFLOWS,
    HOST_ATTR,
    MAX_VIEW_EXTENT,
    ArrayConfig,
    ConvGeometry,
    GemmOp,
    GemmProblem,
    module_config,
)
from passes.systolic_schedule import NotOnArray, make_plan

DEFAULT_TARGET = "systolic-16x16"
MAX_SCRATCHPAD_BYTES = 1 << 24  # scratchpad addresses are 24 bits wide
ARRAY_DTYPES = ("i8", "f32")  # i8 multipliers; f32 is a simulation mode


# --------------------------------------------------------------------------
# The hardware
# --------------------------------------------------------------------------


def parse_array(text: str) -> tuple[int, int]:
    """`16x16` -> (16, 16); a LoomError for anything else."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if match is None or not all(0 < int(g) <= MAX_VIEW_EXTENT for g in match.groups()):
        raise LoomError(f"--array expects ROWSxCOLS with sizes from 1 to {MAX_VIEW_EXTENT}, got '{text}'")
    return int(match.group(1)), int(match.group(2))


def check_dataflow(dataflow: str) -> str:
    if dataflow not in DATAFLOWS:
        raise LoomError(f"--dataflow must be one of {', '.join(DATAFLOWS)}, got '{dataflow}'"
                        f"{suggestion(dataflow, DATAFLOWS)}")
    return dataflow


def array_config(target: TargetDescription, array: str = "", dataflow: str = "") -> ArrayConfig:
    """The array a hardware description describes, with `array` and `dataflow` overriding it.

    The scratchpad sizes are `[params.sram]` `ifmap_bytes`, `filter_bytes`
    and `ofmap_bytes`, or thirds of the on-chip level; DRAM is the last level.
    """
    unit = next((u for u in target.compute if u.kind == "systolic-array" and u.array), None)
    if unit is None:
        raise LoomError(f"target description '{target.name}' has no systolic-array compute unit")
    rows, cols = parse_array(array) if array else unit.array
    flow = check_dataflow(dataflow or str(target.params.get("dataflow", "ws")))
    sram = target.params.get("sram", {})
    third = target.scratchpad().capacity_bytes // 3
    sizes = {}
    for level in ("ifmap", "filter", "ofmap"):
        size = sram.get(f"{level}_bytes", third)
        if not isinstance(size, int) or not 0 < size <= MAX_SCRATCHPAD_BYTES:
            raise LoomError(f"target description '{target.name}': params.sram.{level}_bytes must be a positive "
                            f"integer of at most {MAX_SCRATCHPAD_BYTES} (16 MiB)")
        sizes[level] = size
    dram = target.offchip
    return ArrayConfig(rows, cols, flow, sizes["ifmap"], sizes["filter"], sizes["ofmap"], dram.capacity_bytes,
                       float(dram.bandwidth_bytes_per_cycle), dram.latency_cycles, float(target.clock_hz),
                       tuple(unit.dtypes))


# --------------------------------------------------------------------------
# Matching an op and its epilogue
# --------------------------------------------------------------------------


def _shape(value: SSAValue) -> list[int]:
    t = value.type
    assert isinstance(t, TensorType)
    return list(t.get_shape())


def _only_user(value: SSAValue) -> Operation | None:
    return next(iter(value.uses)).operation if value.has_one_use() else None


def _is_bias(candidate: SSAValue, result: SSAValue, channels_axis: int) -> bool:
    """Whether `candidate` broadcasts one value per output column/channel onto `result`."""
    shape, target = _shape(candidate), _shape(result)
    channels = target[channels_axis]
    if len(shape) > len(target) or shape.count(1) < len(shape) - 1 or np.prod(shape) != channels:
        return False
    aligned = [1] * (len(target) - len(shape)) + shape
    return aligned[channels_axis] == channels or channels == 1


@dataclass
class Epilogue:
    """The ops fused behind a product: where its value ends up and what it adds."""

    ops: list[Operation]
    result: SSAValue
    bias: SSAValue | None
    relu: bool


def match_epilogue(anchor: nn.NNOperation, bias: SSAValue | None, channels_axis: int) -> Epilogue:
    """The longest `add(bias)` then `relu` chain behind `anchor` whose values have one use each."""
    epilogue = Epilogue([anchor], anchor.result, bias, False)
    user = _only_user(epilogue.result)
    if bias is None and isinstance(user, nn.AddOp):
        other = user.operands[1] if user.operands[0] is epilogue.result else user.operands[0]
        if other is not epilogue.result and _shape(user.result) == _shape(epilogue.result) \
                and _is_bias(other, epilogue.result, channels_axis):
            epilogue.ops.append(user)
            epilogue.result, epilogue.bias = user.result, other
            user = _only_user(epilogue.result)
    if isinstance(user, nn.ReluOp):
        epilogue.ops.append(user)
        epilogue.result, epilogue.relu = user.result, True
    return epilogue


def _layer_name(epilogue: Epilogue, kind: str, taken: set[str]) -> str:
    """The DSL name of the fused result when it has one, else the name of
    the weights, else the op kind; made unique."""
    weights = epilogue.ops[0].operands[1].owner
    named = isinstance(weights, nn.ConstantOp) and weights.param_name
    fallback = weights.param_name.split(".")[0] if named else kind  # conv2_w.bn_folded -> conv2_w
    base = next((op.results[0].name_hint for op in reversed(epilogue.ops) if op.results[0].name_hint), fallback)
    name, count = base, 1
    while name in taken:
        name, count = f"{base}_{count}", count + 1
    taken.add(name)
    return name


# --------------------------------------------------------------------------
# Rewrites
# --------------------------------------------------------------------------


class PlaceOnArray(RewritePattern):
    """Base of the two rewrites: checks the dtype and the fit, builds the gemm."""

    def __init__(self, config: ArrayConfig, reasons: dict[Operation, str], names: set[str], fuse: bool):
        self.config = config
        self.reasons = reasons
        self.names = names
        self.fuse = fuse

    def epilogue(self, anchor: nn.NNOperation, bias: SSAValue | None, channels_axis: int) -> Epilogue:
        if not self.fuse:
            return Epilogue([anchor], anchor.result, bias, False)
        return match_epilogue(anchor, bias, channels_axis)

    def dtype_reason(self, op: nn.NNOperation) -> str | None:
        dtype = nn.dtype_name(op.result.type.element_type)  # type: ignore[attr-defined]
        allowed = [d for d in ARRAY_DTYPES if d in self.config.dtypes or d == "f32"]
        if dtype not in allowed:
            return f"{dtype} operands: the array multiplies {' and '.join(allowed)}"
        return None

    def place(self, anchor: nn.NNOperation, x: SSAValue, epilogue: Epilogue, conv: ConvGeometry | None,
              rewriter: PatternRewriter, weight_matrix) -> None:
        """Replace `epilogue` by a gemm if a fold fits; else record why not.
        `weight_matrix()` returns the ops making the weight matrix and its value."""
        kind = anchor.name.removeprefix("nn.")
        result_type = epilogue.result.type
        assert isinstance(result_type, TensorType)
        problem = GemmProblem.of(_shape(x), w_matrix_shape(anchor, conv), result_type.get_shape(), conv)
        element_bytes = nn.numpy_dtype(result_type.element_type).itemsize
        try:
            make_plan(problem, self.config, element_bytes, epilogue.bias is not None)
        except NotOnArray as e:
            self.reasons[anchor] = str(e)
            return
        new_ops, matrix = weight_matrix()
        fused = [op.name.removeprefix("nn.") for op in epilogue.ops]
        gemm = GemmOp(x, matrix, epilogue.bias, result_type, layer=_layer_name(epilogue, kind, self.names),
                      fused=fused, relu=epilogue.relu, conv=conv)
        rewriter.insert([*new_ops, gemm], InsertPoint.after(epilogue.ops[-1]))
        rewriter.replace_all_uses_with(epilogue.result, gemm.result)
        for op in reversed(epilogue.ops):
            rewriter.erase(op)


def w_matrix_shape(anchor: nn.NNOperation, conv: ConvGeometry | None) -> list[int]:
    w = _shape(anchor.operands[1])
    if conv is None:
        return w
    out_channels, in_per_group, kh, kw = w
    return [conv.groups, in_per_group * kh * kw, out_channels // conv.groups]


class PlaceMatmul(PlaceOnArray):
    """`x @ w` with w of rank 2 (x's leading dims are rows), plus its epilogue."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: nn.MatmulOp, rewriter: PatternRewriter):
        if op in self.reasons:
            return
        x, w = op.operands
        reason = self.dtype_reason(op)
        if reason is None and len(_shape(w)) != 2:
            reason = "batched weights: the array multiplies by one weight matrix at a time"
        if reason is not None:
            self.reasons[op] = reason
            return
        epilogue = self.epilogue(op, None, len(_shape(op.result)) - 1)
        self.place(op, x, epilogue, None, rewriter, lambda: ([], w))


class PlaceConv2d(PlaceOnArray):
    """`conv2d(x, w[, b])` as a product of im2col(x) and the weight matrix, plus its epilogue."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: nn.Conv2dOp, rewriter: PatternRewriter):
        if op in self.reasons:
            return
        reason = self.dtype_reason(op)
        if reason is not None:
            self.reasons[op] = reason
            return
        p = op.params()
        kh, kw = _shape(op.operands[1])[2:]
        conv = ConvGeometry((kh, kw), tuple(p["stride"]), tuple(p["padding"]), tuple(p["dilation"]), p["groups"])
        bias = op.operands[2] if len(op.operands) == 3 else None
        epilogue = self.epilogue(op, bias, 1)
        w = op.operands[1]

        def weight_matrix() -> tuple[list[Operation], SSAValue]:
            groups, k, n = w_matrix_shape(op, conv)
            owner = w.owner
            if isinstance(owner, nn.ConstantOp):
                array = np.ascontiguousarray(owner.array().reshape(groups, n, k).transpose(0, 2, 1))
                name = f"{owner.param_name}.matrix" if owner.param_name else None
                matrix = nn.ConstantOp(array, w.type.element_type, name)  # type: ignore[attr-defined]
                matrix.result.name_hint = w.name_hint
                return [matrix], matrix.result
            grouped = nn.ReshapeOp.make([w], shape=[groups, n, k])
            transposed = nn.TransposeOp.make([grouped], perm=[0, 2, 1])
            return [grouped, transposed], transposed.result

        self.place(op, op.operands[0], epilogue, conv, rewriter, weight_matrix)


# --------------------------------------------------------------------------
# The pass
# --------------------------------------------------------------------------


def _host_reason(op: nn.NNOperation) -> str:
    return f"{op.name.removeprefix('nn.')} is not a matrix product or convolution"


@dataclass(frozen=True)
class ConvertToSystolicPass(ModulePass):
    """Put matmuls and convolutions (with bias and relu) on the systolic array; mark the rest for the host."""

    name = "convert-to-systolic"

    target_config: str = DEFAULT_TARGET
    """A built-in hardware description or a TOML file with a systolic-array compute unit."""

    array: str = ""
    """ROWSxCOLS, overriding the description's array."""

    dataflow: str = ""
    """ws, os or is, overriding the description's dataflow."""

    fuse_epilogues: bool = True
    """Absorb bias adds and relus into the output unit (off: they run on the host)."""

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        existing = module_config(op)
        config = array_config(load_target(self.target_config), self.array, self.dataflow)
        if existing is not None and existing != config:
            raise LoomError("the module was already placed on a different systolic array")
        op.attributes[CONFIG_ATTR] = config.to_attr()
        reasons: dict[Operation, str] = {}
        for function in models(op):
            names: set[str] = set()
            PatternRewriteWalker(
                GreedyRewritePatternApplier([PlaceMatmul(config, reasons, names, self.fuse_epilogues),
                                             PlaceConv2d(config, reasons, names, self.fuse_epilogues)]),
                apply_recursively=False,
            ).rewrite_region(function.body)
            for inner in function.body.ops:
                if isinstance(inner, nn.NNOperation):
                    inner.attributes[HOST_ATTR] = StringAttr(reasons.get(inner) or _host_reason(inner))
