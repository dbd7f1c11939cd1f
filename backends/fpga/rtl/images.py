"""Memory images: the `$readmemh` files the design's banks load at time zero.

One file per bank of every buffer the RTL region reads without writing it:
weights (the same for every run) and the values the host computes before
the region (per run). A line is one element in two's complement hex.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backends.fpga.rtl.layout import Layout


def bank_file(layout: Layout, bank: int) -> str:
    return f"{layout.name}_b{bank}.hex"


def bank_hex(words: np.ndarray, width: int) -> str:
    digits = -(-width // 4)
    mask = (1 << width) - 1
    return "".join(f"{int(w) & mask:0{digits}x}\n" for w in words.tolist())


def buffer_images(layout: Layout, array: np.ndarray) -> dict[str, str]:
    """File name -> text for every bank of `layout` holding `array`."""
    return {bank_file(layout, b): bank_hex(words, layout.width) for b, words in enumerate(layout.images(array))}


def write_images(images: dict[str, str], directory: Path) -> list[Path]:
    paths = []
    for name, text in images.items():
        (directory / name).write_text(text)
        paths.append(directory / name)
    return paths
