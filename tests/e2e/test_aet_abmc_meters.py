"""The Linux 6.18/7.0 resctrl meters through the real stack into Gnocchi.

A real ``ceilometer-polling`` with this plugin runs on the resctrl simulator's
``intel-aet`` preset (Intel AET, ``PERF_PKG``: per-instance energy, power,
IPC) and on its ``amd-abmc`` preset (booted in ``mbm_event`` mode, 8
assignable MBM counters per L3 domain: the host's counter meters). The
samples go over RabbitMQ to ceilometer-agent-notification, which publishes
them to Gnocchi with the merged ``ceilometer-cmt gnocchi-resources`` map and,
in the same sink, to a JSON file (the sample metadata Gnocchi does not keep).

The expected values come from the simulator's own files, read directly (the
instance's monitor group found by its tasks), never from the plugin.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import services
from gnocchi_measures import GRANULARITY, measures, metric_of, wait_measures
from services import PollingAgent, Stack, wait_for
from simulated_host import FakeCompute, HostSpec, fake_compute, shipped_polling_yaml

CACHE_INTERVAL, HOST_INTERVAL = 5, 10  # s, the two sources of etc/polling.yaml
# busy CPUs per package (= L3 domain on intel-aet): one each; the 1 GiB/s of
# domain 0 lowers package 0's IPC to 1.2 against package 1's 2.4, so the
# instance's IPC (1.8) is a mix of two packages that either package alone
# misses by a third, and its power (3 W) half of it
INTEL_AET = HostSpec("intel-aet", "cmt-e2e-aet", 8, clock="wall", load={"cpu": {0: 1, 1: 1}})
AMD_ABMC = HostSpec("amd-abmc", "cmt-e2e-abmc", 9, clock="wall")
COUNTER_METERS = ("memory.bandwidth.counters.total", "memory.bandwidth.counters.available")


@contextlib.contextmanager
def polling(st: Stack, compute: FakeCompute) -> Iterator[PollingAgent]:
    """ceilometer-polling on ``compute``; its log and the stack's on failure."""
    with st.diagnostics(), services.ceilometer_polling(
            st.rabbit, shipped_polling_yaml(CACHE_INTERVAL, HOST_INTERVAL),
            compute.agent_options) as agent:
        try:
            yield agent
        except BaseException:
            print(services.tail(agent.daemon.log, 60))
            raise


def instance_group(compute: FakeCompute) -> Path:
    group: Path = wait_for("the agent to put the instance in a monitor group",
                           compute.instance_group, 30, interval=0.5)
    return group


def published(st: Stack, meter: str, resource_id: str, count: int = 1,
              timeout: float = 60) -> list[dict[str, Any]]:
    """At least ``count`` samples of ``meter`` on ``resource_id``, as published."""
    found: list[dict[str, Any]] = wait_for(
        f"{count} published sample(s) of {meter} on {resource_id}",
        lambda: (got if len(got := st.ceilometer.published(meter, resource_id)) >= count
                 else None), timeout, interval=1)
    return found


def seconds(sample: dict[str, Any]) -> float:
    return datetime.fromisoformat(sample["timestamp"]).timestamp()


def bucket_mean(samples: list[dict[str, Any]], bucket: float) -> float | None:
    """The mean volume of the samples in the 5-minute bucket starting at ``bucket``."""
    inside = [s["volume"] for s in samples
              if bucket <= seconds(s) < bucket + GRANULARITY]
    return sum(inside) / len(inside) if inside else None


def gnocchi_agrees(st: Stack, resource_type: str, resource_id: str,
                   meter: str) -> list[Any] | None:
    """Gnocchi's newest mean point of ``meter`` when it is the mean of the
    published samples of its bucket (None until metricd has them all)."""
    with contextlib.suppress(services.ServiceError):
        points = measures(st, resource_type, resource_id, meter)
        if points:
            start = datetime.fromisoformat(points[-1][0]).timestamp()
            expected = bucket_mean(st.ceilometer.published(meter, resource_id), start)
            if expected is not None and points[-1][2] == pytest.approx(expected):
                return points[-1]
    return None


def test_intel_aet_energy_power_and_ipc_reach_gnocchi(stack: Stack) -> None:
    st = stack
    with fake_compute(INTEL_AET) as compute, polling(st, compute):
        vm, host = compute.instance.uuid, INTEL_AET.host
        assert compute.info("PERF_PKG_MON", "mon_features").split()[0] == "core_energy"

        # the oracle: the simulator's counters of the instance, over two reads
        group = instance_group(compute)
        events = ("core_energy", "uops_retired", "unhalted_core_cycles")
        t0, before = time.monotonic(), {e: compute.read(group, "PERF_PKG", e) for e in events}
        time.sleep(3)
        t1, after = time.monotonic(), {e: compute.read(group, "PERF_PKG", e) for e in events}
        delta = {e: after[e] - before[e] for e in events}
        watts = delta["core_energy"] / (t1 - t0)
        ipc = delta["uops_retired"] / delta["unhalted_core_cycles"]
        assert watts > 1 and 0.5 < ipc < 2.4, (watts, ipc)  # the load is there

        # Gnocchi: each meter on the instance resource, its unit and policy
        expected = {"energy.core": ("J", "ceilometer-low-rate"),
                    "power.core": ("W", "ceilometer-cmt-low"),
                    "cpu.ipc": ("uop/cycle", "ceilometer-cmt-low"),
                    "cache.llc.miss.stall.ratio": ("ratio", "ceilometer-cmt-low")}
        for meter in expected:
            wait_measures(st, "instance", vm, meter)
        for meter, (unit, policy) in expected.items():
            metric = metric_of(st, "instance", vm, meter)
            assert (metric["unit"], metric["archive_policy"]["name"]) == (unit, policy), meter
        resource = st.gnocchi.get(f"/v1/resource/instance/{vm}")
        assert (resource["display_name"], resource["host"]) == (
            compute.instance.display_name, host)

        # the values, as the simulator counts them, within the jitter of reading
        # on a wall clock: each file is read at a slightly different instant,
        # and the agent divides energy by its own cycle time. On a loaded
        # two-core machine the reads of one cycle spread over up to ~0.5 s of
        # a 5 s interval (an IPC 9 % off was seen), so 15 %; summing one
        # package only would be 33 % off the IPC, 50 % off the power.
        point = wait_for("Gnocchi's cpu.ipc to be the published mean",
                         lambda: gnocchi_agrees(st, "instance", vm, "cpu.ipc"), 60, interval=1)
        assert point[2] == pytest.approx(ipc, rel=0.15)
        point = wait_for("Gnocchi's power.core to be the published mean",
                         lambda: gnocchi_agrees(st, "instance", vm, "power.core"), 60,
                         interval=1)
        assert point[2] == pytest.approx(watts, rel=0.15)

        # energy, cumulative in joules: never decreasing, growing at the power
        # the simulator gives; Gnocchi's rate of it is positive
        energy = sorted(published(st, "energy.core", vm, count=3), key=seconds)
        volumes = [s["volume"] for s in energy]
        assert volumes == sorted(volumes) and volumes[-1] > volumes[0], volumes
        first, last = energy[0], energy[-1]
        joules_per_s = ((last["volume"] - first["volume"])
                        / (seconds(last) - seconds(first)))
        assert joules_per_s == pytest.approx(watts, rel=0.1)
        assert {s["unit"] for s in energy} == {"J"}
        assert {s["type"] for s in energy} == {"cumulative"}
        rate = wait_for("a positive rate:mean of energy.core", lambda: [
            p for p in measures(st, "instance", vm, "energy.core", "rate:mean") if p[2] > 0],
            60, interval=1)
        assert rate[-1][2] == pytest.approx(watts * CACHE_INTERVAL, rel=0.5)

        # not in mbm_event mode ([default]): no counter meters for this host
        assert compute.info("L3_MON", "mbm_assign_mode").splitlines()[0] == "[default]"
        published(st, "cache.size", host, count=2)  # two host cycles went by
        for meter in COUNTER_METERS:
            assert st.ceilometer.published(meter, host) == [], meter


def domains(text: str) -> dict[str, int]:
    """``0=8;1=8`` (num_mbm_cntrs, available_mbm_cntrs) -> {"0": 8, "1": 8}."""
    return {d: int(n) for d, n in (part.split("=") for part in text.split(";"))}


def test_amd_abmc_counter_meters_reach_gnocchi(stack: Stack) -> None:
    st = stack
    with fake_compute(AMD_ABMC) as compute, polling(st, compute):
        vm, host = compute.instance.uuid, AMD_ABMC.host
        assert compute.info("L3_MON", "mbm_assign_mode").splitlines()[0] == "[mbm_event]"
        num = domains(compute.info("L3_MON", "num_mbm_cntrs"))
        assert num == {"0": 8, "1": 8}  # 8 counters per L3 domain, 2 domains

        # the instance is monitored and holds a counter: bandwidth reaches Gnocchi
        group = instance_group(compute)
        assignments = (group / "mbm_L3_assignments").read_text()
        assert "mbm_total_bytes:" in assignments and "=e" in assignments, assignments
        wait_for("a positive rate:mean of memory.bandwidth.total.bytes", lambda: any(
            p[2] > 0 for p in measures(st, "instance", vm, "memory.bandwidth.total.bytes",
                                       "rate:mean")), 60, interval=1)

        # the host meters: Gnocchi's mean is exactly what was published
        for meter in COUNTER_METERS:
            wait_for(f"Gnocchi's {meter} to be the published mean",
                     lambda m=meter: gnocchi_agrees(st, "host", host, m), 60, interval=1)
            metric = metric_of(st, "host", host, meter)
            assert metric["unit"] == "counter", meter
        assert st.gnocchi.get(f"/v1/resource/host/{host}")["host_name"] == host
        assert measures(st, "host", host, COUNTER_METERS[0])[-1][2] == 16.0

        # each sample: the sum over the domains, each domain in the metadata, as
        # the simulator's files say (no instance comes or goes: they hold still)
        total = published(st, COUNTER_METERS[0], host)[-1]
        assert total["volume"] == sum(num.values()) == 16
        assert total["resource_metadata"]["counter_domains"] == num
        available = domains(compute.info("L3_MON", "available_mbm_cntrs"))
        assert sum(available.values()) < 16  # the root group's and the instance's
        last = published(st, COUNTER_METERS[1], host)[-1]
        assert last["volume"] == sum(available.values())
        assert last["resource_metadata"]["counter_domains"] == available
        assert {s["unit"] for s in st.ceilometer.published(
            COUNTER_METERS[1], host)} == {"counter"}

        # no PERF_PKG on this host: no energy
        published(st, "cache.occupancy", vm, count=2)
        assert st.ceilometer.published("energy.core", vm) == []
