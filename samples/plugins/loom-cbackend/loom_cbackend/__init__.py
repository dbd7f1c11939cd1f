"""A Loom plugin: the `div-to-mul` pass and the `c` target.

Loom finds both through the entry points in this package's pyproject.toml;
`compiler.register_pass(DivToMulPass)` and `compiler.register_backend(CBackend)`
do the same at run time without installing anything.
"""

from loom_cbackend.backend import CArtifact, CBackend
from loom_cbackend.passes import DivToMulPass

__all__ = ["CArtifact", "CBackend", "DivToMulPass"]
