"""Group the nn ops of a model into layer engines connected by FIFO channels.

An engine is what hls4ml calls a layer: an op that is not elementwise (a
matmul, a convolution, a pooling, a softmax, a quantize) together with the
elementwise ops that finish it (bias add, activation, requantize,
dequantize), each reading the previous one's result as its only use. Each
engine becomes an `hls.engine` region; a tensor one engine passes to another
goes through an `hls.stream` as deep as the tensor, so a producer never
waits for its consumer. Weights (`nn.constant`) stay outside, as ROMs the
engine reads, and so does `nn.reshape`, which on hardware only renames
addresses.

Runs on the nn level, before `convert-nn-to-linalg`, which then lowers the
ops inside each engine in place.
"""

from __future__ import annotations

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, TensorType
from xdsl.ir import Block, Operation, OpResult, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

from compiler.model import find_model
from dialects import hls, nn, quant

# Ops that finish the layer before them when they read its result.
EPILOGUE_OPS: tuple[type[Operation], ...] = (
    nn.AddOp, nn.SubOp, nn.MulOp, nn.DivOp, nn.NegOp, nn.ReluOp, nn.GeluOp, nn.SigmoidOp, nn.TanhOp,
    nn.ExpOp, nn.SqrtOp, quant.RequantizeOp, quant.DequantizeOp,
)
# Ops that are addresses or data, not computation.
OUTSIDE_OPS: tuple[type[Operation], ...] = (nn.ConstantOp, nn.ReshapeOp)


def _layer_name(ops: list[Operation], index: int) -> str:
    """The layer's weight param (without its quantized suffix), else its DSL name, else kind + index."""
    for operand in ops[0].operands:
        if isinstance(operand, OpResult) and isinstance(operand.op, nn.ConstantOp) and operand.op.param_name:
            return operand.op.param_name.split(".")[0]
    for op in reversed(ops):
        if op.results[0].name_hint:
            return op.results[0].name_hint
    return f"{ops[0].name.split('.')[-1]}{index}"


def group_layers(body: Block) -> list[list[Operation]]:
    """The ops of each engine, in program order."""
    groups: list[list[Operation]] = []
    for op in body.ops:
        if isinstance(op, OUTSIDE_OPS + (func.ReturnOp,)):
            continue
        last = groups[-1][-1] if groups else None
        joins = (
            isinstance(op, EPILOGUE_OPS) and last is not None
            and op.operands[0] is last.results[0] and last.results[0].has_one_use()
        )
        if joins:
            groups[-1].append(op)
        else:
            groups.append([op])
    return groups


def _unique(name: str, taken: set[str]) -> str:
    candidate, suffix = name, 2
    while candidate in taken:
        candidate, suffix = f"{name}_{suffix}", suffix + 1
    taken.add(candidate)
    return candidate


def _feeds_engine(value: SSAValue) -> bool:
    """Whether `value` reaches another engine, possibly through reshapes."""
    for use in value.uses:
        user = use.operation
        if isinstance(user, nn.ReshapeOp):
            if _feeds_engine(user.results[0]):
                return True
        elif not isinstance(user, func.ReturnOp):
            return True
    return False


class HlsFormEnginesPass(ModulePass):
    """Wrap each layer of the model in an hls.engine; connect engines with hls.stream FIFOs."""

    name = "hls-form-engines"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        model = find_model(op, None)
        taken: set[str] = set()
        for index, ops in enumerate(group_layers(model.body.block)):
            last = ops[-1]
            produced = last.results[0]
            block = Block()
            following = last.next_op
            assert following is not None  # the function's terminator at least
            for member in ops:
                member.detach()
                block.add_op(member)
            engine = hls.EngineOp.wrap(_unique(_layer_name(ops, index), taken), block, [produced])
            Rewriter.insert_op(engine, InsertPoint.before(following))
            result = engine.outputs[0]
            produced.replace_uses_with_if(result, lambda use, engine=engine: use.operation.parent_op() is not engine)
            if _feeds_engine(result):
                shape = result.type.get_shape() if isinstance(result.type, TensorType) else ()
                count = 1
                for extent in shape:
                    count *= extent
                stream = hls.StreamOp(result, max(count, 1))
                Rewriter.insert_op(stream, InsertPoint.after(engine))
                result.replace_uses_with_if(stream.output, lambda use, stream=stream: use.operation is not stream
                                            and not isinstance(use.operation, func.ReturnOp))
