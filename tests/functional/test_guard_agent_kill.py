"""A real polling agent process killed with SIGKILL while the guard caps an
instance, on the FUSE simulator with stand-in qemu processes.

The agent is tests/support/reliability_agent.py (CacheMonitor over the
plugin's ResctrlBackend, real syscalls), run in lockstep with the
simulator's manual clock. The guard (not a dry run, direct writes) caps
the noisy instance; the agent is killed with SIGKILL mid-life and a new
one started: it adopts the monitor group under the cap group (no mkdir,
no rmdir, one group per instance), its samples go on, the cumulative MBM
meter stays monotonic across the kill, and ``cleanup --guard`` then
``cleanup`` leave nothing of ours.

Needs /dev/fuse, fusermount3 and libfuse3 (Debian fuse3, libfuse3-3) and root.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from ceilometer_cmt.backends.resctrl import fs
from ceilometer_cmt.cmd import cli
from ceilometer_cmt.cmd import guard as guard_cmd
from ceilometer_cmt.testing.wait import wait_until
from tests.functional.test_guard import (
    CACHETUNE,
    NEIGHBOUR,
    NOISY,
    PREFIX,
    SCENARIO,
    TUNED,
    Host,
    pytestmark,  # noqa: F401  (the same FUSE and root skip)
)
from tests.support.jsonl import whole_lines
from tests.support.paths import REPO, TESTS

CAP = f"{PREFIX}cap-25"
AGENT = str(TESTS / "support" / "reliability_agent.py")
#: as tests/functional/test_guard.py's loads, with memory traffic for MBM
LOADS: list[dict[str, Any]] = [
    {"name": "noisy", "timeline": [{"t": 0, "occupancy": {0: "60%"},
                                    "mbm_total": {0: 4_000_000}, "mbm_local": {0: 1_000_000}}]},
    {"name": "neighbour", "timeline": [{"t": 0, "occupancy": {0: "10%", 1: "10%"},
                                        "mbm_total": {0: 500_000, 1: 500_000}}]},
    {"name": "tuned", "timeline": [{"t": 0, "occupancy": {1: "60%"}}]},
]
REFS = [[i.uuid, i.domain_name] for i in (NOISY, NEIGHBOUR, TUNED)]


class TrafficHost(Host):
    """test_guard's host with memory traffic, no in-process backend, and the
    agent processes the test starts (killed at the end, pass or fail)."""

    agents: list[AgentProcess]

    def start(self) -> TrafficHost:
        self.agents = []
        self.start_simulator(LOADS)
        return self


class AgentProcess:
    """One reliability agent in lockstep: :meth:`cycle` lets it run one."""

    def __init__(self, h: Host, name: str) -> None:
        self.h = h
        self.out = os.path.join(h.tmp, f"{name}.jsonl")
        self.step = os.path.join(h.tmp, f"{name}.step")
        self.log = os.path.join(h.tmp, f"{name}.log")
        refs = os.path.join(h.tmp, "refs.json")
        with open(refs, "w", encoding="utf-8") as f:
            json.dump(REFS, f)
        cfg = os.path.join(h.tmp, f"{name}.json")
        with open(cfg, "w", encoding="utf-8") as f:
            json.dump({"root": h.root, "sysfs": h.sysfs, "pid_dir": h.pid_dir, "refs": refs,
                       "out": self.out, "step": self.step}, f)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, AGENT, cfg], env=env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.n = 0

    def lines(self) -> list[dict[str, Any]]:
        return whole_lines(self.out)

    def cycle(self) -> dict[str, Any]:
        with open(self.step + ".tmp", "w", encoding="utf-8") as f:
            f.write(f"{self.n + 1} {self.h.sim.state()['time']}\n")
        os.replace(self.step + ".tmp", self.step)

        def done() -> list[dict[str, Any]] | None:
            got = self.lines()
            return got if len(got) > self.n else None

        def exited() -> None:
            if self.proc.poll() is not None and len(self.lines()) <= self.n:
                with open(self.log, encoding="utf-8", errors="replace") as f:
                    raise AssertionError(f"agent exited with {self.proc.returncode}: {f.read()}")

        got = wait_until(done, what=f"agent cycle {self.n}", timeout=60, interval=0.01,
                         fail=exited)
        assert got is not None
        line = got[self.n]
        assert "error" not in line, line["error"]
        self.n += 1
        return line

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def host(tmp_path: Any) -> Iterator[TrafficHost]:
    h = TrafficHost(str(tmp_path / "h"), SCENARIO)
    try:
        yield h.start()
    finally:
        for a in getattr(h, "agents", []):
            a.kill()
        h.stop()


def noisy_groups(h: Host) -> dict[str, set[int]]:
    """control group -> tasks of the noisy instance's monitor group there."""
    return {ctrl: fs.read_tasks(os.path.join(fs.mon_groups_path(h.root, ctrl),
                                             PREFIX + NOISY.uuid))
            for ctrl, mons in fs.list_groups(h.root).items() if PREFIX + NOISY.uuid in mons}


def test_an_agent_killed_with_sigkill_while_capped_is_adopted(host: TrafficHost) -> None:
    h = host
    agents = h.agents
    h.tune()  # the hot third instance stays in libvirt's <cachetune> group
    noisy = set(h.qemus[0].tids)
    first = AgentProcess(h, "agent-1")
    agents.append(first)
    lines = [first.cycle()]
    assert lines[0]["unmonitored"] == {}
    with h.guard(policy={"cap_after": 1, "release_after": 100}) as guard:
        r = guard.cycle()
        assert [(a.kind, a.uuid) for a in r.actions] == [("cap", NOISY.uuid)]
        for _ in range(2):
            h.sim.advance(60)
            lines.append(first.cycle())
        before = noisy_groups(h)
        assert before[CAP] == noisy
        first.kill()  # SIGKILL: no close, its groups stay as they are
        assert first.proc.returncode == -signal.SIGKILL

        second = AgentProcess(h, "agent-2")
        agents.append(second)
        for _ in range(3):
            h.sim.advance(60)
            lines.append(second.cycle())
        after = lines[3:]
        # adopted: no monitor group made or removed, the same groups as before
        assert [(x["mkdirs"], x["rmdirs"]) for x in after] == [(0, 0)] * 3
        assert noisy_groups(h) == before
        assert h.tasks(CAP) >= noisy and not (h.tasks("") & noisy)
        assert all(x["removed_by_others"] == 0 and x["unmonitored"] == {} for x in after)
        # its samples go on: occupancy at about the cap, bandwidth counted
        for x in after:
            m = x["instances"][NOISY.uuid]
            assert m["occupancy"] is not None and m["mbm_total"] is not None
        assert h.percent(NOISY.uuid) == pytest.approx(25.0, abs=1.0)
        assert after[-1]["instances"][NOISY.uuid]["mbm_total_rate"] is not None
        # the cumulative meter is monotonic across the kill, and it grew
        totals = [x["instances"][NOISY.uuid]["mbm_total"] for x in lines]
        assert None not in totals and totals == sorted(totals), totals
        assert totals[-1] > totals[2]
        assert guard.cycle().actions == ()  # the guard sees nothing to change
        second.kill()

    # undone: the cap group, then the agent's groups; libvirt's stays
    conf = h.config()
    assert guard_cmd.cleanup([conf]) == 0
    assert cli.main(["cleanup", "--config-file", conf]) == 0
    assert h.ctrl_groups() == ["", CACHETUNE]
    assert not [m for mons in fs.list_groups(h.root).values() for m in mons
                if m.startswith(PREFIX)]
    assert noisy <= h.tasks("")
