"""Fixtures of the functional tests that mount the resctrl simulator."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ceilometer_cmt.simulator import Simulator, mount_fstype


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
