"""What each layer of a model is quantized to: schemes, the `--quant-config`
TOML file, and the per-layer precision choice of the `mixed` scheme.

A scheme names one treatment for every layer:

| scheme              | weights                                   | activations          |
|---------------------|-------------------------------------------|----------------------|
| `int8`              | int8, one symmetric scale per tensor      | int8, per tensor     |
| `int8-per-channel`  | int8, one symmetric scale per out channel | int8, per tensor     |
| `w4-groupN`         | int4, scale and zero point per group of N | float (weight-only)  |
| `w4-awq`            | as w4-group, activation-aware (quant_awq) | float (weight-only)  |
| `mixed`             | int8-per-channel or w4, chosen per layer  |                      |

`mixed` follows the idea of layer-wise quantization (Dumitru et al.,
"Layer-Wise Quantization: A Pragmatic and Effective Method for Quantizing
LLMs Beyond Integer Bit-Levels"): rank layers by importance, keep the most
important at the higher precision, and stop when the average number of bits
per weight reaches a budget, which need not be an integer. Importance here
is measured, not estimated: a layer's score is how much the model's output
degrades (in SQNR over the calibration set) when that layer alone is
quantized to int4.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from compiler.diagnostics import LoomError
from passes.quant_calibration import RANGE_METHODS
from passes.quant_weights import WEIGHT_METHODS

SCHEMES = ("int8", "int8-per-channel", "w4-group32", "w4-group64", "w4-group128", "w4-awq", "mixed")
HIGH_BITS, LOW_BITS = 8, 4


@dataclass(frozen=True)
class LayerPlan:
    """How one layer is quantized."""

    precision: str  # "fp32", "int8" or "w4"
    per_channel: bool = True
    group: int = 64
    awq: bool = False

    @property
    def weight_bits(self) -> int:
        return {"fp32": 32, "int8": 8, "w4": 4}[self.precision]

    def describe(self) -> str:
        if self.precision == "int8":
            return "int8 per-channel" if self.per_channel else "int8 per-tensor"
        if self.precision == "w4":
            return f"w4 group {self.group}" + (" awq" if self.awq else "")
        return self.precision


FP32 = LayerPlan("fp32")


def parse_scheme(name: str, group: int, where: str = "") -> LayerPlan | None:
    """The plan every layer gets under scheme `name`; None for `mixed`."""
    if name == "mixed":
        return None
    if name == "fp32":
        return FP32
    if name in ("int8", "int8-per-channel"):
        return LayerPlan("int8", per_channel=name.endswith("per-channel"))
    if name == "w4-awq":
        return LayerPlan("w4", group=group, awq=True)
    if name.startswith("w4-group") and name[len("w4-group"):].isdigit() and int(name[len("w4-group"):]) > 0:
        return LayerPlan("w4", group=int(name[len("w4-group"):]))
    raise LoomError(f"unknown quantization scheme '{name}'{where} (known: {', '.join(SCHEMES)}, or w4-groupN)")


@dataclass(frozen=True)
class QuantOptions:
    """The quantize pass's options (docs/quantization.md). The pass declares
    them by inheriting this class, so they are written once."""

    scheme: str = "int8-per-channel"
    calibration: str | None = None
    method: str = "mse"
    percentile: float = 99.99
    symmetric: bool = False
    weight_method: str = "minmax"
    group: int = 64
    bits: float = 6.0


@dataclass(frozen=True)
class Settings(QuantOptions):
    """Everything the quantize pass was asked for: its options, overridden by
    the keys of the quant-config file, plus that file's per-layer plans."""

    layers: dict[str, LayerPlan] = field(default_factory=dict)

    @classmethod
    def of(cls, options: QuantOptions) -> Settings:
        return cls(**{f.name: getattr(options, f.name) for f in fields(QuantOptions)})

    def check(self) -> None:
        if self.method not in RANGE_METHODS:
            raise LoomError(f"unknown range method '{self.method}' (choose one of {', '.join(RANGE_METHODS)})")
        if self.weight_method not in WEIGHT_METHODS:
            raise LoomError(
                f"unknown weight range method '{self.weight_method}' (choose one of {', '.join(WEIGHT_METHODS)})"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise LoomError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.group < 1:
            raise LoomError(f"group size must be positive, got {self.group}")
        if not LOW_BITS <= self.bits <= HIGH_BITS:
            raise LoomError(f"the mixed scheme's bit budget must be in [{LOW_BITS}, {HIGH_BITS}], got {self.bits}")
        parse_scheme(self.scheme, self.group)

    def default_plan(self) -> LayerPlan | None:
        return parse_scheme(self.scheme, self.group)

    @property
    def mixed_low(self) -> LayerPlan:
        return LayerPlan("w4", group=self.group)

    @property
    def mixed_high(self) -> LayerPlan:
        return LayerPlan("int8", per_channel=True)


# TOML key -> (Settings field, accepted Python types)
_CONFIG_KEYS: dict[str, tuple[str, tuple[type, ...]]] = {
    "method": ("method", (str,)),
    "percentile": ("percentile", (int, float)),
    "symmetric": ("symmetric", (bool,)),
    "weight-method": ("weight_method", (str,)),
    "group": ("group", (int,)),
    "bits": ("bits", (int, float)),
}


def load_settings(path: str | None, base: Settings) -> Settings:
    """`base` with the keys of the TOML file at `path` applied:

        method = "percentile"      # activation ranges: minmax | percentile | mse
        percentile = 99.9
        symmetric = false          # activations; weights are always symmetric int8
        weight-method = "mse"      # weight ranges: minmax | mse
        group = 64                 # int4 group size of w4-awq and mixed
        bits = 6.0                 # mixed: average bits per weight

        [layers]                   # by weight param name: any scheme but mixed, or fp32
        fc1_w = "int8-per-channel"
        fc3_w = "fp32"
    """
    if path is None:
        base.check()
        return base
    file = Path(path)
    if not file.is_file():
        raise LoomError(f"quant config '{path}' does not exist")
    try:
        data: dict[str, Any] = tomllib.loads(file.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise LoomError(f"cannot read quant config '{path}': {e}") from None
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key == "layers":
            continue
        if key not in _CONFIG_KEYS:
            known = ", ".join([*_CONFIG_KEYS, "layers"])
            raise LoomError(f"quant config '{path}': unknown key '{key}' (known: {known})")
        name, types = _CONFIG_KEYS[key]
        if not isinstance(value, types) or (bool in types) != isinstance(value, bool):
            raise LoomError(f"quant config '{path}': '{key}' has the wrong type ({type(value).__name__})")
        changes[name] = value
    settings = replace(base, **changes)
    layers = data.get("layers", {})
    if not isinstance(layers, dict) or not all(isinstance(v, str) for v in layers.values()):
        raise LoomError(f"quant config '{path}': [layers] must map layer names to scheme names")
    for name, scheme in layers.items():
        plan = parse_scheme(scheme, settings.group, f" for layer '{name}' in quant config '{path}'")
        if plan is None:
            raise LoomError(f"quant config '{path}': layer '{name}' cannot be 'mixed'; give it a precision")
        settings.layers[name] = plan
    settings.check()
    return settings


def choose_mixed(
    names: Sequence[str], sizes: Sequence[int], importance: Sequence[float], budget: float
) -> set[str]:
    """The layers to keep at HIGH_BITS: the most important first, each taken
    while the size-weighted average bits per weight stays within `budget`
    (everything else gets LOW_BITS)."""
    total = sum(sizes)
    spent = LOW_BITS * total
    chosen: set[str] = set()
    for index in sorted(range(len(names)), key=lambda i: -importance[i]):
        extra = (HIGH_BITS - LOW_BITS) * sizes[index]
        if total and spent + extra <= budget * total + 1e-9:
            spent += extra
            chosen.add(names[index])
    return chosen
