"""Shared fixtures: kernel-format trees, stand-in qemu processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ceilometer_cmt.simulator.topology import Topology, get_topology
from ceilometer_cmt.testing.fakehost import StandInQemu
from ceilometer_cmt.testing.kernel_trees import KernelOps, build_resctrl, build_sysfs


@dataclass
class FixtureHost:
    root: str
    sysfs: str
    resctrl: str
    pid_dir: str
    topo: Topology
    ops: KernelOps
    qemus: list[StandInQemu]

    def start_qemu(self, domain_name: str, extra_threads: int = 0) -> StandInQemu:
        q = StandInQemu(domain_name, self.pid_dir, extra_threads=extra_threads).start()
        self.qemus.append(q)
        return q

    def cloud(self, running: int, stopped: int = 0, *, host_name: str = "compute-1",
              extra_threads: int = 1) -> tuple[list, list, str]:  # type: ignore[type-arg]
        """A libvirt test-driver host (Nova metadata) with stand-in qemus for the
        running instances, and an agent config pointing [cmt] at this tree.
        Returns (running, stopped, config file)."""
        from ceilometer_cmt.testing.fakehost import make_instances, write_node_xml

        up = make_instances(running)
        down = make_instances(stopped, running=False, start=running + 1)
        node = write_node_xml(os.path.join(self.root, "node.xml"), up + down)
        for inst in up:
            self.start_qemu(inst.domain_name, extra_threads=extra_threads)
        conf = os.path.join(self.root, "ceilometer.conf")
        with open(conf, "w") as f:
            f.write(f"[DEFAULT]\nhost = {host_name}\nlibvirt_uri = test://{node}\n"
                    f"[cmt]\nresctrl_root = {self.resctrl}\nsysfs_root = {self.sysfs}\n"
                    f"libvirt_pid_dir = {self.pid_dir}\nresctrl_verify_mount = false\n"
                    "privsep = never\n")
        return up, down, conf

    def backend(self, **kw: object):  # type: ignore[no-untyped-def]
        from ceilometer_cmt.backends.resctrl.backend import ResctrlBackend

        args: dict[str, object] = dict(sysfs_root=self.sysfs, proc_root="/proc",
                                       pid_dir=self.pid_dir, verify_mount=False, ops=self.ops)
        args.update(kw)
        return ResctrlBackend(self.resctrl, **args)  # type: ignore[arg-type]


def make_host(tmp: str, topo: Topology | None = None) -> FixtureHost:
    """Fixture trees of ``topo`` (default: the simulator's ``intel-2s``)."""
    topo = topo or get_topology("intel-2s")
    sysfs = build_sysfs(os.path.join(tmp, "sys"), topo)
    rc = build_resctrl(os.path.join(tmp, "resctrl"), topo)
    pid_dir = os.path.join(tmp, "run")
    os.makedirs(pid_dir)
    return FixtureHost(tmp, sysfs, rc, pid_dir, topo, KernelOps(rc, topo), [])


@pytest.fixture
def host(tmp_path) -> Iterator[FixtureHost]:  # type: ignore[no-untyped-def]
    h = make_host(str(tmp_path))
    try:
        yield h
    finally:
        for q in h.qemus:
            q.stop()
