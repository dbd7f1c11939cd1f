"""The FPGA target: HLS-scheduled layer engines executed by a schedule simulator."""

from backends.fpga.backend import FpgaBackend

__all__ = ["FpgaBackend"]
