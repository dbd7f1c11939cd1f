"""Place matrix products and convolutions on a systolic array; leave the rest to the host.

Every `nn.matmul` and `nn.conv2d` the array can run becomes a `systolic.gemm`
that also absorbs its epilogue: a bias add along the output columns (or
channels) and a relu, when each intermediate value has no other use. The
post-processing unit beside the array applies them to the accumulators, so
the intermediate tensors never exist. Convolution weights are rearranged
into the [groups, K, N] matrix the array reads (at compile time when they
are constants).

Quantized layers (`quant.matmul` / `quant.conv2d`, their i32 bias add and
the `quant.requantize` behind them) become i8 gemms the same way: the
input zero point's correction is folded into the i32 bias, convolution
padding reads the zero point, and the requantization (one multiplier, or
one per output channel) runs in the output unit.

Whatever stays an nn or quant op runs on the host; the pass marks each such
op with `systolic.host` saying why, so the host/accelerator split can be
read off the IR. An op stays on the host when its kind is not a product
(quantize and dequantize included), its dtype is not one the multipliers
take (i8, and f32 in simulation), a matmul has batched weights, a quantized
product has a weight zero point (or non-constant weights with an input zero
point), or one fold of it does not fit the scratchpads.

The hardware comes from a description (`target-config`); `array` (RxC) and
`dataflow` override it. The result is stored as the module attribute
`systolic.config`, which `tile-systolic` and the backend read.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, StringAttr, TensorType, i8, i32
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
from dialects import nn, quant
from dialects.systolic import (
    CONFIG_ATTR,
    DATAFLOWS,
    HOST_ATTR,
    MAX_VIEW_EXTENT,
    ArrayConfig,
    ConvGeometry,
    GemmOp,
    GemmProblem,
    Requantization,
    module_config,
)
from passes.systolic_schedule import ElementBytes, NotOnArray, make_plan

DEFAULT_TARGET = "systolic-16x16"
MAX_SCRATCHPAD_BYTES = 1 << 24  # scratchpad addresses are 24 bits wide
ARRAY_DTYPES = ("i8", "f32")  # i8 multipliers; f32 is a simulation mode
BATCHED_WEIGHTS = "batched weights: the array multiplies by one weight matrix at a time"


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
    relu: bool = False
    requant: Requantization | None = None

    def absorb(self, op: Operation, bias: SSAValue | None = None) -> None:
        self.ops.append(op)
        self.result = op.results[0]
        if bias is not None:
            self.bias = bias

    def bias_add(self, channels_axis: int) -> tuple[nn.AddOp, SSAValue] | None:
        """The add of one value per output column/channel that alone reads the result, and that value."""
        user = _only_user(self.result)
        if self.bias is not None or not isinstance(user, nn.AddOp):
            return None
        other = user.operands[1] if user.operands[0] is self.result else user.operands[0]
        if other is self.result or _shape(user.result) != _shape(self.result) \
                or not _is_bias(other, self.result, channels_axis):
            return None
        return user, other


def match_epilogue(anchor: Operation, bias: SSAValue | None, channels_axis: int) -> Epilogue:
    """The longest `add(bias)` then `relu` chain behind `anchor` whose values have one use each."""
    epilogue = Epilogue([anchor], anchor.results[0], bias)
    if (found := epilogue.bias_add(channels_axis)) is not None:
        epilogue.absorb(*found)
    user = _only_user(epilogue.result)
    if isinstance(user, nn.ReluOp):
        epilogue.absorb(user)
        epilogue.relu = True
    return epilogue


def _constant(value: SSAValue | None) -> nn.ConstantOp | None:
    owner = value.owner if value is not None else None
    return owner if isinstance(owner, nn.ConstantOp) else None


def _output_unit_requantization(op: Operation | None, channels_axis: int) -> Requantization | None:
    """`op` as the output unit computes it, if it is a requantize it can:
    one multiplier or one per output column, saturating to i8 with at most
    a relu (the lower clamp at the zero point)."""
    if not isinstance(op, quant.RequantizeOp):
        return None
    p = op.params()
    lo, hi = quant.value_range(8)
    per_channel = len(p["multiplier"]) > 1
    if p["clamp"][1] != hi or p["clamp"][0] not in (lo, p["zero_point"]) \
            or (per_channel and p["axis"] != channels_axis):
        return None
    return Requantization(tuple(p["multiplier"]), tuple(p["shift"]), p["zero_point"])


def match_quant_epilogue(anchor: Operation, bias: SSAValue | None, channels_axis: int,
                         constant_bias: bool) -> Epilogue:
    """The i32 bias add (of a constant, if `constant_bias`) and the
    requantization behind a quantized product, as far as the output unit
    can take them."""
    epilogue = Epilogue([anchor], anchor.results[0], bias)
    found = epilogue.bias_add(channels_axis)
    if found is not None and (not constant_bias or _constant(found[1]) is not None):
        epilogue.absorb(*found)
    user = _only_user(epilogue.result)
    requant = _output_unit_requantization(user, channels_axis)
    if requant is not None:
        assert user is not None
        epilogue.absorb(user)
        epilogue.requant = requant
        epilogue.relu = user.params()["clamp"][0] != quant.value_range(8)[0]  # type: ignore[attr-defined]
    return epilogue


def fold_input_zero_point(matrix: SSAValue, bias: SSAValue | None, zero_point: int,
                          name: str | None) -> nn.ConstantOp:
    """The i32 bias of a product whose input zero point the array does not
    subtract: sum_k (x - zp) w = sum_k x w - zp sum_k w, so each column gets
    -zp times the sum of its weights (wrapping in i32 like the sums)."""
    weights = _constant(matrix)
    assert weights is not None
    correction = -zero_point * weights.array().astype(np.int64).sum(axis=-2).reshape(-1)
    given = _constant(bias)
    total = correction + (given.array().astype(np.int64).reshape(-1) if given is not None else 0)
    wrapped = (total + (1 << 31)) % (1 << 32) - (1 << 31)
    return nn.ConstantOp(wrapped, i32, name)


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


Operands = Callable[[], tuple[list[Operation], SSAValue, SSAValue | None]]
"""Builds a gemm's operands on demand: new ops, the weight matrix, the bias."""


class PlaceOnArray(RewritePattern):
    """Base of the rewrites: checks the dtype and the fit, builds the gemm."""

    def __init__(self, config: ArrayConfig, reasons: dict[Operation, str], names: set[str], fuse: bool):
        self.config = config
        self.reasons = reasons
        self.names = names
        self.fuse = fuse

    def epilogue(self, anchor: nn.NNOperation, bias: SSAValue | None, channels_axis: int) -> Epilogue:
        if not self.fuse:
            return Epilogue([anchor], anchor.result, bias)
        return match_epilogue(anchor, bias, channels_axis)

    def dtype_reason(self, dtype: str) -> str | None:
        allowed = [d for d in ARRAY_DTYPES if d in self.config.dtypes or d == "f32"]
        if dtype not in allowed:
            return f"{dtype} operands: the array multiplies {' and '.join(allowed)}"
        return None

    def place(self, anchor: Operation, x: SSAValue, epilogue: Epilogue, conv: ConvGeometry | None,
              rewriter: PatternRewriter, operands: Operands, sizes: ElementBytes, pad_value: int = 0) -> None:
        """Replace `epilogue` by a gemm if a fold fits; else record why not."""
        kind = anchor.name.removeprefix("nn.")
        result_type = epilogue.result.type
        assert isinstance(result_type, TensorType)
        problem = GemmProblem.of(_shape(x), w_matrix_shape(anchor, conv), result_type.get_shape(), conv)
        try:
            make_plan(problem, self.config, sizes, pad_value)
        except NotOnArray as e:
            self.reasons[anchor] = str(e)
            return
        new_ops, matrix, bias = operands()
        fused = [op.name.removeprefix("nn.") for op in epilogue.ops]
        gemm = GemmOp(x, matrix, bias, result_type, layer=_layer_name(epilogue, kind, self.names),
                      fused=fused, relu=epilogue.relu, conv=conv, pad_value=pad_value, requant=epilogue.requant)
        rewriter.insert([*new_ops, gemm], InsertPoint.after(epilogue.ops[-1]))
        rewriter.replace_all_uses_with(epilogue.result, gemm.result)
        for op in reversed(epilogue.ops):
            rewriter.erase(op)


def w_matrix_shape(anchor: Operation, conv: ConvGeometry | None) -> list[int]:
    w = _shape(anchor.operands[1])
    if conv is None:
        return w
    out_channels, in_per_group, kh, kw = w
    return [conv.groups, in_per_group * kh * kw, out_channels // conv.groups]


def conv_geometry(op: nn.Conv2dOp | quant.Conv2dOp) -> ConvGeometry:
    p = op.params()
    kh, kw = _shape(op.operands[1])[2:]
    return ConvGeometry((kh, kw), tuple(p["stride"]), tuple(p["padding"]), tuple(p["dilation"]), p["groups"])


def conv_weight_matrix(op: nn.Conv2dOp | quant.Conv2dOp, conv: ConvGeometry) -> tuple[list[Operation], SSAValue]:
    """The OIHW weights as the [groups, C/groups * kh * kw, N] matrix the
    array reads: a new constant for constant weights, else a reshape and a
    transpose on the host."""
    w = op.operands[1]
    groups, k, n = w_matrix_shape(op, conv)
    owner = _constant(w)
    if owner is not None:
        array = np.ascontiguousarray(owner.array().reshape(groups, n, k).transpose(0, 2, 1))
        name = f"{owner.param_name}.matrix" if owner.param_name else None
        matrix = nn.ConstantOp(array, w.type.element_type, name)  # type: ignore[attr-defined]
        matrix.result.name_hint = w.name_hint
        return [matrix], matrix.result
    grouped = nn.ReshapeOp.make([w], shape=[groups, n, k])
    transposed = nn.TransposeOp.make([grouped], perm=[0, 2, 1])
    return [grouped, transposed], transposed.result


def _same_type_sizes(result: SSAValue, bias: SSAValue | None) -> ElementBytes:
    """nn products: operands, bias and result share the result's type."""
    element_type = result.type.element_type  # type: ignore[attr-defined]
    return ElementBytes.of_types(element_type, element_type, element_type if bias is not None else None)


class PlaceMatmul(PlaceOnArray):
    """`x @ w` with w of rank 2 (x's leading dims are rows), plus its epilogue."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: nn.MatmulOp, rewriter: PatternRewriter):
        if op in self.reasons:
            return
        x, w = op.operands
        reason = self.dtype_reason(nn.dtype_name(op.result.type.element_type))  # type: ignore[attr-defined]
        if reason is None and len(_shape(w)) != 2:
            reason = BATCHED_WEIGHTS
        if reason is not None:
            self.reasons[op] = reason
            return
        epilogue = self.epilogue(op, None, len(_shape(op.result)) - 1)
        self.place(op, x, epilogue, None, rewriter, lambda: ([], w, epilogue.bias),
                   _same_type_sizes(epilogue.result, epilogue.bias))


class PlaceConv2d(PlaceOnArray):
    """`conv2d(x, w[, b])` as a product of im2col(x) and the weight matrix, plus its epilogue."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: nn.Conv2dOp, rewriter: PatternRewriter):
        if op in self.reasons:
            return
        reason = self.dtype_reason(nn.dtype_name(op.result.type.element_type))  # type: ignore[attr-defined]
        if reason is not None:
            self.reasons[op] = reason
            return
        conv = conv_geometry(op)
        epilogue = self.epilogue(op, op.operands[2] if len(op.operands) == 3 else None, 1)

        def operands():
            return *conv_weight_matrix(op, conv), epilogue.bias

        self.place(op, op.operands[0], epilogue, conv, rewriter, operands,
                   _same_type_sizes(epilogue.result, epilogue.bias))


class PlaceQuantized(PlaceOnArray):
    """Base of the quantized rewrites: i8 x i8 products summed in i32.

    The array multiplies the stored i8 values; the input zero point's share,
    -zp * sum_k w[k, n], is a constant per column folded into the i32 bias at
    compile time (convolution padding reads the zero point, so the share is
    the same for every pixel). Weights must be symmetric: a weight zero
    point would need a sum over each input row. The requantization behind
    the product runs in the output unit."""

    def quantized_reason(self, w: SSAValue, bias: SSAValue | None, input_zp: int, weight_zp: int) -> str | None:
        reason = self.dtype_reason("i8")
        if reason is None and weight_zp:
            reason = "a weight zero point needs per-row sums of the input, which the array does not form"
        if reason is None and input_zp and _constant(w) is None:
            reason = "the input zero point's correction is folded into the bias, which needs constant weights"
        if reason is None and input_zp and bias is not None and _constant(bias) is None:
            reason = "the input zero point's correction is folded into the bias, which needs a constant bias"
        return reason

    def place_quantized(self, op: quant.MatmulOp | quant.Conv2dOp, bias: SSAValue | None, channels_axis: int,
                        input_zp: int, conv: ConvGeometry | None, matrix: Callable[[], tuple[list[Operation], SSAValue]],
                        rewriter: PatternRewriter) -> None:
        if not self.fuse:
            epilogue = Epilogue([op], op.result, bias)
        else:
            epilogue = match_quant_epilogue(op, bias, channels_axis, constant_bias=input_zp != 0)
        has_bias = epilogue.bias is not None or input_zp != 0
        per_channel = epilogue.requant is not None and epilogue.requant.per_channel
        sizes = ElementBytes.of_types(i8, epilogue.result.type.element_type,  # type: ignore[attr-defined]
                                      i32 if has_bias else None, per_channel)

        def operands():
            ops, weights = matrix()
            if not input_zp:
                return ops, weights, epilogue.bias
            bias_op = _constant(epilogue.bias)
            name = bias_op.param_name if bias_op is not None else _constant(op.operands[1]).param_name
            folded = fold_input_zero_point(weights, epilogue.bias, input_zp, f"{name}.zp_folded" if name else None)
            return [*ops, folded], weights, folded.result

        self.place(op, op.operands[0], epilogue, conv, rewriter, operands, sizes, input_zp if conv else 0)


class PlaceQuantMatmul(PlaceQuantized):
    """`quant.matmul` with rank-2 weights, its i32 bias add and requantization."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: quant.MatmulOp, rewriter: PatternRewriter):
        if op in self.reasons:
            return
        w = op.operands[1]
        p = op.params()
        reason = BATCHED_WEIGHTS if len(_shape(w)) != 2 else self.quantized_reason(
            w, None, p["lhs_zero_point"], p["rhs_zero_point"])
        if reason is not None:
            self.reasons[op] = reason
            return
        self.place_quantized(op, None, len(_shape(op.result)) - 1, p["lhs_zero_point"], None, lambda: ([], w),
                             rewriter)


class PlaceQuantConv2d(PlaceQuantized):
    """`quant.conv2d` (with its i32 bias) and the requantization behind it."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: quant.Conv2dOp, rewriter: PatternRewriter):
        if op in self.reasons:
            return
        p = op.params()
        bias = op.operands[2] if len(op.operands) == 3 else None
        reason = self.quantized_reason(op.operands[1], bias, p["input_zero_point"], p["weight_zero_point"])
        if reason is not None:
            self.reasons[op] = reason
            return
        conv = conv_geometry(op)
        self.place_quantized(op, bias, 1, p["input_zero_point"], conv, lambda: conv_weight_matrix(op, conv),
                             rewriter)


# --------------------------------------------------------------------------
# The pass
# --------------------------------------------------------------------------


CONVERSIONS = {
    quant.QuantizeOp: "quant.quantize converts floats to integers, which the array does not",
    quant.DequantizeOp: "quant.dequantize converts integers to floats, which the array does not",
    quant.RequantizeOp: "quant.requantize runs in the output unit only right behind a product on the array",
}


def _host_reason(op: Operation) -> str:
    return CONVERSIONS.get(type(op)) or f"{op.name.removeprefix('nn.')} is not a matrix product or convolution"


@dataclass(frozen=True)
class ConvertToSystolicPass(ModulePass):
    """Put matmuls and convolutions (float, integer or quantized, with bias, relu or requantization)
    on the systolic array; mark the rest for the host."""

    name = "convert-to-systolic"

    target_config: str = DEFAULT_TARGET
    """A built-in hardware description or a TOML file with a systolic-array compute unit."""

    array: str = ""
    """ROWSxCOLS, overriding the description's array."""

    dataflow: str = ""
    """ws, os or is, overriding the description's dataflow."""

    fuse_epilogues: bool = True
    """Absorb bias adds, relus and requantizations into the output unit (off: they run on the host)."""

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        existing = module_config(op)
        config = array_config(load_target(self.target_config), self.array, self.dataflow)
        if existing is not None and existing != config:
            raise LoomError("the module was already placed on a different systolic array")
        op.attributes[CONFIG_ATTR] = config.to_attr()
        reasons: dict[Operation, str] = {}
        for function in models(op):
            names: set[str] = set()
            patterns = (PlaceMatmul, PlaceConv2d, PlaceQuantMatmul, PlaceQuantConv2d)
            PatternRewriteWalker(
                GreedyRewritePatternApplier([p(config, reasons, names, self.fuse_epilogues) for p in patterns]),
                apply_recursively=False,
            ).rewrite_region(function.body)
            for inner in function.body.ops:
                if isinstance(inner, nn.InferredOperation):
                    inner.attributes[HOST_ATTR] = StringAttr(reasons.get(inner) or _host_reason(inner))
