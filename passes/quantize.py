"""Post-training quantization of nn models: the `quantize` pass.

A *layer* is a matmul or conv2d whose weights are a constant, with the bias
add and ReLU that follow it when they have no other use; layers are named
after their weight params. Each layer gets a plan (quant_plan.py) and is
rewritten in place:

- **int8** layers compute as integer hardware does. The input is an i8
  tensor: requantized straight from the previous int8 layer's i32
  accumulator when the value comes from one (through reshapes, transposes
  and max pools, which commute with quantization), else quantized from
  float with the range calibration chose. Weights are symmetric int8, the
  bias becomes i32 at the accumulator's scale (input scale x weight scale),
  and `quant.matmul` / `quant.conv2d` accumulate in i32. Float consumers of
  the result read `quant.dequantize` of the accumulator (then the ReLU);
  int8 consumers read `quant.requantize` of it, where the ReLU is the
  clamp at the output zero point.

      %xq  = quant.quantize %x {quant_type = #quant.uniform<i8, ... scale = 0.0627, zero_point = -128>}
      %acc = quant.matmul %xq, %w1.q {lhs_zero_point = -128, rhs_zero_point = 0}
      %b   = nn.add %acc, %b1.q                          // i32 bias
      %h   = quant.requantize %b {multiplier = [...], shift = [...], zero_point = -128, clamp = [-128, 127]}

- **w4** layers are weight-only: the weights are int4 values (held in i8)
  with a scale and zero point per group of input channels, dequantized at
  run time in front of the unchanged float matmul or convolution. With AWQ
  the layer's input is first multiplied by the per-channel factors 1/f.

Calibration (`calibration`, an .npz of sample inputs) provides activation
ranges, AWQ's activation statistics and the mixed scheme's layer scores;
weight-only schemes without AWQ need none. Afterwards the pass runs the
quantized model on the same samples and records, per layer, a `loom.quant`
dictionary (scales, zero points, clip rates, the SQNR of the layer's output
against the float model) on the op that carries the layer, and a summary on
the model function; `quant_report` collects both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    DictionaryAttr,
    FloatAttr,
    IntegerAttr,
    ModuleOp,
    StringAttr,
    TensorType,
    f32,
    f64,
    i8,
    i32,
    i64,
)
from xdsl.ir import Attribute, BlockArgument, Operation, OpResult, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

from compiler.diagnostics import LoomError
from compiler.interpreter import windows
from compiler.model import find_model, models, signature_of
from dialects import nn, quant
from passes.quant_awq import awq_quantize
from passes.quant_calibration import (
    AffineParams,
    Sample,
    choose_range,
    collect,
    load_calibration,
    model_outputs,
    sqnr_db,
)
from passes.quant_plan import FP32, LayerPlan, QuantOptions, Settings, choose_mixed, load_settings
from passes.quant_weights import QuantizedWeight, quantize_groups, quantize_symmetric, search_group_clip

QUANT_ATTR = "loom.quant"
# Ops an i8 value passes through unchanged in meaning: they only move or
# select elements, so they commute with a monotonic per-tensor quantization.
TRANSPARENT = (nn.ReshapeOp, nn.TransposeOp, nn.SliceOp, nn.MaxPool2dOp)
INT32_RANGE = (-(1 << 31), (1 << 31) - 1)
# Biases are kept below 2^23 accumulator steps, far from the i32 limit.
BIAS_HEADROOM = 127 / (1 << 23)


# --------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------


def _only_user(value: SSAValue) -> Operation | None:
    uses = list(value.uses)
    return uses[0].operation if len(uses) == 1 else None


def _float_constant(value: SSAValue) -> nn.ConstantOp | None:
    if isinstance(value, OpResult) and isinstance(value.op, nn.ConstantOp) and value.type.element_type == f32:
        return value.op
    return None


def _shape(value: SSAValue) -> list[int]:
    assert isinstance(value.type, TensorType)
    return list(value.type.get_shape())


@dataclass
class Layer:
    """A matmul or conv2d with constant weights and the bias and ReLU it owns."""

    name: str
    op: nn.MatmulOp | nn.Conv2dOp
    weight: nn.ConstantOp
    bias: nn.ConstantOp | None
    chain: list[Operation]  # the op, then its bias add and ReLU if absorbed
    relu: bool

    @property
    def is_conv(self) -> bool:
        return isinstance(self.op, nn.Conv2dOp)

    @property
    def x(self) -> SSAValue:
        return self.op.operands[0]

    @property
    def output(self) -> SSAValue:
        return self.chain[-1].results[0]

    @property
    def channel_axis(self) -> int:
        """The output channel dim of the layer's result."""
        return 1 if self.is_conv else len(_shape(self.op.result)) - 1

    @property
    def weight_count(self) -> int:
        return math.prod(_shape(self.weight.result))

    def weights(self) -> np.ndarray:
        return self.weight.array().astype(np.float64)

    def weight2d(self) -> np.ndarray:
        """Weights as the [K, N] matrix the layer multiplies its input rows by."""
        w = self.weights()
        return w.reshape(w.shape[0], -1).T if self.is_conv else w

    def bias_values(self) -> np.ndarray | None:
        return None if self.bias is None else self.bias.array().astype(np.float64).reshape(-1)

    def rows(self, x: np.ndarray) -> np.ndarray:
        """Calibration inputs (stacked over samples) as the rows of that matmul."""
        if not self.is_conv:
            return x.reshape(-1, x.shape[-1])
        p = self.op.params()
        _, _, kh, kw = _shape(self.weight.result)
        batch = x.reshape(-1, *x.shape[-3:])
        patches = windows(batch, (kh, kw), p["stride"], p["padding"], p["dilation"], 0)
        return patches.transpose(0, 2, 3, 1, 4, 5).reshape(-1, batch.shape[1] * kh * kw)

    def row_channels(self) -> np.ndarray:
        """The input channel each row of weight2d multiplies."""
        if not self.is_conv:
            return np.arange(_shape(self.weight.result)[0])
        _, c, kh, kw = _shape(self.weight.result)
        return np.repeat(np.arange(c), kh * kw)


def _bias_of_matmul(op: nn.MatmulOp) -> tuple[nn.AddOp, nn.ConstantOp] | None:
    """The `+ b` after a matmul, for a constant b that varies along the last dim only."""
    add = _only_user(op.result)
    if not isinstance(add, nn.AddOp) or add.result.type != op.result.type:
        return None
    other = add.operands[1] if add.operands[0] is op.result else add.operands[0]
    constant = _float_constant(other)
    n = _shape(op.result)[-1]
    shape = _shape(other)
    if constant is None or not shape or shape[-1] != n or any(d != 1 for d in shape[:-1]):
        return None
    return add, constant


def find_layers(f: func.FuncOp) -> list[Layer]:
    layers: list[Layer] = []
    names: set[str] = set()
    for op in f.body.block.ops:
        if not isinstance(op, nn.MatmulOp | nn.Conv2dOp):
            continue
        x, w, *rest = op.operands
        weight = _float_constant(w)
        if weight is None or x.type.element_type != f32 or len(_shape(w)) != (4 if isinstance(op, nn.Conv2dOp) else 2):
            continue
        chain: list[Operation] = [op]
        bias = None
        if rest:
            bias = _float_constant(rest[0])
            if bias is None:
                continue
        elif isinstance(op, nn.MatmulOp) and (found := _bias_of_matmul(op)) is not None:
            chain.append(found[0])
            bias = found[1]
        user = _only_user(chain[-1].results[0])
        relu = isinstance(user, nn.ReluOp)
        if relu:
            chain.append(user)
        base = weight.param_name or f"{op.name.removeprefix('nn.')}{len(layers)}"
        name = base if base not in names else f"{base}.{len(layers)}"
        names.add(name)
        layers.append(Layer(name, op, weight, bias, chain, relu))
    return layers


# --------------------------------------------------------------------------
# IR construction helpers
# --------------------------------------------------------------------------


def _insert_after(value: SSAValue, op: Operation) -> Operation:
    if isinstance(value, BlockArgument):
        Rewriter.insert_op(op, InsertPoint.at_start(value.block))
    else:
        Rewriter.insert_op(op, InsertPoint.after(value.owner))
    return op


def _insert_before(anchor: Operation, *ops: Operation) -> Operation:
    Rewriter.insert_op(list(ops), InsertPoint.before(anchor))
    return ops[-1]


def per_tensor_type(params: AffineParams) -> quant.UniformQuantAttr:
    return quant.UniformQuantAttr.get(params.scale, params.zero_point, params.bits)


def per_axis_type(scales: np.ndarray, shape: list[int], axis: int, bits: int) -> quant.UniformQuantAttr:
    """Scales along dim `axis` of a tensor of `shape` (one scale: per tensor)."""
    if scales.size == 1:
        return quant.UniformQuantAttr.get(float(scales.reshape(-1)[0]), 0, bits)
    view = [1] * len(shape)
    view[axis] = scales.size
    block = [1 if d == axis else size for d, size in enumerate(shape)]
    return quant.UniformQuantAttr.get(scales.reshape(view), 0, bits, block)


def _attr(value: float | int | str) -> Attribute:
    if isinstance(value, str):
        return StringAttr(value)
    if isinstance(value, (bool, int, np.integer)):
        return IntegerAttr(int(value), i64)
    return FloatAttr(float(value), f64)


def _dictionary(values: dict[str, float | int | str | dict]) -> DictionaryAttr:
    return DictionaryAttr({
        k: _dictionary(v) if isinstance(v, dict) else _attr(v) for k, v in values.items()
    })


def _python(attr: Attribute):
    if isinstance(attr, DictionaryAttr):
        return {k: _python(v) for k, v in attr.data.items()}
    if isinstance(attr, StringAttr):
        return attr.data
    if isinstance(attr, IntegerAttr):
        return attr.value.data
    assert isinstance(attr, FloatAttr)
    return attr.value.data


def erase_dead_ops(f: func.FuncOp) -> None:
    """Erase the nn and quant ops (and constants) no longer used, last first."""
    for op in reversed(list(f.body.block.ops)):
        if isinstance(op, nn.NNOperation | nn.ConstantOp | quant.QuantOperation) and not op.results[0].uses:
            Rewriter.erase_op(op)


# --------------------------------------------------------------------------
# i8 versions of float values
# --------------------------------------------------------------------------


class Int8Values:
    """The i8 version of float values, made on demand and made once: the
    requantized accumulator of an int8 layer, the same data movement op
    applied to the i8 version of its input, or a quantize of the float."""

    def __init__(self, params_of: Callable[[SSAValue], AffineParams]):
        self.params_of = params_of
        self.made: dict[SSAValue, tuple[SSAValue, AffineParams]] = {}
        self.producers: dict[SSAValue, Callable[[], tuple[SSAValue, AffineParams]]] = {}

    def from_integer_layer(self, value: SSAValue) -> bool:
        """Whether `value` is an int8 layer's output, possibly moved around."""
        if value in self.producers:
            return True
        return isinstance(value, OpResult) and isinstance(value.op, TRANSPARENT) and self.from_integer_layer(
            value.op.operands[0]
        )

    def get(self, value: SSAValue) -> tuple[SSAValue, AffineParams]:
        if value not in self.made:
            self.made[value] = self._make(value)
        return self.made[value]

    def _make(self, value: SSAValue) -> tuple[SSAValue, AffineParams]:
        if value in self.producers:
            return self.producers[value]()
        if self.from_integer_layer(value):
            assert isinstance(value, OpResult)
            inner, params = self.get(value.op.operands[0])
            moved = type(value.op).make([inner], **value.op.params())
            return _insert_after(inner, moved).results[0], params
        params = self.params_of(value)
        quantized = quant.QuantizeOp.make([value], quant_type=per_tensor_type(params))
        return _insert_after(value, quantized).results[0], params


# --------------------------------------------------------------------------
# Quantizing one model
# --------------------------------------------------------------------------


@dataclass
class Rewritten:
    """A rewritten layer: the op carrying its `loom.quant` record, the value
    to read after the rewrite and how it maps to the layer's float output."""

    layer: Layer
    plan: LayerPlan
    carrier: Operation
    probe: SSAValue
    to_float: Callable[[np.ndarray], np.ndarray]
    stats: dict[str, float | int | str]


@dataclass
class IntegerLayer:
    """An int8 layer's accumulator (bias included) and how to read it as float."""

    record: Rewritten
    acc: SSAValue
    acc_type: quant.UniformQuantAttr


def _weight_stats(weight: QuantizedWeight) -> dict[str, float | int | str]:
    scales = weight.quant_type.scales()
    return {
        "weight_bits": weight.bits,
        "weight_scale_min": float(scales.min()),
        "weight_scale_max": float(scales.max()),
        "weight_clip_rate": weight.clip_rate,
    }


def _activation_stats(prefix: str, params: AffineParams, values: np.ndarray) -> dict[str, float | int | str]:
    return {
        f"{prefix}_scale": params.scale,
        f"{prefix}_zero_point": params.zero_point,
        f"{prefix}_clip_rate": params.clip_rate(values),
    }


class ModelQuantizer:
    """Quantizes the layers of one model function according to `settings`."""

    def __init__(self, f: func.FuncOp, settings: Settings):
        self.f = f
        self.settings = settings
        self.layers = find_layers(f)
        self.samples: list[Sample] = []
        self.float_values: dict[SSAValue, np.ndarray] = {}
        self.float_outputs = model_outputs(f)
        self.float_bytes = param_bytes(f)[0]
        self._ranges: dict[SSAValue, AffineParams] = {}

    def run(self) -> None:
        if self.settings.calibration is not None:
            self.samples = load_calibration(self.settings.calibration, signature_of(self.f))
            keep = {v for layer in self.layers for v in (layer.x, layer.output)} | set(self.float_outputs)
            self.float_values = collect(self.f, self.samples, keep)
        plans = self.plans()
        if not self.samples and any(p.precision == "int8" or p.awq for p in plans.values()):
            raise LoomError(
                f"quantization scheme '{self.settings.scheme}' needs calibration inputs (--calibration C.npz) "
                "for activation ranges"
            )
        int8 = Int8Values(self.activation_params)
        integer = [self.rewrite_int8(layer, plans[layer.name], int8)
                   for layer in self.layers if plans[layer.name].precision == "int8"]
        for done in integer:
            self.replace_float_output(done)
        records = [done.record for done in integer]
        records += [self.rewrite_w4(layer, plans[layer.name])
                    for layer in self.layers if plans[layer.name].precision == "w4"]
        erase_dead_ops(self.f)
        self.record(records, plans)

    # ---- planning -----------------------------------------------------------

    def plans(self) -> dict[str, LayerPlan]:
        known = {layer.name for layer in self.layers}
        unknown = sorted(set(self.settings.layers) - known)
        if unknown:
            raise LoomError(
                f"quant config names layer(s) {', '.join(unknown)}, but the model's layers are "
                f"{', '.join(sorted(known)) or 'none'} (a layer is named after its weight param)"
            )
        default = self.settings.default_plan()
        plans = {layer.name: self.settings.layers.get(layer.name, default) for layer in self.layers}
        undecided = [layer for layer in self.layers if plans[layer.name] is None]
        if undecided and not self.samples:
            raise LoomError("the mixed scheme needs calibration inputs (--calibration C.npz) to score layers")
        if undecided:
            high = choose_mixed(
                [layer.name for layer in undecided],
                [layer.weight_count for layer in undecided],
                [self.importance(layer) for layer in undecided],
                self.settings.bits,
            )
            for layer in undecided:
                plans[layer.name] = self.settings.mixed_high if layer.name in high else self.settings.mixed_low
        return plans

    def importance(self, layer: Layer) -> float:
        """How much the model's output degrades (dB of SQNR lost) when only
        this layer's weights are quantized to the mixed scheme's int4."""
        approx = self.quantize_w4(layer, self.settings.mixed_low).dequantized()
        if layer.is_conv:
            approx = approx.T.reshape(_shape(layer.weight.result))
        degraded = collect(self.f, self.samples, self.float_outputs, {layer.weight.result: approx})
        return -min(sqnr_db(self.float_values[v], degraded[v]) for v in self.float_outputs)

    def activation_params(self, value: SSAValue) -> AffineParams:
        """The calibrated quantization of a float value."""
        if value not in self._ranges:
            s = self.settings
            self._ranges[value] = choose_range(self.float_values[value], s.method, s.percentile, s.symmetric)
        return self._ranges[value]

    # ---- int8 layers ----------------------------------------------------------

    def rewrite_int8(self, layer: Layer, plan: LayerPlan, int8: Int8Values) -> IntegerLayer:
        """The layer's integer computation, up to its i32 accumulator, inserted
        in front of it; its output's i8 version becomes known to `int8`."""
        xq, x_params = int8.get(layer.x)
        out_axis = 0 if layer.is_conv else 1
        bias = layer.bias_values()
        # A weight scale so small that the bias overflows i32 at the accumulator's
        # scale (a dead channel with a bias) is widened until the bias fits.
        bias_bound = 0.0 if bias is None else np.abs(bias) * BIAS_HEADROOM / x_params.scale
        if not plan.per_channel:
            bias_bound = np.max(bias_bound)
        weight = quantize_symmetric(layer.weights(), out_axis if plan.per_channel else None,
                                    self.settings.weight_method, min_bound=bias_bound)
        acc_scale = np.float64(x_params.scale) * weight.quant_type.scales().astype(np.float64).reshape(-1)
        w = nn.ConstantOp(weight.values, i8, f"{layer.weight.param_name or layer.name}.q")
        biases = [] if bias is None else [nn.ConstantOp(
            np.clip(np.rint(bias / acc_scale), *INT32_RANGE), i32,
            f"{layer.bias.param_name}.q" if layer.bias.param_name else None,
        )]
        carrier: Operation
        if layer.is_conv:
            carrier = quant.Conv2dOp.make([xq, w, *biases], **layer.op.params(),
                                          input_zero_point=x_params.zero_point, weight_zero_point=0)
            ops = [w, *biases, carrier]
        else:
            carrier = quant.MatmulOp.make([xq, w], lhs_zero_point=x_params.zero_point, rhs_zero_point=0)
            ops = [w, *biases, carrier, *(nn.AddOp.make([carrier, b]) for b in biases)]
        acc = _insert_before(layer.op, *ops).results[0]
        acc_type = per_axis_type(acc_scale.astype(np.float32), _shape(acc), layer.channel_axis, 32)
        stats = _activation_stats("input", x_params, self.float_values[layer.x]) | _weight_stats(weight)

        def requantize() -> tuple[SSAValue, AffineParams]:
            out = self.activation_params(layer.output)
            stats.update(_activation_stats("output", out, self.float_values[layer.output]))
            multiplier, shift = quant.fixed_point(acc_scale / out.scale)
            lowest = out.zero_point if layer.relu else quant.value_range(8)[0]
            op = quant.RequantizeOp.make(
                [acc], multiplier=multiplier.tolist(), shift=shift.tolist(), axis=layer.channel_axis,
                zero_point=out.zero_point, clamp=[lowest, quant.value_range(8)[1]],
            )
            return _insert_after(acc, op).results[0], out

        int8.producers[layer.output] = requantize

        def to_float(values: np.ndarray) -> np.ndarray:
            result = quant.dequantize_values(values, acc_type)
            return np.maximum(result, 0) if layer.relu else result

        return IntegerLayer(Rewritten(layer, plan, carrier, acc, to_float, stats), acc, acc_type)

    def replace_float_output(self, done: IntegerLayer) -> None:
        """Give the layer's float users the dequantized accumulator (and ReLU)."""
        layer = done.record.layer
        ops: list[Operation] = [quant.DequantizeOp.make([done.acc], quant_type=done.acc_type)]
        if layer.relu:
            ops.append(nn.ReluOp.make([ops[0]]))
        layer.output.replace_all_uses_with(_insert_before(layer.op, *ops).results[0])

    # ---- weight-only int4 layers ----------------------------------------------

    def quantize_w4(self, layer: Layer, plan: LayerPlan) -> QuantizedWeight:
        """Group-wise int4 weights of the layer as [K, N], rounded to nearest
        (or with mse clipping) without looking at activations."""
        if self.settings.weight_method == "mse":
            return search_group_clip(layer.weight2d(), plan.group)
        return quantize_groups(layer.weight2d(), plan.group)

    def rewrite_w4(self, layer: Layer, plan: LayerPlan) -> Rewritten:
        """Dequantized int4 weights in front of the layer's op; with AWQ, its
        input scaled by the per-channel 1/f first."""
        x = layer.op.operands[0]
        ops: list[Operation] = []
        stats: dict[str, float | int | str] = {"group": plan.group}
        grouped_conv = layer.is_conv and layer.op.params()["groups"] > 1
        if plan.awq and not grouped_conv:
            result = awq_quantize(layer.rows(self.float_values[layer.x]), layer.weight2d(),
                                  layer.row_channels(), plan.group)
            weight = result.weight
            inverse = (np.float32(1) / result.channel_scale).astype(np.float32)
            factors = nn.ConstantOp(inverse.reshape(-1, 1, 1) if layer.is_conv else inverse, f32)
            scaled = nn.MulOp.make([x, factors])
            ops += [factors, scaled]
            x = scaled.result
            stats["awq_alpha"] = result.alpha
        else:
            weight = self.quantize_w4(layer, plan)
        stats |= _weight_stats(weight)
        stored = weight.transposed() if layer.is_conv else weight
        values = nn.ConstantOp(stored.values, i8, f"{layer.weight.param_name or layer.name}.q4")
        carrier = quant.DequantizeOp.make([values], quant_type=stored.quant_type)
        ops += [values, carrier]
        w = carrier.result
        if layer.is_conv:
            ops.append(nn.ReshapeOp.make([w], shape=_shape(layer.weight.result)))
            w = ops[-1].results[0]
            op = nn.Conv2dOp.make([x, w, *layer.op.operands[2:]], **layer.op.params())
        else:
            op = nn.MatmulOp.make([x, w])
        _insert_before(layer.op, *ops, op)
        layer.op.result.replace_all_uses_with(op.result)
        probe = layer.output if len(layer.chain) > 1 else op.result
        return Rewritten(layer, plan, carrier, probe, lambda values: values, stats)

    # ---- the record -------------------------------------------------------------

    def record(self, records: list[Rewritten], plans: dict[str, LayerPlan]) -> None:
        """Measure the quantized model against the float one on the
        calibration samples and store the results on the IR."""
        output_sqnr: dict[str, float | int | str] = {}
        if self.samples:
            outputs = model_outputs(self.f)
            measured = collect(self.f, self.samples, [r.probe for r in records] + outputs)
            for r in records:
                reference = self.float_values[r.layer.output]
                approximation = np.stack([r.to_float(sample) for sample in measured[r.probe]])
                r.stats["sqnr_db"] = sqnr_db(reference, approximation)
            names = [spec.name for spec in signature_of(self.f).outputs]
            for name, before, after in zip(names, self.float_outputs, outputs):
                output_sqnr[name] = sqnr_db(self.float_values[before], measured[after])
        for r in records:
            r.carrier.attributes[QUANT_ATTR] = _dictionary(
                {"layer": r.layer.name, "precision": r.plan.describe()} | r.stats
            )
        kept = [layer.name for layer in self.layers if plans[layer.name] == FP32]
        summary: dict[str, float | int | str | dict] = {
            "scheme": self.settings.scheme,
            "calibration_samples": len(self.samples),
            "float_param_bytes": self.float_bytes,
            "float_layers": ",".join(kept),
        }
        if output_sqnr:
            summary["output_sqnr_db"] = output_sqnr
        self.f.attributes[QUANT_ATTR] = _dictionary(summary)


# --------------------------------------------------------------------------
# Sizes and reports
# --------------------------------------------------------------------------


def _params_bytes(quant_type: quant.UniformQuantAttr, packed: bool) -> float:
    """Bytes of a quantized type's scales and (non-zero) zero points."""
    scales, zero_points = quant_type.scales(), quant_type.zero_points()
    bits = quant_type.bits.data
    zero_point_bytes = 0.0 if not zero_points.any() else (bits / 8 if packed and bits < 8 else 4)
    return scales.size * 4 + zero_points.size * zero_point_bytes


def param_bytes(f: func.FuncOp) -> tuple[int, int]:
    """(stored, packed) bytes of a model's parameters: constants plus the
    quantization params ops carry. `packed` counts values of fewer than 8
    bits at their width, as a packed layout would hold them."""
    narrow = {
        op.operands[0]: op.params()["quant_type"].bits.data
        for op in f.walk()
        if isinstance(op, quant.DequantizeOp) and isinstance(op.operands[0], OpResult)
        and isinstance(op.operands[0].op, nn.ConstantOp)
    }
    stored = packed = 0.0
    for op in f.walk():
        if isinstance(op, nn.ConstantOp):
            t = op.result.type
            count = math.prod(t.get_shape())
            size = count * nn.numpy_dtype(t.element_type).itemsize
            stored += size
            packed += count * narrow[op.result] / 8 if narrow.get(op.result, 8) < 8 else size
        elif isinstance(op, quant.RequantizeOp):
            size = 4 * len(op.params()["multiplier"]) + len(op.params()["shift"])
            stored += size
            packed += size
        elif isinstance(op, quant.QuantizeOp | quant.DequantizeOp):
            quant_type = op.params()["quant_type"]
            stored += _params_bytes(quant_type, False)
            packed += _params_bytes(quant_type, True)
    return int(stored), int(math.ceil(packed))


def quant_report(module: ModuleOp, model: str | None = None) -> dict | None:
    """What the quantize pass recorded on a model, with its parameter sizes,
    as plain data (for `loom quantize` and the run report); None if the
    model was not quantized."""
    f = find_model(module, model)
    summary = f.attributes.get(QUANT_ATTR)
    if summary is None:
        return None
    report = _python(summary)
    stored, packed = param_bytes(f)
    report["param_bytes"] = stored
    report["packed_param_bytes"] = packed
    report["size_ratio"] = stored / report["float_param_bytes"] if report["float_param_bytes"] else 1.0
    report["layers"] = [
        _python(op.attributes[QUANT_ATTR])
        for op in f.walk()
        if op is not f and QUANT_ATTR in op.attributes
    ]
    return report


@dataclass(frozen=True)
class QuantizePass(ModulePass, QuantOptions):
    """Post-training quantization of matmul/conv2d layers to int8, weight-only int4 (AWQ) or a mix.

    Options as in docs/quantization.md (`QuantOptions`); `quant-config` names
    a TOML file whose keys override them."""

    name = "quantize"

    quant_config: str | None = None

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        settings = load_settings(self.quant_config, Settings.of(self))
        for f in models(op):
            ModelQuantizer(f, settings).run()


def format_quant_report(report: dict) -> str:
    """`quant_report` as a table: one row per quantized layer, then totals."""

    def number(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    header = ("layer", "precision", "in scale", "in zp", "in clip", "w scale (min..max)", "w clip",
              "out scale", "out clip", "SQNR dB")
    rows = [header]
    for layer in report["layers"]:
        get = layer.get
        rows.append((
            layer["layer"],
            layer["precision"],
            number(get("input_scale"), ".4g"),
            number(get("input_zero_point"), "d"),
            number(get("input_clip_rate"), ".2%"),
            f"{layer['weight_scale_min']:.3g}..{layer['weight_scale_max']:.3g}",
            number(get("weight_clip_rate"), ".2%"),
            number(get("output_scale"), ".4g"),
            number(get("output_clip_rate"), ".2%"),
            number(get("sqnr_db"), ".1f"),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    if report.get("float_layers"):
        lines.append(f"kept in float: {report['float_layers']}")
    for name, value in report.get("output_sqnr_db", {}).items():
        lines.append(f"output {name}: SQNR {value:.1f} dB over {report['calibration_samples']} calibration samples")
    lines.append(
        f"params: {report['param_bytes']} bytes ({report['size_ratio']:.1%} of {report['float_param_bytes']} "
        f"in fp32), {report['packed_param_bytes']} with sub-byte values packed"
    )
    return "\n".join(lines)
