"""The demo's simulated compute host, made in one temporary directory.

:class:`DemoHost` builds it: a sysfs cache tree of a preset topology, a
libvirt test-driver node file of Nova-like instances (some running, some shut
off), one stand-in qemu per running instance, the resctrl simulator (FUSE)
mounted with the :func:`scenario_for` workload in which one instance is a
noisy neighbour, and the agent's config (:func:`ceilometer_conf`) pointing at
all of that. :meth:`DemoHost.stop` kills, unmounts and removes it, and says
what, if anything, is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ceilometer_cmt.cmd.demo_guard import DemoGuard, guard_conf, noisy_shape
from ceilometer_cmt.cmd.demo_signals import uninterrupted
from ceilometer_cmt.linux import procfs
from ceilometer_cmt.testing.fakehost import (
    FakeInstance,
    StandInQemu,
    make_instances,
    write_node_xml,
)

#: the noisy neighbour's occupancy of its busiest domain, before and after the ramp
NOISY_FROM, NOISY_TO = 12.0, 42.0
HOST_NAME = "demo-compute"


def scenario_for(instances: Sequence[FakeInstance], noisy: FakeInstance,
                 domains: Sequence[int], ramp: float,
                 pids: Mapping[str, int] | None = None,
                 hot: Sequence[int] | None = None,
                 shape: Sequence[tuple[float, float]] | None = None) -> dict[str, Any]:
    """The simulator scenario: modest steady load everywhere, one noisy neighbour.

    Instance ``i`` lives mostly on domain ``domains[i % len(domains)]``; the
    noisy one on ``hot`` (default ``domains[0]``; with SNC every node of one L3,
    so that it fills that L3 as the plugin sees it), its occupancy ramping from
    ``NOISY_FROM`` to ``NOISY_TO`` percent of that domain over ``ramp`` seconds,
    or (``shape``) through the given (time, percent) points, repeated (the
    ``--guard`` story, :func:`ceilometer_cmt.cmd.demo_guard.noisy_shape`).
    Its bandwidth follows its occupancy.
    An instance's qemu is matched by its pid when ``pids`` (domain name -> pid)
    has it, else by ``guest=<domain name>,`` in its cmdline.
    """

    def match(inst: FakeInstance) -> dict[str, Any]:
        if pids and inst.domain_name in pids:
            return {"pid": pids[inst.domain_name]}
        return {"cmdline": f"guest={inst.domain_name},"}

    mib = 1024 * 1024
    processes = []
    quiet = [i for i in instances if i.running and i != noisy]
    for n, inst in enumerate(quiet):
        home = domains[(n + 1) % len(domains)]
        other = domains[n % len(domains)]
        point: dict[str, Any] = {
            "t": 0,
            "occupancy": {home: 1.5 * mib * (n + 1), other: 256 * 1024 if other != home else 0},
            "mbm_total": {home: 150 * mib * (n + 1), other: 20 * mib},
            "mbm_local": {home: 140 * mib * (n + 1)},
        }
        processes.append({"name": inst.display_name,
                          "match": match(inst),
                          "timeline": [point]})
    hot = list(hot or domains[:1])

    def each(value: Any) -> dict[int, Any]:
        return {d: value for d in hot}

    def loud_at(t: float, percent: float) -> dict[str, Any]:
        # 3 GiB/s at NOISY_FROM, 6 GiB/s at NOISY_TO; local 2800/3072 of it
        total = max(3 + 3 * (percent - NOISY_FROM) / (NOISY_TO - NOISY_FROM), 0.5) * 1024 * mib
        return {"t": t, "occupancy": each(f"{percent}%"),
                "mbm_total": each(round(total)), "mbm_local": each(round(total * 2800 / 3072))}

    loud: dict[str, Any] = {"name": noisy.display_name + " (noisy neighbour)",
                            "match": match(noisy)}
    if shape:
        loud |= {"timeline": [loud_at(t, pct) for t, pct in shape], "repeat": True}
    else:
        loud["timeline"] = ([loud_at(0, NOISY_FROM), loud_at(ramp, NOISY_TO)] if ramp > 0
                            else [loud_at(0, NOISY_TO)])
    processes.append(loud)
    return {
        "limbo_seconds": 1.0,
        "background": {"occupancy": {"*": 2 * mib}, "mbm_total": {"*": 50 * mib}},
        "processes": processes,
    }


def ceilometer_conf(*, node_xml: str, resctrl: str, sysfs: str, pid_dir: str,
                    log_config: str, extra: str = "") -> str:
    """The agent's config: ceilometer's [DEFAULT] plus the plugin's [cmt]
    (and ``extra`` sections: the guard's, with ``--guard``)."""
    return (
        "[DEFAULT]\n"
        f"host = {HOST_NAME}\n"
        f"libvirt_uri = test://{node_xml}\n"
        # the agent logs to the demo's directory only (see top.logging_conf)
        f"log_config_append = {log_config}\n"
        "[cmt]\n"
        "backend = resctrl\n"
        f"resctrl_root = {resctrl}\n"
        f"sysfs_root = {sysfs}\n"
        "proc_root = /proc\n"
        f"libvirt_pid_dir = {pid_dir}\n"
        # the simulator is recognised as such by the mount check: keep it on
        "resctrl_verify_mount = true\n"
        # the demo runs as whoever mounted the simulator: no privilege separation
        "privsep = never\n"
        + extra
    )


@dataclass
class DemoHost:
    """Everything the demo makes; :meth:`stop` removes all of it."""

    topology: str = "intel-2s"
    running: int = 4
    stopped: int = 1
    ramp: float = 30.0
    #: run the guard beside the agent (``--guard``): ``ramp`` is then the
    #: noisy neighbour's climb, and the scenario's clock moves ``step`` seconds a cycle
    guard: bool = False
    step: float = 1.0
    tmp_parent: str | None = None
    tmp: str | None = None
    instances: list[FakeInstance] = field(default_factory=list)
    noisy: FakeInstance | None = None
    qemus: list[StandInQemu] = field(default_factory=list)
    simulator: Any = None
    conf: str = ""
    log_file: str = ""
    mountpoint: str = ""
    cycles_done: int = 0
    demo_guard: DemoGuard | None = None
    _pids: list[int] = field(default_factory=list)

    def path(self, *parts: str) -> str:
        assert self.tmp is not None
        return os.path.join(self.tmp, *parts)

    def start(self) -> DemoHost:
        from ceilometer_cmt.simulator import Simulator
        from ceilometer_cmt.simulator.topology import get_topology

        with uninterrupted():
            self.tmp = tempfile.mkdtemp(prefix="cmt-demo-", dir=self.tmp_parent)
        topo = get_topology(self.topology)
        sysfs = self.path("sys")
        topo.write_sysfs(sysfs)
        pid_dir = self.path("run", "libvirt", "qemu")
        os.makedirs(pid_dir)
        self.instances = (make_instances(self.running)
                          + make_instances(self.stopped, running=False,
                                           start=self.running + 1))
        self.noisy = self.instances[1 if self.running > 1 else 0]
        node = write_node_xml(self.path("node.xml"), self.instances)
        # the stand-ins first: the scenario names their pids (a cmdline match
        # would also catch look-alike processes of anything else on this host)
        for inst in self.instances:
            if inst.running:
                with uninterrupted():  # every child is recorded before a stop can end us
                    q = StandInQemu(inst.domain_name, pid_dir, extra_threads=1)
                    self.qemus.append(q)
                    q.start()
                    self._pids.append(q.pid)
        pids = {q.domain_name: q.pid for q in self.qemus}
        scenario = self.path("scenario.json")
        doc = scenario_for(self.instances, self.noisy, [d.id for d in topo.mon_domains],
                           self.ramp, pids, [d.id for d in topo.domains_of(topo.l3[0].id)],
                           noisy_shape(self.ramp, NOISY_FROM) if self.guard else None)
        if self.guard:
            doc["clock"] = "manual"  # moved a step after each cycle (demo_guard)
        with open(scenario, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
        self.mountpoint = self.path("resctrl")
        os.mkdir(self.mountpoint)
        with uninterrupted():
            self.simulator = Simulator(self.mountpoint, self.topology, scenario)
            self.simulator.start()
            if self.simulator.pid is not None:
                self._pids.append(self.simulator.pid)
        from ceilometer_cmt.cmd.top import logging_conf

        self.log_file = self.path("agent.log")
        log_config = self.path("logging.conf")
        with open(log_config, "w", encoding="utf-8") as f:
            f.write(logging_conf(self.log_file))
        self.conf = self.path("ceilometer.conf")
        with open(self.conf, "w", encoding="utf-8") as f:
            f.write(ceilometer_conf(node_xml=node, resctrl=self.mountpoint, sysfs=sysfs,
                                    pid_dir=pid_dir, log_config=log_config,
                                    extra=guard_conf(self.path("guard.lock"))
                                    if self.guard else ""))
        if self.guard:
            self.demo_guard = DemoGuard(
                self.conf, {i.uuid: i.display_name for i in self.instances}, self.step,
                self.simulator)
            self.demo_guard.start()
        return self

    def describe(self) -> dict[str, Any]:
        return {
            "event": "start", "tmpdir": self.tmp, "mountpoint": self.mountpoint,
            "topology": self.topology, "config_file": self.conf, "host": HOST_NAME,
            "simulator_pid": self.simulator.pid if self.simulator else None,
            "qemu_pids": [q.pid for q in self.qemus if q.proc is not None],
            "noisy_neighbour": self.noisy.uuid if self.noisy else None,
            "ramp_seconds": self.ramp,
            **({"guard": self.demo_guard.describe()} if self.demo_guard else {}),
            "instances": [{"uuid": i.uuid, "name": i.display_name,
                           "domain_name": i.domain_name, "running": i.running,
                           "noisy": i == self.noisy} for i in self.instances],
        }

    def stop(self, keep_log: str | None = None) -> list[str]:
        """Kill, unmount, remove; returns what is still there (empty: all gone)."""
        errors: list[str] = []
        if self.demo_guard is not None:  # undo the caps while the host is up
            try:
                errors.extend(self.demo_guard.stop())
            except Exception as e:
                errors.append(f"guard: {e}")
        for q in self.qemus:
            try:
                q.stop()
            except Exception as e:
                errors.append(f"stand-in qemu {q.domain_name}: {e}")
        self.qemus.clear()
        if self.simulator is not None:
            try:
                self.simulator.stop()
            except Exception as e:
                errors.append(f"simulator: {e}")
            self.simulator = None
        if keep_log and self.log_file and os.path.exists(self.log_file):
            with contextlib.suppress(OSError):
                shutil.copyfile(self.log_file, keep_log)
        if self.tmp is not None:
            if self.mountpoint and _fstype(self.mountpoint) is not None:
                errors.append(f"{self.mountpoint} is still mounted; not removing {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
                if os.path.exists(self.tmp):
                    errors.append(f"{self.tmp} could not be removed")
                self.tmp = None
        for pid in self._pids:
            if procfs.alive(pid):
                errors.append(f"process {pid} is still running")
        return errors


def _fstype(mountpoint: str) -> str | None:
    from ceilometer_cmt.simulator import mount_fstype

    result: str | None = mount_fstype(mountpoint)
    return result
