"""The PIM bank unit as Verilog: the synthesizable unit, a simulation wrapper with a behavioural bank, and its runner."""
