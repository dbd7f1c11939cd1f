"""The PIM target: command set, code generation, DRAM-timing simulator, timing checker and artifact."""

from backends.pim.artifact import PimArtifact
from backends.pim.backend import PimBackend

__all__ = ["PimArtifact", "PimBackend"]
