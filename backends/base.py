"""The interface every target implements, built-in or plugin.

A backend names the pipeline that lowers the nn dialect to what it consumes,
then turns the lowered module into an `Artifact`. The driver runs the
pipeline with the shared pass manager, so every target gets verification,
IR dumps and pass timing for free.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from xdsl.dialects.builtin import ModuleOp

from compiler.artifact import Artifact, ModelSignature


@dataclass
class CompileOptions:
    """Knobs every target understands; `extra` carries target-specific ones.

    `tiles` maps an op kind (`matmul`, `conv2d`, ...) or a DSL value name to
    tile sizes that override the cost model's choice. `target_config` names a
    built-in hardware description or a path to a TOML file; None means the
    backend's default. `threads` None means every core. `quantize` names a
    quantization scheme (int8, int8-per-channel, w4-group64, w4-awq, mixed)
    applied at the nn level with `calibration` inputs (.npz) and an optional
    per-layer `quant_config` TOML.
    """

    opt_level: int = 3
    fusion: bool = True
    tiles: dict[str, tuple[int, ...]] = field(default_factory=dict)
    threads: int | None = None
    target_config: str | None = None
    quantize: str | None = None
    calibration: str | None = None
    quant_config: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    emit_kinds: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def pipeline(self, options: CompileOptions) -> str:
        """Pass pipeline from the (already simplified) nn dialect to this target's input."""

    @abstractmethod
    def build(self, module: ModuleOp, signature: ModelSignature, options: CompileOptions) -> Artifact:
        """Turn the lowered module holding one model into a runnable artifact."""
