"""The emitter on what tiling and memory planning introduce: strided subviews
with offsets from loop variables, views into a byte arena, vector ops."""

from __future__ import annotations

import numpy as np
import pytest

from backends.cpu.emitter import emit_model
from compiler import InternalError

from cpu_loops import compile_loops, loop_signature, parse_loops


def test_subviews_at_loop_offsets_address_the_tile():
    """y = x + 1 over 3 x 4 tiles of a 7 x 10 buffer, remainders included,
    through subviews with dynamic offsets and a static one."""
    art = compile_loops("""
builtin.module {
  func.func @tiles(%x: memref<7x10xf32>, %y: memref<7x10xf32>)
      attributes {loom.inputs = ["x"], loom.model, loom.outputs = ["y"]} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c2 = arith.constant 2 : index
    %c3 = arith.constant 3 : index
    %c4 = arith.constant 4 : index
    %c6 = arith.constant 6 : index
    %c8 = arith.constant 8 : index
    %one = arith.constant 1.000000e+00 : f32
    scf.for %i = %c0 to %c6 step %c3 {
      scf.for %j = %c0 to %c8 step %c4 {
        %a = memref.subview %x[%i, %j] [3, 4] [1, 1] : memref<7x10xf32> to memref<3x4xf32, strided<[10, 1], offset: ?>>
        %b = memref.subview %y[%i, %j] [3, 4] [1, 1] : memref<7x10xf32> to memref<3x4xf32, strided<[10, 1], offset: ?>>
        scf.for %p = %c0 to %c3 step %c1 {
          scf.for %q = %c0 to %c4 step %c1 {
            %v = memref.load %a[%p, %q] : memref<3x4xf32, strided<[10, 1], offset: ?>>
            %w = arith.addf %v, %one : f32
            memref.store %w, %b[%p, %q] : memref<3x4xf32, strided<[10, 1], offset: ?>>
          }
        }
      }
      %ra = memref.subview %x[%i, 8] [3, 2] [1, 1] : memref<7x10xf32> to memref<3x2xf32, strided<[10, 1], offset: ?>>
      %rb = memref.subview %y[%i, 8] [3, 2] [1, 1] : memref<7x10xf32> to memref<3x2xf32, strided<[10, 1], offset: ?>>
      scf.for %p = %c0 to %c3 step %c1 {
        scf.for %q = %c0 to %c2 step %c1 {
          %v = memref.load %ra[%p, %q] : memref<3x2xf32, strided<[10, 1], offset: ?>>
          %w = arith.addf %v, %one : f32
          memref.store %w, %rb[%p, %q] : memref<3x2xf32, strided<[10, 1], offset: ?>>
        }
      }
    }
    %last = memref.subview %x[6, 0] [1, 10] [1, 1] : memref<7x10xf32> to memref<1x10xf32, strided<[10, 1], offset: 60>>
    %out = memref.subview %y[6, 0] [1, 10] [1, 1] : memref<7x10xf32> to memref<1x10xf32, strided<[10, 1], offset: 60>>
    scf.for %q = %c0 to %c8 step %c1 {
      %v = memref.load %last[%c0, %q] : memref<1x10xf32, strided<[10, 1], offset: 60>>
      %w = arith.addf %v, %one : f32
      memref.store %w, %out[%c0, %q] : memref<1x10xf32, strided<[10, 1], offset: 60>>
    }
    func.return
  }
}""")
    x = np.arange(70, dtype=np.float32).reshape(7, 10)
    y = art.run(x=x)["y"]
    np.testing.assert_array_equal(y[:6], x[:6] + 1)
    np.testing.assert_array_equal(y[6, :8], x[6, :8] + 1)


def test_strided_subviews_of_subviews():
    """Every other column of a 4 x 8 buffer, viewed twice."""
    art = compile_loops("""
builtin.module {
  func.func @cols(%x: memref<4x8xf32>, %y: memref<4x4xf32>)
      attributes {loom.inputs = ["x"], loom.model, loom.outputs = ["y"]} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c2 = arith.constant 2 : index
    %c4 = arith.constant 4 : index
    %even = memref.subview %x[0, 0] [4, 4] [1, 2] : memref<4x8xf32> to memref<4x4xf32, strided<[8, 2]>>
    %lower = memref.subview %even[%c2, 0] [2, 4] [1, 1] : memref<4x4xf32, strided<[8, 2]>> to memref<2x4xf32, strided<[8, 2], offset: ?>>
    scf.for %i = %c0 to %c2 step %c1 {
      scf.for %j = %c0 to %c4 step %c1 {
        %v = memref.load %even[%i, %j] : memref<4x4xf32, strided<[8, 2]>>
        memref.store %v, %y[%i, %j] : memref<4x4xf32>
        %w = memref.load %lower[%i, %j] : memref<2x4xf32, strided<[8, 2], offset: ?>>
        %i2 = arith.addi %i, %c2 : index
        memref.store %w, %y[%i2, %j] : memref<4x4xf32>
      }
    }
    func.return
  }
}""")
    x = np.arange(32, dtype=np.float32).reshape(4, 8)
    np.testing.assert_array_equal(art.run(x=x)["y"], x[:, ::2])


def test_views_into_a_byte_arena():
    """Two buffers placed in one i8 arena at byte offsets, as plan-memory does."""
    art = compile_loops("""
builtin.module {
  func.func @arena(%x: memref<4xf32>, %y: memref<4xf32>)
      attributes {loom.inputs = ["x"], loom.model, loom.outputs = ["y"]} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c4 = arith.constant 4 : index
    %at0 = arith.constant 0 : index
    %at64 = arith.constant 64 : index
    %arena = memref.alloc() : memref<128xi8>
    %a = memref.view %arena[%at0][] : memref<128xi8> to memref<4xf32>
    %b = memref.view %arena[%at64][] : memref<128xi8> to memref<2x2xf32>
    scf.for %i = %c0 to %c4 step %c1 {
      %v = memref.load %x[%i] : memref<4xf32>
      %d = arith.addf %v, %v : f32
      memref.store %d, %a[%i] : memref<4xf32>
    }
    scf.for %i = %c0 to %c4 step %c1 {
      %v = memref.load %a[%i] : memref<4xf32>
      %row = arith.shrui %i, %c1 : index
      %col = arith.andi %i, %c1 : index
      memref.store %v, %b[%row, %col] : memref<2x2xf32>
    }
    scf.for %i = %c0 to %c4 step %c1 {
      %row = arith.shrui %i, %c1 : index
      %col = arith.andi %i, %c1 : index
      %v = memref.load %b[%row, %col] : memref<2x2xf32>
      memref.store %v, %y[%i] : memref<4xf32>
    }
    memref.dealloc %arena : memref<128xi8>
    func.return
  }
}""")
    x = np.array([1.5, -2, 3, 0.25], dtype=np.float32)
    np.testing.assert_array_equal(art.run(x=x)["y"], 2 * x)


def test_vector_fma_kernel():
    """y[0:2, 0:16] = a[0:2] (broadcast) * b[0:16] + y, accumulated over 3 steps in registers."""
    art = compile_loops("""
builtin.module {
  func.func @fma(%a: memref<2x3xf32>, %b: memref<3x16xf32>, %y: memref<2x16xf32>)
      attributes {loom.inputs = ["a", "b"], loom.model, loom.outputs = ["y"]} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c3 = arith.constant 3 : index
    %zero = arith.constant 0.000000e+00 : f32
    %z = vector.broadcast %zero : f32 to vector<16xf32>
    %r:2 = scf.for %k = %c0 to %c3 step %c1 iter_args(%s0 = %z, %s1 = %z) -> (vector<16xf32>, vector<16xf32>) {
      %bv = vector.load %b[%k, %c0] : memref<3x16xf32>, vector<16xf32>
      %a0 = memref.load %a[%c0, %k] : memref<2x3xf32>
      %a1 = memref.load %a[%c1, %k] : memref<2x3xf32>
      %v0 = vector.broadcast %a0 : f32 to vector<16xf32>
      %v1 = vector.broadcast %a1 : f32 to vector<16xf32>
      %n0 = vector.fma %v0, %bv, %s0 : vector<16xf32>
      %n1 = vector.fma %v1, %bv, %s1 : vector<16xf32>
      scf.yield %n0, %n1 : vector<16xf32>, vector<16xf32>
    }
    vector.store %r#0, %y[%c0, %c0] : memref<2x16xf32>, vector<16xf32>
    vector.store %r#1, %y[%c1, %c0] : memref<2x16xf32>, vector<16xf32>
    func.return
  }
}""")
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((2, 3), dtype=np.float32), rng.standard_normal((3, 16), dtype=np.float32)
    np.testing.assert_allclose(art.run(a=a, b=b)["y"], a @ b, rtol=1e-6, atol=1e-6)


def test_dynamic_subview_sizes_are_internal_errors():
    with pytest.raises(InternalError, match="dynamic sizes"):
        compile_loops("""
builtin.module {
  func.func @dyn(%x: memref<8xf32>, %y: memref<8xf32>)
      attributes {loom.inputs = ["x"], loom.model, loom.outputs = ["y"]} {
    %c2 = arith.constant 2 : index
    %v = memref.subview %x[0] [%c2] [1] : memref<8xf32> to memref<?xf32, strided<[1]>>
    func.return
  }
}""")


ARENA_VIEWS = """
builtin.module {
  func.func @spans(%x: memref<4xf32>, %y: memref<4xf32>)
      attributes {loom.inputs = ["x"], loom.model, loom.outputs = ["y"]} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c4 = arith.constant 4 : index
    %at0 = arith.constant 0 : index
    %at8 = arith.constant 8 : index
    %at64 = arith.constant 64 : index
    %arena = memref.alloc() : memref<128xi8>
    %a = memref.view %arena[%at0][] : memref<128xi8> to memref<4xf32>
    %b = memref.view %arena[%at64][] : memref<128xi8> to memref<2x2xf32>
    %flat = memref.collapse_shape %b [[0, 1]] : memref<2x2xf32> into memref<4xf32>
    %c = memref.view %arena[%at8][] : memref<128xi8> to memref<4xf32>
    scf.for %i = %c0 to %c4 step %c1 {
      %v = memref.load %x[%i] : memref<4xf32>
      memref.store %v, %a[%i] : memref<4xf32>
    }
    scf.for %i = %c0 to %c4 step %c1 {
      %v = memref.load %a[%i] : memref<4xf32>
      memref.store %v, %flat[%i] : memref<4xf32>
    }
    scf.for %i = %c0 to %c4 step %c1 {
      %v = memref.load %flat[%i] : memref<4xf32>
      memref.store %v, %c[%i] : memref<4xf32>
    }
    scf.for %i = %c0 to %c4 step %c1 {
      %v = memref.load %c[%i] : memref<4xf32>
      memref.store %v, %y[%i] : memref<4xf32>
    }
    memref.dealloc %arena : memref<128xi8>
    func.return
  }
}"""


def scope_names(md) -> set[str]:
    return {scope.operands[0].string for scope in md.operands}


def test_disjoint_views_of_an_arena_are_declared_not_to_alias():
    """Bytes 0-16, 64-80 (through a reshape too) and 8-24 of one arena: the
    first two never meet, the third overlaps the first and may alias it."""
    module = parse_loops(ARENA_VIEWS)
    emitted = emit_model(module, loop_signature(module))
    accesses = [i for block in emitted.module.get_global(emitted.entry).blocks for i in block.instructions
                if i.opname in ("load", "store")]
    described = [(scope_names(i.metadata["alias.scope"]), scope_names(i.metadata["noalias"]))
                 for i in accesses if "alias.scope" in i.metadata]
    a, b, c = "loom.buffer.0.0.16", "loom.buffer.0.64.80", "loom.buffer.0.8.24"
    assert sorted(described) == sorted([({a}, {b})] * 2 + [({b}, {a, c})] * 2 + [({c}, {b})] * 2)
    assert len(accesses) - len(described) == 2  # x and y: arguments, nothing to declare
    x = np.array([1.5, -2, 3, 0.25], dtype=np.float32)
    np.testing.assert_array_equal(compile_loops(ARENA_VIEWS).run(x=x)["y"], x)


NEST = """
builtin.module {
  func.func @nest(%x: memref<6x28xf32>, %y: memref<6x28xf32>)
      attributes {loom.inputs = ["x"], loom.model, loom.outputs = ["y"]} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c6 = arith.constant 6 : index
    %c28 = arith.constant 28 : index
    scf.for %i = %c0 to %c6 step %c1 {
      scf.for %j = %c0 to %c28 step %c1 {
        %v = memref.load %x[%i, %j] : memref<6x28xf32>
        %w = arith.addf %v, %v : f32
        memref.store %w, %y[%i, %j] : memref<6x28xf32>
      }
    }
    func.return
  }
}"""


def test_loops_around_loops_are_kept_from_the_loop_vectorizer():
    """Only the outer loop's back edge carries the hint: LLVM would otherwise
    unroll the inner loop and vectorise the outer one with gathers."""
    module = parse_loops(NEST)
    emitted = emit_model(module, loop_signature(module))
    branches = [i for block in emitted.module.get_global(emitted.entry).blocks for i in block.instructions
                if i.opname == "br" and "llvm.loop" in i.metadata]
    assert len(branches) == 1
    loop_id = branches[0].metadata["llvm.loop"]
    assert loop_id.operands[0] is loop_id  # a loop ID refers to itself
    (hint,) = loop_id.operands[1:]
    assert hint.operands[0].string == "llvm.loop.vectorize.enable" and hint.operands[1].constant == 0
    x = np.arange(6 * 28, dtype=np.float32).reshape(6, 28)
    np.testing.assert_array_equal(compile_loops(NEST).run(x=x)["y"], 2 * x)
