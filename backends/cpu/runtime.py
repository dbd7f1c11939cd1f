"""The run-time support generated code calls: a fork-join `parallel_for`.

A loop marked `loom.parallel` is outlined into a task function
``void task(ptr context, i64 lo, i64 hi)`` that runs the iterations with
induction variable in [lo, hi). `parallel_for` splits the loop's trip count
into one contiguous chunk per worker, starts a POSIX thread for every chunk
but the first, runs the first on the calling thread and joins the others.
A thread that cannot be started (out of resources) does not fail the call:
its chunk runs on the calling thread after the others are joined. Chunks are
fixed by the trip count and the worker count alone, so a run is repeatable.

Both functions are emitted into the model's own LLVM module with internal
linkage, so an object file or shared library only needs libc's
`pthread_create` and `pthread_join` (`-lpthread` on older C libraries).
"""

from __future__ import annotations

from llvmlite import ir

I1 = ir.IntType(1)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
PTR = ir.PointerType()
VOID = ir.VoidType()

TASK_TYPE = ir.FunctionType(VOID, [PTR, I64, I64])
# What a thread is handed: the task function, its context and its chunk.
TASK_RECORD = ir.LiteralStructType([PTR, PTR, I64, I64])

PARALLEL_FOR = "loom.parallel_for"
WORKER = "loom.worker"


class Callee:
    """A function pointer llvmlite will emit a call through: it wants the
    callee to carry its function type, which an opaque `ptr` value does not."""

    def __init__(self, pointer: ir.Value, signature: ir.FunctionType):
        self.pointer = pointer
        self.function_type = signature
        self.type = PTR

    def get_reference(self) -> str:
        return self.pointer.get_reference()


class AddressOf:
    """A function used as a value, typed as the opaque `ptr` it is (llvmlite
    would print a typed function pointer)."""

    def __init__(self, function: ir.Function):
        self.function = function
        self.type = PTR

    def get_reference(self) -> str:
        return self.function.get_reference()


def _declare(module: ir.Module, name: str, result: ir.Type, args: list[ir.Type]) -> ir.Function:
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    return ir.Function(module, ir.FunctionType(result, args), name=name)


def _internal(module: ir.Module, name: str, result: ir.Type, args: list[ir.Type]) -> ir.Function:
    function = ir.Function(module, ir.FunctionType(result, args), name=name)
    function.linkage = "internal"
    function.attributes.add("nounwind")
    return function


def opaque(pointer: ir.Value) -> ir.Value:
    """`pointer` typed as a plain `ptr`.

    llvmlite still tracks pointee types in Python for allocas and globals and
    rejects stores of another type through them; the printed IR uses opaque
    pointers either way, so retyping changes nothing but that check.
    """
    pointer.type = PTR
    return pointer


def _field(builder: ir.IRBuilder, record: ir.Value, index: int) -> ir.Value:
    return opaque(builder.gep(record, [I32(0), I32(index)], inbounds=True, source_etype=TASK_RECORD))


def _worker(module: ir.Module) -> ir.Function:
    """``ptr worker(ptr record)``: the thread entry point; runs one chunk."""
    worker = _internal(module, WORKER, PTR, [PTR])
    builder = ir.IRBuilder(worker.append_basic_block("entry"))
    record = worker.args[0]
    task, context, lo, hi = (builder.load(_field(builder, record, i), typ=t)
                             for i, t in enumerate(TASK_RECORD.elements))
    builder.call(Callee(task, TASK_TYPE), [context, lo, hi])
    builder.ret(ir.Constant(PTR, None))
    return worker


def parallel_for(module: ir.Module, workers: int) -> ir.Function:
    """``void parallel_for(ptr task, ptr context, i64 start, i64 step, i64 trips)``,
    defined in `module` on first use, splitting over `workers` threads."""
    existing = module.globals.get(PARALLEL_FOR)
    if existing is not None:
        return existing
    create = _declare(module, "pthread_create", I32, [PTR, PTR, PTR, PTR])
    join = _declare(module, "pthread_join", I32, [I64, PTR])
    worker = _worker(module)
    function = _internal(module, PARALLEL_FOR, VOID, [PTR, PTR, I64, I64, I64])
    pointer, context, start, step, trips = function.args
    task = Callee(pointer, TASK_TYPE)
    builder = ir.IRBuilder(function.append_basic_block("entry"))
    records, handles, started = (opaque(builder.alloca(t, size=workers)) for t in (TASK_RECORD, I64, I1))

    def bound(w: int) -> ir.Value:
        """Where chunk `w` starts, as an induction variable value."""
        first_trip = builder.udiv(builder.mul(trips, I64(w)), I64(workers))
        return builder.add(start, builder.mul(first_trip, step))

    chunks = [(bound(w), bound(w + 1)) for w in range(workers)]
    for w in range(1, workers):
        lo, hi = chunks[w]
        flag = opaque(builder.gep(started, [I64(w)], source_etype=I1))
        builder.store(I1(0), flag)
        with builder.if_then(builder.icmp_signed("<", lo, hi)):
            record = opaque(builder.gep(records, [I64(w)], source_etype=TASK_RECORD))
            for index, value in enumerate((pointer, context, lo, hi)):
                builder.store(value, _field(builder, record, index))
            handle = opaque(builder.gep(handles, [I64(w)], source_etype=I64))
            status = builder.call(create, [handle, ir.Constant(PTR, None), AddressOf(worker), record])
            builder.store(builder.icmp_signed("==", status, I32(0)), flag)
    builder.call(task, [context, *chunks[0]])
    for w in range(1, workers):
        lo, hi = chunks[w]
        ran = builder.load(opaque(builder.gep(started, [I64(w)], source_etype=I1)), typ=I1)
        with builder.if_else(ran) as (joined, inline):
            with joined:
                handle = builder.load(opaque(builder.gep(handles, [I64(w)], source_etype=I64)), typ=I64)
                builder.call(join, [handle, ir.Constant(PTR, None)])
            with inline:
                with builder.if_then(builder.icmp_signed("<", lo, hi)):
                    builder.call(task, [context, lo, hi])
    builder.ret_void()
    return function
