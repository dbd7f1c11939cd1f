"""The reference interpreter as a target.

Running the oracle through the same driver as every other target makes it
usable from the CLI (`loom run --target interp`) and lets tests check that
the nn-level pipeline (folding, canonicalisation, CSE) preserves meaning:
the module this target runs has been through those passes, the reference
it is compared with has not.
"""

from __future__ import annotations

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from backends.base import Backend, CompileOptions
from compiler.artifact import Artifact, ModelSignature
from compiler.interpreter import run_model
from compiler.model import find_model


class InterpreterArtifact(Artifact):
    def __init__(self, module: ModuleOp, signature: ModelSignature):
        super().__init__(InterpreterBackend.name, signature)
        self.function = find_model(module, signature.name)

    def _execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return run_model(self.function, inputs)


class InterpreterBackend(Backend):
    name = "interp"
    description = "reference numpy interpreter (the oracle)"

    def pipeline(self, options: CompileOptions) -> str:
        return ""

    def build(self, module: ModuleOp, signature: ModelSignature, options: CompileOptions) -> Artifact:
        return InterpreterArtifact(module, signature)
