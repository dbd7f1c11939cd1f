"""Shared by the top-level tests: sample discovery and a compile cache.

Compiling to native code dominates the suite's time, so every test that
needs a sample compiled for a target at the default options shares one
artifact.
"""

from __future__ import annotations

import functools
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "samples").glob("*.loom"))


@functools.cache
def compiled(sample: str, target: str):
    import compiler

    return compiler.compile(ROOT / "samples" / sample, target=target)
