"""Shared fixtures: kernel-format trees, stand-in qemu processes."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from kernel_trees import INTEL_2S, KernelOps, Topology, build_resctrl, build_sysfs  # noqa: E402

from ceilometer_cmt.testbed import StandInQemu  # noqa: E402


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

    def backend(self, **kw: object):  # type: ignore[no-untyped-def]
        from ceilometer_cmt.resctrl_backend import ResctrlBackend

        args: dict[str, object] = dict(sysfs_root=self.sysfs, proc_root="/proc",
                                       pid_dir=self.pid_dir, verify_mount=False, ops=self.ops)
        args.update(kw)
        return ResctrlBackend(self.resctrl, **args)  # type: ignore[arg-type]


def make_host(tmp: str, topo: Topology = INTEL_2S) -> FixtureHost:
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
