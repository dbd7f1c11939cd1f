"""Target names -> backend classes: `loom.backends` entry points (Loom's own
in its pyproject.toml) and runtime registrations, loaded like passes."""

from __future__ import annotations

from backends.base import Backend
from compiler.plugins import Registry

BACKENDS: Registry[Backend] = Registry("loom.backends")

register_backend = BACKENDS.register
get_backend = BACKENDS.get
backend_names = BACKENDS.names
describe = BACKENDS.describe
