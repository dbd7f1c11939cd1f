"""The systolic-array target: instruction set, code generation, simulator and artifact."""

from backends.systolic.artifact import SystolicArtifact
from backends.systolic.backend import SystolicBackend

__all__ = ["SystolicArtifact", "SystolicBackend"]
