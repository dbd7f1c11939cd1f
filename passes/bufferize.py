"""Bufferize tensor-level model functions into destination-passing style.

Model functions are straight-line and value-semantic, and every tensor the
nn lowering uses as a `linalg` init is fresh and used once, so a simple
forward walk suffices: each tensor value gets one buffer, a linalg op writes
its result into its init's buffer in place, and reshapes become views.

The function then takes its inputs followed by one buffer per output and
returns nothing. A result computed into a buffer allocated here is computed
straight into the output argument; any other result (an input, a constant,
a view, a value returned twice) is copied there. Parameters and literals
become private constant `memref.global`s, and every remaining allocation is
freed after its last use, views included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count

from xdsl.context import Context
from xdsl.dialects import func, memref, tensor
from xdsl.dialects.builtin import (
    ArrayAttr,
    DictionaryAttr,
    FunctionType,
    MemRefType,
    ModuleOp,
    StringAttr,
    SymbolRefAttr,
    TensorType,
    UnitAttr,
)
from xdsl.dialects.linalg.abstract_ops import LinalgStructuredOperation
from xdsl.ir import Attribute, Block, Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter
from xdsl.utils.exceptions import PassFailedException

from dialects import nn


def memref_type(t: Attribute) -> Attribute:
    """The buffer type of a tensor type; other types are unchanged."""
    if isinstance(t, TensorType):
        return MemRefType(t.element_type, t.get_shape())
    return t


def _has_tensors(op: Operation) -> bool:
    return any(isinstance(v.type, TensorType) for v in (*op.operands, *op.results))


@dataclass
class ConstantGlobals:
    """The module's constant globals: one per parameter name and value, one
    per distinct unnamed literal, with names unique among the module's
    symbols."""

    module: ModuleOp
    _symbols: set[str] = field(default_factory=set)
    _by_key: dict[tuple[str | None, Attribute], str] = field(default_factory=dict)
    _created: list[memref.GlobalOp] = field(default_factory=list)

    def __post_init__(self):
        for op in self.module.ops:
            name = op.properties.get("sym_name") or op.attributes.get("sym_name")
            if isinstance(name, StringAttr):
                self._symbols.add(name.data)

    def _unique(self, base: str | None) -> str:
        """`base`, or `base_N` when taken; `__constant_N` for literals."""
        if base:
            candidates = (f"{base}_{n}" if n else base for n in count())
        else:
            candidates = (f"__constant_{n}" for n in count())
        name = next(c for c in candidates if c not in self._symbols)
        self._symbols.add(name)
        return name

    def symbol_for(self, constant: nn.ConstantOp) -> str:
        key = (constant.param_name, constant.value)
        if key not in self._by_key:
            name = self._unique(constant.param_name)
            self._by_key[key] = name
            self._created.append(
                memref.GlobalOp.get(
                    StringAttr(name),
                    memref_type(constant.result.type),
                    constant.value,
                    sym_visibility=StringAttr("private"),
                    constant=UnitAttr(),
                )
            )
        return self._by_key[key]

    def insert(self) -> None:
        """Put the globals created so far at the top of the module."""
        if self._created:
            Rewriter.insert_op(self._created, InsertPoint.at_start(self.module.body.block))
            self._created = []


class FunctionBufferizer:
    """Bufferizes one function body; see the module docstring."""

    def __init__(self, function: func.FuncOp, globals_: ConstantGlobals):
        self.function = function
        self.block = function.body.block
        self.globals = globals_
        self.buffers: dict[SSAValue, SSAValue] = {}

    def run(self) -> None:
        for arg in list(self.block.args):
            if isinstance(arg.type, TensorType):
                new_arg = Rewriter.replace_value_with_new_type(arg, memref_type(arg.type))
                self.buffers[new_arg] = new_arg
        replaced: list[Operation] = []
        for op in list(self.block.ops):
            if isinstance(op, func.ReturnOp):
                self._return(op)
            elif _has_tensors(op):
                self._bufferize(op)
                replaced.append(op)
        for op in reversed(replaced):
            Rewriter.erase_op(op)
        self._free_allocations()
        self._update_signature()

    def buffer(self, value: SSAValue) -> SSAValue:
        """The buffer holding tensor `value`; non-tensor values stand for themselves."""
        if not isinstance(value.type, TensorType):
            return value
        return self.buffers[value]

    def _insert(self, op: Operation, before: Operation) -> Operation:
        Rewriter.insert_op(op, InsertPoint.before(before))
        return op

    def _bind(self, old: SSAValue, new: SSAValue) -> None:
        if new.name_hint is None:
            new.name_hint = old.name_hint
        self.buffers[old] = new

    def _bufferize(self, op: Operation) -> None:
        if isinstance(op, nn.ConstantOp):
            if op.result.uses:
                name = self.globals.symbol_for(op)
                get_global = memref.GetGlobalOp(SymbolRefAttr(name), memref_type(op.result.type))
                get = self._insert(get_global, op)
                self._bind(op.result, get.results[0])
        elif isinstance(op, tensor.EmptyOp):
            alloc = self._insert(memref.AllocOp([], [], memref_type(op.tensor.type)), op)
            self._bind(op.tensor, alloc.results[0])
        elif isinstance(op, LinalgStructuredOperation):
            self._linalg(op)
        elif isinstance(op, tensor.CollapseShapeOp | tensor.ExpandShapeOp):
            self._view(op)
        else:
            raise PassFailedException(f"bufferize cannot handle {op.name}")

    def _linalg(self, op: LinalgStructuredOperation) -> None:
        # Writing in place is only safe into a buffer allocated here that
        # nothing else reads.
        for init in op.outputs:
            if not init.has_one_use() or not isinstance(_root(self.buffer(init)).owner, memref.AllocOp):
                raise PassFailedException(
                    f"bufferize expects each init of {op.name} to be a fresh tensor used only there"
                )
        new_op = type(op).create(
            operands=[self.buffer(v) for v in op.operands],
            result_types=[],
            properties=dict(op.properties),
            attributes=dict(op.attributes),
            regions=[op.detach_region(r) for r in list(op.regions)],
        )
        self._insert(new_op, op)
        for result, init in zip(op.results, op.outputs, strict=True):
            self._bind(result, self.buffer(init))

    def _view(self, op: tensor.CollapseShapeOp | tensor.ExpandShapeOp) -> None:
        view_type = memref.CollapseShapeOp if isinstance(op, tensor.CollapseShapeOp) else memref.ExpandShapeOp
        view = view_type.create(
            operands=[self.buffer(op.src)],
            result_types=[memref_type(op.result.type)],
            properties=dict(op.properties),
        )
        self._insert(view, op)
        self._bind(op.result, view.results[0])

    def _return(self, op: func.ReturnOp) -> None:
        """Route every returned value into a new output argument."""
        names = _output_names(self.function)
        for index, value in enumerate(op.arguments):
            source = self.buffers.get(value)
            if source is None:
                raise PassFailedException(f"bufferize expects tensor results, got {value.type}")
            out = self.block.insert_arg(source.type, len(self.block.args))
            if index < len(names) and SSAValue.is_valid_name(names[index]):
                out.name_hint = names[index]
            alloc = source.owner
            if isinstance(alloc, memref.AllocOp):
                # Later results that share this buffer now find the output
                # argument, which is not an allocation, and are copied.
                alloc.memref.replace_all_uses_with(out)
                Rewriter.erase_op(alloc)
                self.buffers = {k: out if v is source else v for k, v in self.buffers.items()}
            else:
                self._insert(memref.CopyOp(source, out), op)
        Rewriter.replace_op(op, func.ReturnOp())

    def _free_allocations(self) -> None:
        ops = list(self.block.ops)
        position = {op: i for i, op in enumerate(ops)}
        for alloc in [op for op in ops if isinstance(op, memref.AllocOp)]:
            users = _top_level_users(alloc.memref, self.block)
            last = max((position[user] for user in users), default=position[alloc])
            Rewriter.insert_op(memref.DeallocOp.get(alloc.memref), InsertPoint.after(ops[last]))

    def _update_signature(self) -> None:
        f = self.function
        f.properties["function_type"] = FunctionType.from_lists(list(self.block.arg_types), [])
        if f.arg_attrs is not None:
            padding = [DictionaryAttr({})] * (len(self.block.args) - len(f.arg_attrs))
            f.properties["arg_attrs"] = ArrayAttr([*f.arg_attrs, *padding])
        f.properties.pop("res_attrs", None)


def _on_tensors(function: func.FuncOp) -> bool:
    """Whether `function` is a tensor-level definition (and so ours to bufferize)."""
    ft = function.function_type
    types = (*ft.inputs.data, *ft.outputs.data)
    return not function.is_declaration and any(isinstance(t, TensorType) for t in types)


def _output_names(function: func.FuncOp) -> list[str]:
    names = function.attributes.get(nn.OUTPUTS_ATTR)
    if not isinstance(names, ArrayAttr):
        return []
    return [n.data for n in names.data if isinstance(n, StringAttr)]


def _root(buffer: SSAValue) -> SSAValue:
    """The buffer `buffer` is a (possibly nested) reshaped view of."""
    while isinstance(view := buffer.owner, memref.CollapseShapeOp | memref.ExpandShapeOp):
        buffer = view.src
    return buffer


def _top_level_users(buffer: SSAValue, block: Block) -> list[Operation]:
    """The ops of `block` that use `buffer` or a view of it."""
    users: list[Operation] = []
    for use in buffer.uses:
        user = block.find_ancestor_op_in_block(use.operation)
        assert user is not None
        users.append(user)
        if isinstance(user, memref.CollapseShapeOp | memref.ExpandShapeOp):
            users.extend(_top_level_users(user.result, block))
    return users


class BufferizePass(ModulePass):
    """Turn tensor model functions into destination-passing functions on memrefs."""

    name = "bufferize"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        globals_ = ConstantGlobals(op)
        for function in list(op.ops):
            if isinstance(function, func.FuncOp) and _on_tensors(function):
                FunctionBufferizer(function, globals_).run()
        globals_.insert()
