"""Intel AET telemetry: the ``PERF_PKG`` resource of Linux 7.0.

Names and formats follow the kernel:

* one ``mon_data/mon_PERF_PKG_XX`` per physical package, two digits
  (``fs/resctrl/rdtgroup.c: mkdir_mondata_subdir()``, ``"mon_%s_%02d"``);
* the events of ``mon_event_all[]`` (``fs/resctrl/monitor.c``) in event-id
  order, which is also ``info/PERF_PKG_MON/mon_features``' order;
* ``core_energy`` (Joules) and ``activity`` (Farads) are fixed point with
  18 fraction bits (``arch/x86/kernel/cpu/resctrl/intel_aet.c``,
  ``energy_0x26696143``) and print as :func:`print_event_value` does
  (``fs/resctrl/ctrlmondata.c``), the other seven as ``%llu``;
* a CTRL_MON group reads its own RMID plus its MON groups'
  (``mon_event_count()``);
* the counters belong to the RMID, not the group: the kernel resets nothing
  for PERF_PKG events, so a group that gets a used RMID starts at the
  RMID's old counts (``intel_aet_read_event()`` only sums ``readq()``).

The numbers are a simulation: a load's busy CPUs (the scenario metric
``cpu``, else one busy CPU per GiB/s of ``mbm_total``) run at 2.2 GHz (ref
2.0 GHz), 1.5 W each; memory traffic per busy CPU lowers the IPC and raises
the LLC-miss stall share; the idle CPUs of a package are the root group's
(the idle task is in the default group) and sleep in C1 (30 %) and C6 (70 %).
Energy and cycles only grow; IPC stays within about 0.5 to 2.4, the stall
share below 0.6.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ceilometer_cmt.simulator.groups import Group
from ceilometer_cmt.simulator.scenario import Fault
from ceilometer_cmt.simulator.timeline import Timeline
from ceilometer_cmt.simulator.topology import PERF_PKG_EVENTS, Topology

EVENTS = PERF_PKG_EVENTS
#: ``is_floating_point`` events and their ``binary_bits`` ([AET] ``EVT(..., 18)``)
BINARY_BITS = {"core_energy": 18, "activity": 18}
#: ``decplaces[]`` of ctrlmondata.c: ceil(binary_bits * log10(2)), [0] = 1
DECPLACES = (1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 6, 6, 6, 7, 7, 7, 7, 8, 8,
             8, 9)

GIB = float(1 << 30)
CORE_HZ = 2.2e9
REF_HZ = 2.0e9
WATTS_BUSY = 1.5
WATTS_IDLE = 0.05
VOLTS = 0.85  # activity = energy / V**2


def print_event_value(binary_bits: int, val: int) -> str:
    """``print_event_value()``: the integer part, a point and
    ``decplaces[binary_bits]`` digits of the fraction rounded to nearest."""
    frac = 0
    if binary_bits:
        frac = val & ((1 << binary_bits) - 1)
        frac *= 10 ** DECPLACES[binary_bits]
        frac += 1 << (binary_bits - 1)
        frac >>= binary_bits
    frac &= (1 << 64) - 1  # unsigned long long
    return f"{val >> binary_bits}.{frac:0{DECPLACES[binary_bits]}d}\n"


def _rates(busy: float, traffic: float) -> dict[str, float]:
    """Counts per second of ``busy`` CPUs moving ``traffic`` bytes/s."""
    intensity = traffic / (busy * GIB) if busy > 0 else 0.0
    cycles = busy * CORE_HZ
    energy = busy * WATTS_BUSY
    return {
        "core_energy": energy,
        "activity": energy / VOLTS**2,
        "unhalted_core_cycles": cycles,
        "unhalted_ref_cycles": busy * REF_HZ,
        "uops_retired": cycles * 2.4 / (1 + intensity),
        "stalls_llc_miss": cycles * 0.6 * intensity / (1 + intensity),
        "stalls_llc_hit": cycles * 0.1 / (1 + intensity),
        "c1_res": busy * REF_HZ * 0.02,  # short idles between work
        "c6_res": 0.0,
    }


class PackageMeter:
    """The PERF_PKG counters of every RMID in every package."""

    def __init__(self, topology: Topology) -> None:
        self.packages = {p.id: p for p in topology.packages}
        cpu_pkg = {c: p.id for p in topology.packages for c in p.cpus}
        #: monitoring domain -> package (the package of its first CPU)
        self.dom_pkg = {d.id: cpu_pkg[d.cpus[0]] for d in topology.mon_domains
                        if d.cpus and d.cpus[0] in cpu_pkg}
        #: (rmid, package, event) -> count (Joules and Farads for the fixed-point ones)
        self.values: dict[tuple[int, int, str], float] = {}

    def _add(self, rmid: int, pkg: int, rates: dict[str, float], seconds: float) -> None:
        for event, rate in rates.items():
            key = (rmid, pkg, event)
            self.values[key] = self.values.get(key, 0.0) + rate * seconds

    def integrate(
        self, attributions: Iterable[tuple[Group, float, Timeline]], t0: float, t1: float
    ) -> None:
        """Add the counts of ``[t0, t1]``: each load on its group's RMID, the
        idle CPUs on RMID 0."""
        if not self.packages or t1 <= t0:
            return
        span = t1 - t0
        busy_total = dict.fromkeys(self.packages, 0.0)
        for group, share, timeline in attributions:
            has_cpu = timeline.has("cpu")
            for pkg in self.packages:
                doms = [d for d, p in self.dom_pkg.items() if p == pkg]
                traffic = share * sum(timeline.integral("mbm_total", d, t0, t1) for d in doms)
                if has_cpu:
                    busy = share * sum(timeline.integral("cpu", d, t0, t1) for d in doms)
                else:
                    busy = traffic / GIB
                busy = min(busy, len(self.packages[pkg].cpus) * span)  # CPU-seconds
                busy_total[pkg] += busy
                if busy > 0:
                    self._add(group.rmid, pkg, _rates(busy / span, traffic / span), span)
        for pkg, package in self.packages.items():
            idle = max(0.0, len(package.cpus) * span - busy_total[pkg]) / span
            energy = idle * WATTS_IDLE
            self._add(0, pkg, {
                "core_energy": energy, "activity": energy / VOLTS**2,
                "c1_res": idle * REF_HZ * 0.3, "c6_res": idle * REF_HZ * 0.7,
            }, span)

    def raw(self, rmid: int, pkg: int, event: str) -> int:
        """The register value: fixed point for core_energy and activity."""
        value = self.values.get((rmid, pkg, event), 0.0)
        return int(value * (1 << BINARY_BITS.get(event, 0)))

    def text(self, faults: Sequence[Fault], t: float, group: Group, pkg: int, event: str) -> str:
        """``mon_data/mon_PERF_PKG_XX/<event>`` of ``group`` at ``t``."""
        rmids = [group, *group.children.values()] if group.kind == "ctrl" else [group]
        values: list[int | str] = []
        for g in rmids:
            fault = next((f for f in faults if f.applies(g.path, pkg, event, t)), None)
            values.append(fault.value if fault else self.raw(g.rmid, pkg, event))
        numbers = [v for v in values if isinstance(v, int)]
        if not numbers:
            return f"{values[0]}\n"
        total = sum(numbers)
        if event in BINARY_BITS:
            return print_event_value(BINARY_BITS[event], total)
        return f"{total}\n"
