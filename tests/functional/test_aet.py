"""Intel AET telemetry (Linux 7.0 PERF_PKG) through the real simulator over FUSE:
the resctrl backend and the monitor give the four telemetry meters with the
values the simulated load implies, over polling cycles.

Needs /dev/fuse, fusermount3 and libfuse3 (Debian fuse3, libfuse3-3) and root.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ceilometer_cmt import meters
from ceilometer_cmt.backends.resctrl.backend import ResctrlBackend
from ceilometer_cmt.monitor import CacheMonitor, InstanceMeters
from ceilometer_cmt.readings import InstanceRef
from ceilometer_cmt.simulator import Simulator
from tests.support.fuse import needs_fuse_root

pytestmark = needs_fuse_root

PREFIX = "ceilometer-"
U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"
NAMES = {U1: "instance-00000001", U2: "instance-00000002"}
TELEMETRY = (meters.ENERGY_CORE, meters.POWER_CORE, meters.CPU_IPC,
             meters.CACHE_LLC_MISS_STALL_RATIO)


def values(m: InstanceMeters) -> dict[str, Any]:
    """What the telemetry pollsters publish for ``m`` (None: no sample)."""
    return {t.name: getattr(m, t.field) for t in TELEMETRY}


@pytest.fixture
def aet_host(simulated_host: Any) -> Callable[[dict[str, Any]], tuple[Simulator, str, str]]:
    """(simulator of preset intel-aet, sysfs root, libvirt pid dir) for a scenario."""
    def make(scenario: dict[str, Any]) -> tuple[Simulator, str, str]:
        return simulated_host("intel-aet", scenario, NAMES.values(), extra_threads=2)
    return make


def test_telemetry_meters_over_polling_cycles(aet_host: Any) -> None:
    sim, sysfs, pid_dir = aet_host({"processes": [
        # 2 busy CPUs on package 0 moving 1 GiB/s: 3 W, IPC 2.4/1.5, stall share 0.2
        {"match": {"cmdline": f"guest={NAMES[U1]},"}, "timeline": [
            {"t": 0, "cpu": {0: 2}, "occupancy": {0: "8MiB"}, "mbm_total": {0: "1GiB"}}]},
        # 0.5 GiB/s on package 1 and no cpu figure: half a busy CPU, 0.75 W,
        # IPC 2.4/2, stall share 0.3
        {"match": {"cmdline": f"guest={NAMES[U2]},"}, "timeline": [
            {"t": 0, "occupancy": {1: "2MiB"}, "mbm_total": {1: "512MiB"}}]},
    ]})
    backend = ResctrlBackend(sim.mountpoint, sysfs_root=sysfs, pid_dir=pid_dir, prefix=PREFIX)
    now = [0.0]
    mon = CacheMonitor(backend, clock=lambda: now[0])
    refs = [InstanceRef(u, n) for u, n in NAMES.items()]

    def tick(seconds: float = 60.0) -> None:
        sim.advance(seconds)
        now[0] += seconds

    try:
        # the group limit is PERF_PKG_MON's 576, not L3_MON's 1024
        assert mon.host_cache.monitors_total == 576
        first = mon.poll(refs)
        assert first.unmonitored == {}
        # first cycle: the energy baseline, no rate or ratio yet
        for u in NAMES:
            assert values(first.instances[u]) == {
                "energy.core": 0.0, "power.core": None, "cpu.ipc": None,
                "cache.llc.miss.stall.ratio": None}
        tick()
        second = mon.poll(refs)
        one, two = values(second.instances[U1]), values(second.instances[U2])
        assert one["energy.core"] == pytest.approx(180.0, rel=1e-4)  # 3 W x 60 s
        assert one["power.core"] == pytest.approx(3.0, rel=1e-4)
        assert one["cpu.ipc"] == pytest.approx(1.6, rel=1e-4)
        assert one["cache.llc.miss.stall.ratio"] == pytest.approx(0.2, rel=1e-4)
        assert two["energy.core"] == pytest.approx(45.0, rel=1e-4)
        assert two["power.core"] == pytest.approx(0.75, rel=1e-4)
        assert two["cpu.ipc"] == pytest.approx(1.2, rel=1e-4)
        assert two["cache.llc.miss.stall.ratio"] == pytest.approx(0.3, rel=1e-4)
        # the L3 meters are there as before
        assert second.instances[U1].occupancy and second.instances[U1].mbm_total_rate

        # a package without valid data: no energy and no power (never 0 nor
        # a partial sum); the counters and the other instance go on
        sim.fault(group=f"mon_groups/{PREFIX}{U1}", domain=0, event="core_energy",
                  value="Unavailable")
        tick()
        third = mon.poll(refs)
        one = values(third.instances[U1])
        assert one["energy.core"] is None and one["power.core"] is None
        assert one["cpu.ipc"] == pytest.approx(1.6, rel=1e-4)
        assert values(third.instances[U2])["power.core"] == pytest.approx(0.75, rel=1e-4)
        sim.clear_faults()
        tick()
        fourth = values(mon.poll(refs).instances[U1])
        # the energy of the faulted interval was not lost; no power across the gap
        assert fourth["energy.core"] == pytest.approx(540.0, rel=1e-4)
        assert fourth["power.core"] is None
        tick()
        fifth = values(mon.poll(refs).instances[U1])
        assert fifth["energy.core"] == pytest.approx(720.0, rel=1e-4)
        assert fifth["power.core"] == pytest.approx(3.0, rel=1e-4)
    finally:
        mon.close()
