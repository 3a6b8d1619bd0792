"""``ceilometer-cmt demo`` as a real subprocess: samples, noisy neighbour, cleanup.

Each run gets its own TMPDIR, so "temp dirs are gone" means that directory
is empty afterwards (the demo's, the simulator's and pollrun's temp dirs all
go there).
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ceilometer_cmt.backends.resctrl.fs import SIMULATOR_FSTYPE as FSTYPE
from ceilometer_cmt.cmd.demo import fuse_problem
from ceilometer_cmt.cmd.demo_guard import noisy_shape
from ceilometer_cmt.cmd.demo_host import NOISY_FROM
from ceilometer_cmt.simulator.timeline import Point, Timeline
from ceilometer_cmt.testing.fakehost import StandInQemu
from tests.support.procutil import alive, processes_mentioning

pytestmark = pytest.mark.skipif(fuse_problem() is not None,
                                reason=f"no FUSE here: {fuse_problem()}")


def demo_argv(*args: str) -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "ceilometer-cmt")
    base = [script] if os.access(script, os.X_OK) else [sys.executable, "-m",
                                                        "ceilometer_cmt.cmd.cli"]
    return [*base, "demo", *args]


PR_SET_CHILD_SUBREAPER = 36


def set_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


#: children this test process had before a demo ran (other fixtures of the
#: session, e.g. the e2e stack's services): never the demo's, never killed
_BEFORE: set[int] = set()


def children() -> list[int]:
    """Live processes whose parent is this test process."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            found.append(int(entry))
    return found


def orphans() -> list[int]:
    """Children of this test process that were not there before the demo ran.

    With this process a child subreaper, anything the demo started and left
    running when it exited (stand-in qemus, the simulator) is re-parented here.
    """
    return [pid for pid in children() if pid not in _BEFORE]


def note_children_before() -> None:
    _BEFORE.clear()
    _BEFORE.update(children())


@pytest.fixture
def run_env(tmp_path) -> Iterator[tuple[dict[str, str], str]]:  # type: ignore[no-untyped-def]
    tmpdir = str(tmp_path / "tmp")
    os.mkdir(tmpdir)
    env = dict(os.environ, TMPDIR=tmpdir, COLUMNS="200")
    note_children_before()
    set_subreaper(True)
    try:
        yield env, tmpdir
    finally:
        set_subreaper(False)
        # whatever happened, nothing of a run may outlive the test
        for pid in {*processes_mentioning(tmpdir), *orphans()}:
            os.kill(pid, signal.SIGKILL)
        for mnt in sim_mounts_under(tmpdir):
            subprocess.run(["umount", "-l", mnt], check=False)
        while True:  # reap what was re-parented here
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break


def sim_mounts_under(path: str) -> list[str]:
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mnt = left.split()[4].replace("\\040", " ")
            if right.split()[0] == FSTYPE and mnt.startswith(path):
                out.append(mnt)
    return out


def assert_nothing_left(start: dict[str, Any], tmpdir: str) -> None:
    assert sim_mounts_under(tmpdir) == []
    assert not sim_mounts_under(start["mountpoint"])
    for pid in [start["simulator_pid"], *start["qemu_pids"]]:
        assert not alive(pid), f"process {pid} survived the demo"
    assert processes_mentioning(tmpdir) == []
    assert orphans() == []
    assert not os.path.exists(start["tmpdir"])
    assert os.listdir(tmpdir) == []


def parse(stdout: str) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None]:
    lines = [json.loads(ln) for ln in stdout.splitlines() if ln.strip()]
    start = lines[0]
    assert start["event"] == "start"
    stop = lines[-1] if lines[-1].get("event") == "stop" else None
    samples = [ln for ln in lines if "event" not in ln]
    return start, samples, stop


def test_demo_cycles_json(run_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env, tmpdir = run_env
    # look-alikes of the demo's qemus elsewhere on the host (other tests, a real
    # compute node): the demo's load must land on its own processes only
    others = [StandInQemu(f"instance-{n:08x}", str(tmp_path / "other-run")).start()
              for n in (1, 2, 2, 3)]
    try:
        proc = subprocess.run(demo_argv("--cycles", "3", "--interval", "0.2", "--json"),
                              env=env, capture_output=True, text=True, timeout=240)
    finally:
        for q in others:
            q.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    start, samples, stop = parse(proc.stdout)
    assert stop == {"event": "stop", "clean": True, "leftovers": [], "cycles": 3}
    running = [i for i in start["instances"] if i["running"]]
    stopped = [i for i in start["instances"] if not i["running"]]
    assert len(running) == 4 and len(stopped) == 1
    noisy = start["noisy_neighbour"]
    assert noisy in {i["uuid"] for i in running}

    def value(cycle: int, meter: str, rid: str) -> Any:
        found = [s["volume"] for s in samples
                 if (s["cycle"], s["name"], s["resource_id"]) == (cycle, meter, rid)]
        assert len(found) == 1, (cycle, meter, rid, found)
        return found[0]

    assert {s["cycle"] for s in samples} == {1, 2, 3}
    for cycle in (1, 2, 3):
        for inst in running:
            assert value(cycle, "cache.occupancy", inst["uuid"]) > 0
            assert value(cycle, "memory.bandwidth.total.bytes", inst["uuid"]) >= 0
            if cycle > 1:  # a rate needs two reads
                assert value(cycle, "memory.bandwidth.total", inst["uuid"]) > 0
        assert value(cycle, "cache.instances.unmonitored", "demo-compute") == 0
        assert value(cycle, "cache.monitors.used", "demo-compute") == 5  # 4 + root group
        assert not [s for s in samples if s["resource_id"] == stopped[0]["uuid"]]
    # the noisy neighbour has crossed 30% of its L3 by the last cycle; the others have not
    assert value(3, "cache.occupancy.percent", noisy) > 30.0
    for inst in running:
        if inst["uuid"] != noisy:
            assert value(3, "cache.occupancy.percent", inst["uuid"]) < 30.0
    meta = next(s["resource_metadata"] for s in samples
                if s["name"] == "cache.occupancy" and s["resource_id"] == noisy)
    assert meta["cmt_backend"] == "resctrl" and meta["display_name"] == "vm-2"
    assert_nothing_left(start, tmpdir)


def read_until(proc: subprocess.Popen[str], done: Callable[[dict[str, Any]], bool]
               ) -> list[str]:
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if done(json.loads(line)):
            return lines
    raise AssertionError(f"the demo ended first: {''.join(lines)[-2000:]}")


def interrupted(env: dict[str, str], tmp_path: Any, argv: list[str], how: str,
                done: Callable[[dict[str, Any]], bool]) -> tuple[list[str], str, str]:
    """Run the demo until a JSON line satisfies ``done``, then stop it as a
    terminal's Ctrl-C (SIGINT to the whole foreground group) or a service
    manager (SIGTERM to the demo only) does; (lines until then, the rest of
    stdout, stderr). Checks the exit status of each."""
    with open(tmp_path / "stderr", "w+") as err_file:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=err_file,
                                text=True, start_new_session=True)
        try:
            lines = read_until(proc, done)
            if how == "ctrl-c":
                os.killpg(proc.pid, signal.SIGINT)
            else:
                proc.send_signal(signal.SIGTERM)
            assert proc.stdout is not None
            out = proc.stdout.read()  # the same buffered reader: no line lost
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        err_file.seek(0)
        err = err_file.read()
    assert proc.returncode == (0 if how == "ctrl-c" else 128 + signal.SIGTERM), err[-3000:]
    return lines, out, err


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_demo_interrupted_leaves_nothing(run_env, tmp_path, how: str
                                         ) -> None:  # type: ignore[no-untyped-def]
    env, tmpdir = run_env
    running_in: list[list[str]] = []

    def at_cycle_2(d: dict[str, Any]) -> bool:
        if d.get("cycle") == 2:
            running_in.append(os.listdir(tmpdir))
            return True
        return False

    lines, out, err = interrupted(
        env, tmp_path, demo_argv("--cycles", "100000", "--interval", "0.2", "--json"), how,
        at_cycle_2)
    start, _samples, stop = parse("".join(lines) + out)  # every line is whole JSON
    assert stop is not None and stop["clean"] is True and stop["cycles"] >= 1, err[-3000:]
    # while it runs, what the demo made is in its one directory, which it removes
    # however it stops (a stop signal can come between a mkdtemp and its cleanup).
    # The simulator's socket directory is the exception: an AF_UNIX path has at
    # most 107 bytes, so it stays short in the temporary directory, made and
    # recorded while stop signals are held.
    assert [n for n in running_in[0] if not n.startswith("cmt-sim-")] == [
        os.path.basename(start["tmpdir"])], running_in
    assert_nothing_left(start, tmpdir)


def test_live_view_on_a_pipe(run_env) -> None:  # type: ignore[no-untyped-def]
    env, tmpdir = run_env
    proc = subprocess.run(demo_argv("--cycles", "2", "--interval", "0.1"),
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tables = proc.stdout.split("ceilometer-cmt demo  host demo-compute")
    assert len(tables) == 3  # one header line, then one table per cycle
    last = tables[-1]
    assert "backend resctrl" in last and "cycle 2" in last
    first_row = next(ln for ln in last.splitlines() if "c3e70000-" in ln)
    assert "vm-2" in first_row  # the noisy neighbour sorts first
    assert "INFO" not in proc.stdout + proc.stderr  # the agent logs to its own file
    assert os.listdir(tmpdir) == []


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare to hide /dev/fuse")
def test_without_fuse_says_what_to_install(run_env) -> None:  # type: ignore[no-untyped-def]
    env, tmpdir = run_env
    argv = demo_argv("--cycles", "1")
    # a private mount namespace whose /dev has no fuse device
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
         'mount -t tmpfs none /dev && exec "$@"', "sh", *argv],
        env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "/dev/fuse" in proc.stderr
    for package in ("fuse3", "libfuse3-3", "mfusepy"):
        assert package in proc.stderr
    assert proc.stdout == "" and os.listdir(tmpdir) == []


@pytest.mark.parametrize("guard", [[], ["--guard"]], ids=["", "guard"])
def test_stopped_while_setting_up_leaves_nothing(run_env, guard: list[str]
                                                 ) -> None:  # type: ignore[no-untyped-def]
    env, tmpdir = run_env
    proc = subprocess.Popen(demo_argv("--cycles", "5", "--json", *guard), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # with --guard: just as the guard has taken its lock, its last set-up step
    made = "guard.lock" if guard else ""
    try:
        while not any(n.startswith("cmt-demo-") and (
                not made or os.path.exists(os.path.join(tmpdir, n, made)))
                for n in os.listdir(tmpdir)):
            assert proc.poll() is None, "the demo ended before making its host"
        proc.send_signal(signal.SIGTERM)  # somewhere in the middle of the set-up
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sim_mounts_under(tmpdir) == []
    assert processes_mentioning(tmpdir) == []
    assert orphans() == []
    assert os.listdir(tmpdir) == []


@pytest.mark.parametrize("topology", ["amd-ccx", "snc"])
def test_other_topologies(run_env, topology: str) -> None:  # type: ignore[no-untyped-def]
    env, tmpdir = run_env
    proc = subprocess.run(demo_argv("--topology", topology, "--cycles", "2", "--interval", "0.2",
                                    "--json"), env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    start, samples, stop = parse(proc.stdout)
    assert stop is not None and stop["clean"] is True
    percent = {s["resource_id"]: s["volume"] for s in samples
               if s["cycle"] == 2 and s["name"] == "cache.occupancy.percent"}
    running = {i["uuid"] for i in start["instances"] if i["running"]}
    assert set(percent) == running
    noisy = start["noisy_neighbour"]
    assert percent.pop(noisy) > 30.0  # of an L3 as the plugin sees it (with SNC: both nodes)
    assert all(p < 30.0 for p in percent.values())
    domains = {s["resource_id"]: s["resource_metadata"]["cache_domains"] for s in samples
               if s["cycle"] == 2 and s["name"] == "cache.occupancy"}
    expected = {"amd-ccx": {str(i) for i in range(8)}, "snc": {"0", "1"}}[topology]
    assert all(set(d) == expected for d in domains.values())
    assert_nothing_left(start, tmpdir)


def test_intel_aet_topology_gives_energy_and_ipc(run_env) -> None:  # type: ignore[no-untyped-def]
    env, tmpdir = run_env
    proc = subprocess.run(demo_argv("--topology", "intel-aet", "--cycles", "3", "--interval",
                                    "0.2", "--json"), env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    start, samples, stop = parse(proc.stdout)
    assert stop is not None and stop["clean"] is True
    running = {i["uuid"] for i in start["instances"] if i["running"]}

    def per_instance(name: str, cycle: int) -> dict[str, float]:
        return {s["resource_id"]: s["volume"] for s in samples
                if s["cycle"] == cycle and s["name"] == name}

    # cumulative energy from the first cycle; rates (power, IPC, stall ratio)
    # need two reads, so from the second
    assert set(per_instance("energy.core", 1)) == running
    for name in ("power.core", "cpu.ipc", "cache.llc.miss.stall.ratio"):
        assert per_instance(name, 1) == {}, name
        values = per_instance(name, 3)
        assert set(values) == running, name
        assert all(v > 0 for v in values.values()), (name, values)
    assert all(0 < v <= 1 for v in per_instance("cache.llc.miss.stall.ratio", 3).values())
    energy = [per_instance("energy.core", c) for c in (1, 2, 3)]
    assert all(energy[0][u] <= energy[1][u] <= energy[2][u] for u in running)
    assert_nothing_left(start, tmpdir)


# --- demo --guard: the guard beside the agent caps the noisy neighbour and releases it

#: the cap falls between two of the agent's thread re-listings (the agent follows
#: it at once all the same: test_demo_guard_capped_holds_the_share)
GUARD_CYCLES = 28


@dataclass
class GuardRun:
    """One ``demo --guard --json`` run to its end, shared by the tests below."""

    proc: subprocess.CompletedProcess[str]
    tmpdir: str
    log: str
    start: dict[str, Any]
    samples: list[dict[str, Any]]
    events: list[dict[str, Any]]
    stop: dict[str, Any] | None

    def workload(self, cycle: int) -> float:
        """The noisy neighbour's demand at ``cycle``, in percent of its L3,
        by the simulator's own timeline (the clock moves a step a cycle)."""
        line = Timeline(tuple(Point(t, {("occupancy", 0): pct}) for t, pct
                              in noisy_shape(self.start["ramp_seconds"], NOISY_FROM)),
                        repeat=True)
        return line.value("occupancy", 0, (cycle - 1) * self.start["guard"]["clock_step"])

    def percent(self, cycle: int, uuid: str) -> float:
        found = [s["volume"] for s in self.samples
                 if (s["cycle"], s["name"], s["resource_id"])
                 == (cycle, "cache.occupancy.percent", uuid)]
        assert len(found) == 1, (cycle, uuid, found)
        return float(found[0])


@pytest.fixture(scope="module")
def guard_run(tmp_path_factory) -> Iterator[GuardRun]:  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("guard-run")
    tmpdir, log = str(base / "tmp"), str(base / "agent.log")
    os.mkdir(tmpdir)
    env = dict(os.environ, TMPDIR=tmpdir, COLUMNS="200")
    note_children_before()
    set_subreaper(True)  # what the demo leaves running is re-parented here: see orphans()
    try:
        proc = subprocess.run(demo_argv("--guard", "--json", "--cycles", str(GUARD_CYCLES),
                                        "--interval", "0.2", "--keep-log", log),
                              env=env, capture_output=True, text=True, timeout=300)
        start, samples, stop = parse(proc.stdout)
        events = [json.loads(ln) for ln in proc.stdout.splitlines()
                  if '"event": "guard"' in ln]
        yield GuardRun(proc, tmpdir, log, start, samples, events, stop)
    finally:
        set_subreaper(False)
        for pid in {*processes_mentioning(tmpdir), *orphans()}:
            os.kill(pid, signal.SIGKILL)
        for mnt in sim_mounts_under(tmpdir):
            subprocess.run(["umount", "-l", mnt], check=False)


def test_demo_guard_caps_the_noisy_neighbour_and_releases_it(guard_run: GuardRun) -> None:
    run = guard_run
    assert run.proc.returncode == 0, run.proc.stderr[-3000:]
    start, noisy = run.start, run.start["noisy_neighbour"]
    g = start["guard"]
    assert (g["cap_above"], g["cap_after"], g["cap_share"], g["release_after"]) == (
        50.0, 3, 25, 3)
    # one cap, then one release, of the noisy neighbour only, each after a polling
    # cycle, as the guard's own --json lines say them (not a dry run)
    assert [(e["action"], e["uuid"], e["share"], e["dry_run"]) for e in run.events] == [
        ("cap", noisy, 25, False), ("release", noisy, 25, False)]
    cap, release = run.events
    assert set(cap) == {"event", "action", "uuid", "share", "reason", "dry_run", "cycle"}
    # capped within cap_after cycles of crossing cap_above: the guard reads the
    # agent's monitor groups at the same scenario time as the agent's cycle
    hot = [c for c in range(1, GUARD_CYCLES + 1) if run.percent(c, noisy) > g["cap_above"]]
    assert hot and cap["cycle"] == hot[0] + g["cap_after"] - 1
    assert f"above {g['cap_above']:g}% for {g['cap_after']} cycles" in cap["reason"]
    assert hot[0] == next(c for c in range(1, GUARD_CYCLES + 1)
                          if run.workload(c) > g["cap_above"])
    # never above the share while capped (about it: test_demo_guard_capped_holds_the_share)
    capped = range(cap["cycle"] + 1, release["cycle"] + 1)
    assert max(run.percent(c, noisy) for c in capped) <= g["cap_share"] + 1.0
    # released after release_after calm cycles, once its workload fell below
    # the capped threshold (what a capped instance can hold is its share)
    calm = next(c for c in capped if min(run.workload(c), g["cap_share"]) < g["release_below"])
    assert release["cycle"] == calm + g["release_after"] - 1
    assert f"for {g['release_after']} cycles" in release["reason"]
    # uncapped and calm to the end; the neighbours were never touched
    for c in range(release["cycle"] + 1, GUARD_CYCLES + 1):
        assert run.percent(c, noisy) == pytest.approx(g["calm"], abs=1.0), c
    quiet = [i["uuid"] for i in start["instances"] if i["running"] and i["uuid"] != noisy]
    for uuid in quiet:
        assert {round(run.percent(c, uuid), 1) for c in range(1, GUARD_CYCLES + 1)} == {
            round(run.percent(1, uuid), 1)}
    # the cap group went with its last member: nothing for the exit to undo
    assert run.stop == {"event": "stop", "clean": True, "leftovers": [],
                        "cycles": GUARD_CYCLES, "guard_caps_undone": []}
    assert_nothing_left(start, run.tmpdir)


def test_demo_guard_capped_holds_the_share(guard_run: GuardRun) -> None:
    run = guard_run
    assert run.proc.returncode == 0, run.proc.stderr[-3000:]
    noisy, g = run.start["noisy_neighbour"], run.start["guard"]
    cap = run.events[0]
    assert cap["action"] == "cap"
    # from the next cycle on, as long as its demand stays above its share, it
    # holds about the cap share: intel-2s has 20 ways, 25% is 5 of them, and the
    # simulator bounds a control group to its CBM's bytes exactly; the read is
    # rounded to the occupancy granularity (48 KiB of a 30 MiB L3, 0.15 point)
    # and the cap group holds only the noisy neighbour: 1 point is room enough
    held = list(itertools.takewhile(lambda c: run.workload(c) > g["cap_share"] + 1.0,
                                    range(cap["cycle"] + 1, GUARD_CYCLES + 1)))
    assert len(held) >= 3
    assert [run.percent(c, noisy) for c in held] == pytest.approx(
        [g["cap_share"]] * len(held), abs=1.0)


def test_demo_guard_release_is_no_removal_by_others(guard_run: GuardRun) -> None:
    assert guard_run.proc.returncode == 0, guard_run.proc.stderr[-3000:]
    with open(guard_run.log, encoding="utf-8") as f:
        log = f.read()
    assert "guard: release" in log
    assert "removed by another resctrl user" not in log
    assert "removed by someone else" not in log


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_demo_guard_interrupted_while_capped_leaves_nothing(
        run_env, tmp_path, how: str) -> None:  # type: ignore[no-untyped-def]
    env, tmpdir = run_env
    lines, out, err = interrupted(
        env, tmp_path, demo_argv("--guard", "--cycles", "0", "--interval", "0.2", "--json"),
        how, lambda d: d.get("event") == "guard")
    start, _samples, stop = parse("".join(lines) + out)
    cap = json.loads(lines[-1])
    assert (cap["action"], cap["uuid"]) == ("cap", start["noisy_neighbour"])
    # stopped while capped: the exit undid the cap (cleanup --guard) before
    # unmounting; Ctrl-C reaches the simulator too (the terminal's process
    # group), whose cap group may go with its mount before the demo lists it
    assert stop is not None and stop["clean"] is True, err[-3000:]
    assert stop["guard_caps_undone"] == ["ceilometer-cap-25"] or (
        how == "ctrl-c" and stop["guard_caps_undone"] == [])
    assert_nothing_left(start, tmpdir)


def test_live_view_shows_the_guard_actions(run_env) -> None:  # type: ignore[no-untyped-def]
    env, tmpdir = run_env
    proc = subprocess.run(demo_argv("--guard", "--cycles", str(GUARD_CYCLES), "--interval",
                                    "0.1"), env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tables = proc.stdout.split("ceilometer-cmt demo  host demo-compute")
    assert len(tables) == GUARD_CYCLES + 1
    capped = [n for n, t in enumerate(tables) if "capped vm-2 to 25% of the L3 ways" in t]
    released = [n for n, t in enumerate(tables) if "released vm-2" in t]
    # shown under every table after the action
    assert capped and capped == list(range(capped[0], GUARD_CYCLES + 1))
    assert released and released == list(range(released[0], GUARD_CYCLES + 1))
    assert capped[0] < released[0]
    assert os.listdir(tmpdir) == []


def three_cycles_on(env: dict[str, str], topology: str) -> tuple[
        dict[str, Any], list[dict[str, Any]], Callable[[str], dict[str, dict[str, Any]]]]:
    """The demo on ``topology`` for 3 cycles with its default instances,
    ended clean: (its start line, its samples, ``of(meter)``: the last
    cycle's samples of that meter by resource id)."""
    proc = subprocess.run(demo_argv("--topology", topology, "--cycles", "3",
                                    "--interval", "0.2", "--json"), env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    start, samples, stop = parse(proc.stdout)
    assert stop is not None and stop["clean"] is True
    last = [s for s in samples if s["cycle"] == 3]

    def of(name: str) -> dict[str, dict[str, Any]]:
        return {s["resource_id"]: s for s in last if s["name"] == name}

    return start, samples, of


def test_arm64_mpam_topology_total_bandwidth_only(run_env) -> None:  # type: ignore[no-untyped-def]
    """arm64-mpam (doc/kernel-facts-mpam.md): occupancy per instance on both
    L3 ids, total bandwidth from 8 assignable counters per L3 (the default
    group holds one), no local bandwidth at all: MPAM has no such event, so
    no sample and no "lacks local" reason. Its default of 8 instances: 7 get a
    counter, the eighth is listed with the reason. ``num_rmids`` is PARTIDs x
    PMGs."""
    env, tmpdir = run_env
    start, samples, of = three_cycles_on(env, "arm64-mpam")
    assert start["topology"] == "arm64-mpam"
    running = {i["uuid"] for i in start["instances"] if i["running"]}
    assert len(running) == 8
    assert set(of("cache.occupancy")) == running
    assert all(set(s["resource_metadata"]["cache_domains"]) == {"0", "1"}
               for s in of("cache.occupancy").values())
    percent = {u: s["volume"] for u, s in of("cache.occupancy.percent").items()}
    assert max(percent, key=lambda u: percent[u]) == start["noisy_neighbour"]
    counted = of("memory.bandwidth.total.bytes")
    assert len(counted) == 7 and set(counted) <= running
    assert all(s["volume"] > 0 for s in counted.values())
    assert not [s for s in samples if s["name"].startswith("memory.bandwidth.local")]
    (unmonitored,) = of("cache.instances.unmonitored").values()
    reasons = unmonitored["resource_metadata"]["unmonitored"]
    assert set(reasons) == running - set(counted)
    assert all("mbm_total_bytes" in r and "mbm_local_bytes" not in r for r in reasons.values())
    (total,) = of("memory.bandwidth.counters.total").values()
    assert total["volume"] == 16 and total["resource_metadata"]["counter_domains"] == {
        "0": 8, "1": 8}
    (monitors,) = of("cache.monitors.total").values()
    assert monitors["volume"] == 32 * 16
    assert_nothing_left(start, tmpdir)


def test_arm64_mpam_guard_caps_within_portions_the_hardware_shares(run_env
                                                                   ) -> None:  # type: ignore[no-untyped-def]
    """The guard on MPAM: every cache portion is in ``shareable_bits``, so the
    cap mask cannot avoid them (it takes the lowest window) and the cap
    group, a control group of its own PARTID, is plain ``shareable``; the
    schemata line reads padded with ``%x`` masks (both in
    tests/unit/guard/test_cbm.py). The noisy neighbour is capped to 25% of
    the portions and released, and the agent follows it."""
    env, tmpdir = run_env
    proc = subprocess.run(demo_argv("--topology", "arm64-mpam", "--instances", "4", "--guard",
                                    "--json", "--cycles", str(GUARD_CYCLES), "--interval",
                                    "0.2"), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    start, samples, stop = parse(proc.stdout)
    assert stop is not None and stop["clean"] is True and stop["guard_caps_undone"] == []
    noisy = start["noisy_neighbour"]
    events = [json.loads(ln) for ln in proc.stdout.splitlines() if '"event": "guard"' in ln]
    assert [(e["action"], e["uuid"]) for e in events] == [("cap", noisy), ("release", noisy)]
    capped = {s["cycle"]: s["volume"] for s in samples
              if s["name"] == "cache.allocation.percent" and s["resource_id"] == noisy}
    cap, release = events[0]["cycle"], events[1]["cycle"]
    assert release > cap
    # each action shows from the agent's next cycle on
    assert {capped[c] for c in range(cap + 1, release + 1)} == {25.0}
    assert {v for c, v in capped.items() if c <= cap or c > release} == {100.0}
    occupied = {s["cycle"]: s["volume"] for s in samples
                if s["name"] == "cache.occupancy" and s["resource_id"] == noisy}
    assert set(occupied) == set(range(1, GUARD_CYCLES + 1))  # followed into the cap group
    assert_nothing_left(start, tmpdir)


def test_amd_abmc_topology_more_instances_than_counters(run_env) -> None:  # type: ignore[no-untyped-def]
    """amd-abmc: 8 MBM counters per L3 domain, 2 held by the default group.
    Its default of 8 instances (no --instances): 6 get a counter for total
    bandwidth (total before local) in every domain they may run in, whatever
    CPUs this machine has; the other
    2 are listed with the reason and still give occupancy. Never a 0 for a
    counter that is not there."""
    env, tmpdir = run_env
    start, _samples, of = three_cycles_on(env, "amd-abmc")
    running = {i["uuid"] for i in start["instances"] if i["running"]}
    assert len(running) == 8
    assert set(of("cache.occupancy")) == running
    counted = set(of("memory.bandwidth.total.bytes"))
    assert len(counted) == 6 and counted <= running
    assert of("memory.bandwidth.local.bytes") == {}  # total before local: none left
    assert all(s["volume"] > 0 for s in of("memory.bandwidth.total.bytes").values())
    (unmonitored,) = of("cache.instances.unmonitored").values()
    reasons = unmonitored["resource_metadata"]["unmonitored"]
    assert set(reasons) == running  # every one lacks local; 2 lack total too
    assert sum("mbm_total_bytes" in r for r in reasons.values()) == 2
    assert all("no MBM counter" in r for r in reasons.values())
    assert unmonitored["volume"] == 0  # monitored in part is not unmonitored
    (total,) = of("memory.bandwidth.counters.total").values()
    assert total["volume"] == 16 and total["resource_metadata"]["counter_domains"] == {
        "0": 8, "1": 8}
    (available,) = of("memory.bandwidth.counters.available").values()
    assert 0 <= available["volume"] <= 12
    assert_nothing_left(start, tmpdir)
