"""Pass names -> pass classes.

Built-in passes are listed here by module path and imported on first use, so
`loom --help` stays fast; plugins declare theirs as `loom.passes` entry points
or call `register_pass`.
"""

from __future__ import annotations

from xdsl.passes import ModulePass

from compiler.plugins import Registry

# name -> "module:Class" for Loom's own passes and the upstream xDSL passes
# Loom pipelines use.
_BUILTIN: dict[str, str] = {
    "expand-math": "passes.expand_math:ExpandMathPass",
    "canonicalize": "xdsl.transforms.canonicalize:CanonicalizePass",
    "cse": "xdsl.transforms.common_subexpression_elimination:CommonSubexpressionElimination",
    "dce": "xdsl.transforms.dead_code_elimination:DeadCodeElimination",
    "convert-linalg-to-loops": "xdsl.transforms.convert_linalg_to_loops:ConvertLinalgToLoopsPass",
    "lower-affine": "xdsl.transforms.lower_affine:LowerAffinePass",
    "convert-nn-to-linalg": "passes.convert_nn_to_linalg:ConvertNNToLinalgPass",
    "bufferize": "passes.bufferize:BufferizePass",
    "fold-constants": "passes.fold_constants:FoldConstantsPass",
    "plan-spills": "passes.plan_spills:PlanSpillsPass",
    "fold-batchnorm": "passes.fold_batchnorm:FoldBatchNormPass",
    "fuse-elementwise": "passes.fuse_elementwise:FuseElementwisePass",
    "schedule-memory": "passes.schedule_memory:ScheduleMemoryPass",
    "plan-memory": "passes.plan_memory:PlanMemoryPass",
    "tile": "passes.tile:TilePass",
    "vectorize": "passes.vectorize:VectorizePass",
    "convert-to-systolic": "passes.convert_to_systolic:ConvertToSystolicPass",
    "tile-systolic": "passes.tile_systolic:TileSystolicPass",
    "pim-map": "passes.pim_map:PimMapPass",
    "pim-expand": "passes.pim_expand:PimExpandPass",
    "quantize": "passes.quantize:QuantizePass",
    "fuse-qdq": "passes.fuse_qdq:FuseQdqPass",
    "convert-quant-to-linalg": "passes.convert_quant_to_linalg:ConvertQuantToLinalgPass",
    "hls-form-engines": "passes.hls_form_engines:HlsFormEnginesPass",
    "hls-directives": "passes.hls_directives:HlsDirectivesPass",
    "hls-schedule": "passes.hls_schedule:HlsSchedulePass",
}

# One-liners for upstream passes whose classes have no docstring.
_UPSTREAM_DESCRIPTIONS = {
    "cse": "Common subexpression elimination (xDSL).",
    "dce": "Remove operations whose results are unused and that have no side effects (xDSL).",
    "lower-affine": "Lower affine.apply/affine.min/... to arith (xDSL).",
}

PASSES: Registry[ModulePass] = Registry("loom.passes", _BUILTIN, _UPSTREAM_DESCRIPTIONS)

register_pass = PASSES.register
get_pass = PASSES.get
pass_names = PASSES.names
describe = PASSES.describe
