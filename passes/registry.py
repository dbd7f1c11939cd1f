"""Pass names -> pass classes.

Every pass, Loom's own included, is declared as a `loom.passes` entry point
(Loom's are in its pyproject.toml, next to the upstream xDSL passes its
pipelines use) and imported on first use, so `loom --help` stays fast; a
plugin package declares its passes the same way, or calls `register_pass`.
"""

from __future__ import annotations

from xdsl.passes import ModulePass

from compiler.plugins import Registry

# One-liners for upstream passes whose classes have no docstring.
_UPSTREAM_DESCRIPTIONS = {
    "cse": "Common subexpression elimination (xDSL).",
    "dce": "Remove operations whose results are unused and that have no side effects (xDSL).",
    "lower-affine": "Lower affine.apply/affine.min/... to arith (xDSL).",
}

PASSES: Registry[ModulePass] = Registry("loom.passes", _UPSTREAM_DESCRIPTIONS)

register_pass = PASSES.register
get_pass = PASSES.get
pass_names = PASSES.names
describe = PASSES.describe
