"""The `hls` dialect: layer engines and the directives that schedule them.

A model compiled for an FPGA is a set of *engines*, one per layer in the
sense of hls4ml (a matmul or convolution with its bias, activation and
requantization; a pooling; a softmax), each a region of loop nests
(`linalg.generic` / `linalg.fill` on tensors). Engines pass whole tensors to
each other through `hls.stream` channels. The algorithm lives in the loop
nests; how they become hardware lives in attributes attached to them, as in
Allo and ScaleHLS where schedules are decoupled from the algorithm:

    #hls.pipeline<ii = 1>                      the nest is flattened and pipelined with this target II
    #hls.unroll<factors = [1, 1, 8]>           body copies per loop dim (parallel dims only)
    #hls.partition<cyclic, dim = 1, factor = 8>  how one array is split into banks
    hls.engine "fc1" {reuse_factor = 98}      one layer; hls4ml's reuse factor per layer
    hls.stream %t {depth = 128}                the FIFO carrying a tensor between engines

`hls-directives` attaches the directives, `hls-schedule` turns them into a
cycle-by-cycle schedule (`hls.cycle` and `hls.unit` on every body op,
`hls.schedule` on every nest, `hls.estimate` on every engine), which the
FPGA backend's simulator executes and an FSM + datapath generator reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from xdsl.dialects.builtin import IntegerAttr, StringAttr, TensorType, i64
from xdsl.ir import Attribute, Block, Data, Dialect, Region, SSAValue
from xdsl.irdl import (
    IRDLOperation,
    ParsePropInAttrDict,
    VarConstraint,
    base,
    irdl_attr_definition,
    irdl_op_definition,
    lazy_traits_def,
    operand_def,
    opt_prop_def,
    prop_def,
    region_def,
    result_def,
    traits_def,
    var_operand_def,
    var_result_def,
)
from xdsl.parser import AttrParser
from xdsl.printer import Printer
from xdsl.traits import HasParent, IsTerminator, Pure
from xdsl.utils.exceptions import VerifyException

# Attribute names passes attach to loop nests and ops.
PIPELINE_ATTR = "hls.pipeline"
UNROLL_ATTR = "hls.unroll"
PARTITION_ATTR = "hls.partition"  # on a nest: one ArrayAttr of partitions per operand
SCHEDULE_ATTR = "hls.schedule"  # on a nest, after scheduling
CYCLE_ATTR = "hls.cycle"  # on a body op: its start cycle within an iteration
UNIT_ATTR = "hls.unit"  # on a body op: the unit it is bound to (dsp, lut, mem)
ESTIMATE_ATTR = "hls.estimate"  # on an engine: latency and resources
MODE_ATTR = "hls.mode"  # on the model function: dataflow | time-multiplexed

PARTITION_KINDS = ("cyclic", "block", "complete")


def _keyed_entries(parser: AttrParser, names: Sequence[str]) -> dict[str, object]:
    """`name = value, ...` inside angle brackets already opened; integers or integer lists."""
    values: dict[str, object] = {}
    for index, name in enumerate(names):
        if index:
            parser.parse_punctuation(",")
        parser.parse_keyword(name)
        parser.parse_punctuation("=")
        if parser.parse_optional_punctuation("[") is not None:
            items: list[int] = []
            if parser.parse_optional_punctuation("]") is None:
                items.append(parser.parse_integer(allow_boolean=False))
                while parser.parse_optional_punctuation(",") is not None:
                    items.append(parser.parse_integer(allow_boolean=False))
                parser.parse_punctuation("]")
            values[name] = tuple(items)
        else:
            values[name] = parser.parse_integer(allow_boolean=False)
    return values


@irdl_attr_definition
class PipelineAttr(Data[int]):
    """Pipeline the (flattened) loop nest, starting an iteration every `ii` cycles if possible."""

    name = "hls.pipeline"

    @classmethod
    def parse_parameter(cls, parser: AttrParser) -> int:
        with parser.in_angle_brackets():
            return _keyed_entries(parser, ["ii"])["ii"]  # type: ignore[return-value]

    def print_parameter(self, printer: Printer) -> None:
        printer.print_string(f"<ii = {self.data}>")

    @property
    def ii(self) -> int:
        return self.data

    def verify(self) -> None:
        if self.data < 1:
            raise VerifyException(f"#hls.pipeline: ii must be at least 1, got {self.data}")


@irdl_attr_definition
class UnrollAttr(Data[tuple[int, ...]]):
    """How many copies of the body run side by side, per loop dim of the nest."""

    name = "hls.unroll"

    @classmethod
    def parse_parameter(cls, parser: AttrParser) -> tuple[int, ...]:
        with parser.in_angle_brackets():
            return _keyed_entries(parser, ["factors"])["factors"]  # type: ignore[return-value]

    def print_parameter(self, printer: Printer) -> None:
        printer.print_string(f"<factors = [{', '.join(map(str, self.data))}]>")

    @property
    def factors(self) -> tuple[int, ...]:
        return self.data

    def verify(self) -> None:
        if any(f < 1 for f in self.data):
            raise VerifyException(f"#hls.unroll: factors must be positive, got {list(self.data)}")


@irdl_attr_definition
class PartitionAttr(Data[tuple[str, int, int]]):
    """Split dim `dim` of an array into banks: `cyclic` (element i in bank
    i mod factor), `block` (consecutive runs of ceil(size / factor)) or
    `complete` (one register per element; no factor)."""

    name = "hls.partition"

    @classmethod
    def parse_parameter(cls, parser: AttrParser) -> tuple[str, int, int]:
        with parser.in_angle_brackets():
            kind = parser.parse_keyword_in(PARTITION_KINDS)
            parser.parse_punctuation(",")
            if kind == "complete":
                return kind, _keyed_entries(parser, ["dim"])["dim"], 0  # type: ignore[return-value]
            values = _keyed_entries(parser, ["dim", "factor"])
            return kind, values["dim"], values["factor"]  # type: ignore[return-value]

    def print_parameter(self, printer: Printer) -> None:
        kind, dim, factor = self.data
        tail = "" if kind == "complete" else f", factor = {factor}"
        printer.print_string(f"<{kind}, dim = {dim}{tail}>")

    @property
    def kind(self) -> str:
        return self.data[0]

    @property
    def dim(self) -> int:
        return self.data[1]

    @property
    def factor(self) -> int:
        return self.data[2]

    def verify(self) -> None:
        kind, dim, factor = self.data
        if kind not in PARTITION_KINDS:
            raise VerifyException(f"#hls.partition: kind must be one of {', '.join(PARTITION_KINDS)}")
        if dim < 0 or (kind != "complete" and factor < 1):
            raise VerifyException(f"#hls.partition: needs dim >= 0 and factor >= 1, got {self.data}")

    def banks(self, size: int) -> int:
        """Banks the dim of `size` elements is split into."""
        return size if self.kind == "complete" else min(self.factor, size)

    def bank_of(self, index, size: int):
        """The bank holding index `index` (an int or a numpy array) of a dim of `size`."""
        if self.kind == "cyclic":
            return index % self.factor
        if self.kind == "block":
            return index // -(-size // self.factor)
        return index


# --------------------------------------------------------------------------
# Ops
# --------------------------------------------------------------------------


@irdl_op_definition
class YieldOp(IRDLOperation):
    """Ends an `hls.engine`, naming the tensors it produces."""

    name = "hls.yield"
    values = var_operand_def(TensorType)
    traits = lazy_traits_def(lambda: (IsTerminator(), HasParent(EngineOp)))
    assembly_format = "$values attr-dict `:` type($values)"

    def __init__(self, values: Sequence[SSAValue]):
        super().__init__(operands=[values])


@irdl_op_definition
class EngineOp(IRDLOperation):
    """One layer engine: the loop nests computing a layer, run by one FSM.

    Values defined outside (weights, the tensors other engines stream in)
    are read directly; what the engine produces leaves through `hls.yield`.
    `reuse_factor` is hls4ml's: how many times each multiplier is used per
    layer evaluation, so the engine instantiates about MACs / reuse_factor
    multipliers.
    """

    name = "hls.engine"

    outputs = var_result_def(TensorType)
    body = region_def("single_block")
    layer = prop_def(StringAttr)
    reuse_factor = opt_prop_def(IntegerAttr)

    irdl_options = (ParsePropInAttrDict(),)
    assembly_format = "$layer attr-dict-with-keyword $body `:` type($outputs)"

    def __init__(self, layer: str, body: Region, output_types: Sequence[Attribute]):
        super().__init__(result_types=[output_types], regions=[body], properties={"layer": StringAttr(layer)})

    @property
    def layer_name(self) -> str:
        return self.layer.data

    def set_reuse_factor(self, value: int) -> None:
        self.reuse_factor = IntegerAttr(value, i64)

    def verify_(self) -> None:
        block = self.body.block
        if block.args:
            raise VerifyException("hls.engine: the body takes no arguments")
        if not isinstance(block.last_op, YieldOp):
            raise VerifyException("hls.engine: the body must end with hls.yield")
        yielded = [v.type for v in block.last_op.values]
        if yielded != [r.type for r in self.outputs]:
            raise VerifyException(f"hls.engine: yields {yielded} but produces {[r.type for r in self.outputs]}")
        if self.reuse_factor is not None and self.reuse_factor.value.data < 1:
            raise VerifyException("hls.engine: reuse_factor must be at least 1")

    @staticmethod
    def wrap(layer: str, block: Block, yielded: Sequence[SSAValue]) -> EngineOp:
        """An engine whose body is `block` (ending with a yield of `yielded` added here)."""
        block.add_op(YieldOp(yielded))
        return EngineOp(layer, Region(block), [v.type for v in yielded])


@irdl_op_definition
class StreamOp(IRDLOperation):
    """A FIFO channel carrying a tensor from one engine to another, `depth`
    elements deep. The value is unchanged; the op marks where hardware
    puts a channel and how big it is."""

    name = "hls.stream"

    T: ClassVar = VarConstraint("T", base(TensorType))
    input = operand_def(T)
    output = result_def(T)
    depth = prop_def(IntegerAttr)

    traits = traits_def(Pure())
    irdl_options = (ParsePropInAttrDict(),)
    assembly_format = "$input attr-dict `:` type($input)"

    def __init__(self, value: SSAValue, depth: int):
        super().__init__(operands=[value], result_types=[value.type], properties={"depth": IntegerAttr(depth, i64)})

    def verify_(self) -> None:
        if self.depth.value.data < 1:
            raise VerifyException("hls.stream: depth must be at least 1")


HLS = Dialect("hls", [EngineOp, YieldOp, StreamOp], [PipelineAttr, UnrollAttr, PartitionAttr])
