"""The CPU target: loop-level IR emitted as LLVM IR, optimised and run in-process."""

from backends.cpu.artifact import CpuArtifact
from backends.cpu.backend import CpuBackend

__all__ = ["CpuArtifact", "CpuBackend"]
