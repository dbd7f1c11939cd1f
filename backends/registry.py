"""Target names -> backend classes, declared and loaded like passes."""

from __future__ import annotations

from backends.base import Backend
from compiler.plugins import Registry

_BUILTIN: dict[str, str] = {
    "cpu": "backends.cpu:CpuBackend",
    "interp": "backends.interp:InterpreterBackend",
    "systolic": "backends.systolic:SystolicBackend",
    "pim": "backends.pim:PimBackend",
    "fpga": "backends.fpga:FpgaBackend",
}

BACKENDS: Registry[Backend] = Registry("loom.backends", _BUILTIN)

register_backend = BACKENDS.register
get_backend = BACKENDS.get
backend_names = BACKENDS.names
describe = BACKENDS.describe
