"""Fixtures of the functional tests that mount the resctrl simulator."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from ceilometer_cmt.simulator import Simulator, mount_fstype
from ceilometer_cmt.simulator.topology import get_topology
from ceilometer_cmt.testing.fakehost import StandInQemu


@pytest.fixture
def procs() -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Start real processes (``sleep``) to move into groups; all killed after."""
    started: list[subprocess.Popen[bytes]] = []

    def _start() -> subprocess.Popen[bytes]:
        p = subprocess.Popen(["sleep", "300"])
        started.append(p)
        return p

    yield _start
    for p in started:
        p.kill()
        p.wait()


@pytest.fixture
def sim(tmp_path: Any) -> Iterator[Callable[..., Simulator]]:
    """Start simulators under ``tmp_path``; each stopped and checked unmounted."""
    sims: list[Simulator] = []

    def _sim(topology: str = "intel-2s", scenario: Any = None, **kw: Any) -> Simulator:
        s = Simulator(str(tmp_path / f"resctrl{len(sims)}"), topology, scenario, **kw)
        sims.append(s)
        return s.start()

    yield _sim
    for s in sims:
        s.stop()
        assert mount_fstype(s.mountpoint) is None


@pytest.fixture
def simulated_host(tmp_path: Any) -> Iterator[Callable[..., tuple[Simulator, str, str]]]:
    """Make a simulated compute host: the simulator of ``preset`` on a manual
    clock with no RMID limbo, its sysfs cache tree, and one stand-in qemu per
    domain name in a libvirt pid directory; (simulator, sysfs root, pid dir).
    Everything is stopped and unmounted after the test."""
    sims: list[Simulator] = []
    qemus: list[StandInQemu] = []

    def make(preset: str, scenario: dict[str, Any], domain_names: Iterable[str], *,
             extra_threads: int = 1,
             cpus: set[int] | None = None) -> tuple[Simulator, str, str]:
        sysfs = str(tmp_path / "sys")
        get_topology(preset).write_sysfs(sysfs)
        pid_dir = str(tmp_path / "run")
        os.makedirs(pid_dir)
        sim = Simulator(str(tmp_path / "resctrl"), preset,
                        {"clock": "manual", "limbo_seconds": 0, **scenario})
        sims.append(sim)
        sim.start()
        for name in domain_names:
            qemus.append(StandInQemu(name, pid_dir, extra_threads=extra_threads,
                                     cpus=cpus).start())
        return sim, sysfs, pid_dir

    yield make
    for q in qemus:
        q.stop()
    for s in sims:
        s.stop()
        assert mount_fstype(s.mountpoint) is None
