"""Shared RTL infrastructure: build hw/comb/seq netlists from Python, export
them to Verilog through CIRCT, simulate them with Verilator and synthesize
them with yosys/nextpnr (docs/rtl.md)."""
