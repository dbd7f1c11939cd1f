"""The top module: every buffer's banks, every nest's FSM and datapath, the engines' sequencing.

Ports follow Loom's convention (`backends/rtl`): `clk`, `rst`, `done`, a
`cycles` count, and a read-out port (`rd_addr` -> `rd_data`) over the
region's output buffers. A read-out address is `{buffer, bank, row}`, each
field as wide as the widest output needs (`readout_address`).
"""

from __future__ import annotations

from xdsl.ir import Operation

from backends.fpga.rtl.control import Machines, NestControl
from backends.fpga.rtl.datapath import NestDatapath
from backends.fpga.rtl.images import bank_file
from backends.fpga.rtl.region import Region
from backends.fpga.rtl.wiring import BankPorts, name_dropped_low_bits
from backends.rtl.netlist import ModuleBuilder, Signal, bits_for

TOP = "loom_fpga"
CYCLE_BITS = 32


def readout_fields(region: Region) -> tuple[int, int, int]:
    """Bits of the (buffer, bank, row) fields of a read-out address."""
    outputs = [region.layouts[root] for root in region.outputs]
    return (bits_for(len(outputs) - 1), bits_for(max(o.banks for o in outputs) - 1),
            bits_for(max(o.depth for o in outputs) - 1))


def readout_address(region: Region, output: int, bank: int, row: int) -> int:
    _, bank_bits, row_bits = readout_fields(region)
    return (output << (bank_bits + row_bits)) | (bank << row_bits) | row


def build(region: Region, machines: Machines) -> ModuleBuilder:
    m = ModuleBuilder(TOP)
    loaded = set(region.constants) | set(region.host_inputs)
    banks = {layout.name: [BankPorts(m.memory(f"{layout.name}_b{b}", layout.depth, layout.width,
                                              init_file=bank_file(layout, b) if root in loaded else None))
                           for b in range(layout.banks)]
             for root, layout in region.layouts.items()}

    finished: dict[str, Signal] = {}  # engine -> done now (registered, or in its last cycle)
    done_flags: list[Signal] = []
    previous: Signal | None = None
    for number, engine in enumerate(region.engines):
        if region.mode == "dataflow":
            waits = [finished[p] for p in engine.producers]
        else:
            waits = [previous] if previous is not None else []
        controls = []
        for k, ns in enumerate(engine.nests):
            prefix = f"e{number}n{k}"
            control = NestControl(m, prefix, ns, region.overhead, not waits and k == 0, machines)
            NestDatapath(m, prefix, ns, region.plans[ns.op], banks, control, region.scalars[ns.op], region.dsp_width)
            if controls:
                control.start(controls[-1].last)
            controls.append(control)
        if waits:
            started = m.reg(f"e{number}_started", 1)
            go = m.all_of(waits) & ~started.q
            started.set(1, when=go)
            controls[0].start(go)
        done = m.reg(f"e{number}_done", 1)
        done.set(1, when=controls[-1].last)
        finished[engine.name] = done.q | controls[-1].last
        previous = finished[engine.name]
        done_flags.append(done.q)

    for ports in banks.values():
        for bank in ports:
            bank.close(m)

    all_done = m.all_of(done_flags)
    cycles = m.reg("cycles", CYCLE_BITS)
    cycles.set(cycles.q + 1, when=~all_done)
    m.output("done", all_done)
    m.output("cycles", cycles.q)
    _readout(m, region, banks)
    return m


def build_modules(region: Region) -> list[Operation]:
    """The nests' `fsm.machine`s and the finished top `hw.module`."""
    machines = Machines()
    module = build(region, machines).finish()
    name_dropped_low_bits(module.body.block)
    return [*machines.ops(), module]


def _readout(m: ModuleBuilder, region: Region, banks: dict[str, list[BankPorts]]) -> None:
    output_bits, bank_bits, row_bits = readout_fields(region)
    address = m.input("rd_addr", output_bits + bank_bits + row_bits)
    row, bank, output = (address[0:row_bits], address[row_bits:row_bits + bank_bits],
                         address[row_bits + bank_bits:])
    width = max(region.layouts[root].width for root in region.outputs)
    words = []
    for root in region.outputs:
        layout = region.layouts[root]
        words.append(m.select(bank, [p.memory.read(row).zext(width) for p in banks[layout.name]],
                              m.const(0, width)))
    m.output("rd_data", m.select(output, words, m.const(0, width)))
