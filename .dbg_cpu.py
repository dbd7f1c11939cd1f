import compiler
art = compiler.compile("""
model mm { input a : f32[512, 512]
 input b : f32[512, 512]
 c = a @ b
 output c }""", target="cpu")
print(art.stages.lowered)
art.emit("asm", "/tmp/mm.s")
art.emit("llvm", "/tmp/mm.ll")
