"""A simulated compute host for a real ``ceilometer-polling``, of any simulator preset.

One Nova instance in a libvirt test-driver node, its stand-in qemu process,
the resctrl simulator (FUSE) of the chosen topology with the matching sysfs
cache tree, and the ``[DEFAULT]``/``[cmt]`` options that point the agent at
them. Everything is stopped and removed on exit, pass or fail.

The simulator is the oracle: :meth:`FakeCompute.instance_group` and
:meth:`FakeCompute.read` read its files directly, never through the plugin.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import services
import yaml

from ceilometer_cmt.linux.sysfs_cache import read_cache_domains
from ceilometer_cmt.testing.fakehost import (
    FakeInstance,
    StandInQemu,
    make_instances,
    write_node_xml,
)

REPO = Path(__file__).resolve().parents[2]
HIGH, LOW = 45, 5  # percent of L3 domain 0 the simulated instance occupies
NEIGHBOUR_LOAD = 10  # percent of L3 domain 0 each neighbour occupies
SWITCH_AT = 100_000  # simulated second where the instance drops from HIGH to LOW


@dataclass(frozen=True)
class HostSpec:
    """What a simulated compute host imitates.

    ``number`` picks the instance's deterministic uuid, so that each host's
    instance is its own Gnocchi resource; ``load`` adds timeline metrics to
    the instance's first point (e.g. ``cpu`` busy CPUs for the PERF_PKG
    telemetry). ``clock`` "manual" ticks one simulated second per second
    until a test jumps it (:meth:`FakeCompute.drop_occupancy`); "wall" is
    real time, for rates the agent divides by its own clock. ``neighbours``
    more instances share L3 domain 0, each at :data:`NEIGHBOUR_LOAD` percent
    (the guard caps only an instance with a neighbour).
    """

    topology: str
    host: str
    number: int
    clock: str = "manual"
    load: Mapping[str, Mapping[int, Any]] = field(default_factory=dict)
    neighbours: int = 0


INTEL_2S = HostSpec("intel-2s", "cmt-e2e-compute", 7)


@dataclass
class FakeCompute:
    spec: HostSpec
    instance: FakeInstance
    qemu: StandInQemu
    agent_options: dict[str, dict[str, object]]
    simulator: Any
    topology: Any
    resctrl: Path
    l3_bytes: int
    #: the neighbours' instances and stand-in qemus (``spec.neighbours``)
    neighbours: list[tuple[FakeInstance, StandInQemu]] = field(default_factory=list)
    #: the libvirt test-driver node listing every instance
    node: str = ""
    base: Path | None = None

    def drop_occupancy(self) -> None:
        """Jump the simulated clock past SWITCH_AT: the instance falls to LOW percent."""
        self.simulator.advance(SWITCH_AT)

    def instance_group(self) -> Path | None:
        """The monitor group (under ``mon_groups/``) the instance's main thread is in."""
        pid = str(self.qemu.pid)
        for group in (self.resctrl / "mon_groups").iterdir():
            with contextlib.suppress(OSError):
                if pid in (group / "tasks").read_text().split():
                    return group
        return None

    def read(self, group: Path, resource: str, event: str) -> float:
        """``event`` of ``group`` summed over the ``mon_<resource>_XX`` domains."""
        return sum(float(d.joinpath(event).read_text())
                   for d in sorted((group / "mon_data").glob(f"mon_{resource}_*")))

    def info(self, resource: str, name: str) -> str:
        return (self.resctrl / "info" / resource / name).read_text().strip()


@contextlib.contextmanager
def fake_compute(spec: HostSpec = INTEL_2S) -> Iterator[FakeCompute]:
    from ceilometer_cmt.simulator.runner import Simulator, fuse_missing_reason
    from ceilometer_cmt.simulator.topology import get_topology

    reason = fuse_missing_reason()
    if reason:
        pytest.skip(f"resctrl simulator unavailable: {reason}")
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        base = Path(stack.enter_context(services.public_workdir(f"cmt-e2e-{spec.topology}-")))
        instance, *others = make_instances(1 + spec.neighbours, start=spec.number)
        node = write_node_xml(str(base / "node.xml"), [instance, *others])
        topology = get_topology(spec.topology)
        topology.write_sysfs(str(base / "sys"))
        qemu = StandInQemu(instance.domain_name, str(base / "run"), extra_threads=1).start()
        stack.callback(qemu.stop)
        neighbours = []
        for other in others:
            neighbours.append((other, StandInQemu(other.domain_name, str(base / "run"),
                                                  extra_threads=1).start()))
            stack.callback(neighbours[-1][1].stop)
        scenario = {"clock": spec.clock, "processes": [{
            "name": "vm", "match": {"cmdline": f"guest={instance.domain_name}"},
            "interpolate": "step", "timeline": [
                {"t": 0, "occupancy": {0: f"{HIGH}%"}, "mbm_total": {0: "1GiB"},
                 "mbm_local": {0: "768MiB"}, **spec.load},
                {"t": SWITCH_AT, "occupancy": {0: f"{LOW}%"}},
            ]}] + [{"name": f"neighbour-{n}", "match": {"cmdline": f"guest={o.domain_name}"},
                    "timeline": [{"t": 0, "occupancy": {0: f"{NEIGHBOUR_LOAD}%"}}]}
                   for n, o in enumerate(others)]}
        resctrl = base / "resctrl"
        simulator = Simulator(str(resctrl), spec.topology, scenario).start()
        stack.callback(simulator.stop)

        if spec.clock == "manual":
            def tick() -> None:
                while not stop.wait(1.0):
                    with contextlib.suppress(Exception):
                        simulator.advance(1)

            ticker = threading.Thread(target=tick, name="sim-clock", daemon=True)
            ticker.start()
            stack.callback(ticker.join, 5)
            stack.callback(stop.set)
        l3_bytes = sum(d.size for d in read_cache_domains(str(base / "sys")))
        yield FakeCompute(
            spec=spec, instance=instance, qemu=qemu, simulator=simulator, topology=topology,
            resctrl=resctrl, l3_bytes=l3_bytes, neighbours=neighbours, node=node, base=base,
            agent_options={
                "DEFAULT": {"host": spec.host, "libvirt_uri": f"test://{node}"},
                "cmt": {"resctrl_root": resctrl, "sysfs_root": base / "sys",
                        "libvirt_pid_dir": base / "run", "privsep": "never"},
            })
    assert not os.path.exists(base), f"{base} left behind"


def shipped_polling_yaml(cache_interval: int, host_interval: int) -> str:
    """etc/polling.yaml as shipped, with test-sized intervals."""
    data = yaml.safe_load((REPO / "etc" / "polling.yaml").read_text())
    intervals = {"cmt_cache": cache_interval, "cmt_host": host_interval}
    for source in data["sources"]:
        source["interval"] = intervals[source["name"]]
    return yaml.safe_dump(data)
