"""``ceilometer-cmt demo``: the plugin at work on any Linux machine with FUSE.

No OpenStack, no RDT hardware. In one temporary directory the demo builds a
compute host and runs the real thing against it:

* the resctrl simulator (FUSE, fstype ``fuse.cmt-resctrl-sim``) mounted on
  ``<tmp>/resctrl`` and a sysfs cache tree of the same topology;
* a libvirt test-driver node file whose domains carry Nova metadata (some
  running, one shut off), read by ceilometer's own ``local_instances``
  discovery through ``test:///<tmp>/node.xml`` (no daemon);
* one stand-in qemu process per running instance (real processes, pidfiles
  and ``-name guest=...`` cmdlines where the plugin looks for them);
* a scenario in which one instance is a noisy neighbour whose LLC occupancy
  climbs past 30% of an L3 domain during the run;
* a ceilometer config with the plugin's ``[cmt]`` options pointing at all of
  that, and real polling cycles through ceilometer's polling manager, shown
  in the ``ceilometer-cmt top`` view (or as JSON lines with ``--json``).

On exit (after ``--cycles``, Ctrl-C, SIGTERM or SIGHUP, pass or fail) it
unmounts, kills its processes and removes its files, then checks that nothing
is left.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TextIO

from ceilometer_cmt.linux import procfs
from ceilometer_cmt.testing.fakehost import (
    FakeInstance,
    StandInQemu,
    make_instances,
    write_node_xml,
)

INSTALL_HINT = (
    "The demo mounts a FUSE filesystem. Install:\n"
    "  Debian/Ubuntu: apt-get install --no-install-recommends fuse3 libfuse3-3\n"
    "  Python:        pip install mfusepy   (or: pip install 'ceilometer-cmt[simulator]')\n"
    "and make /dev/fuse available (modprobe fuse; in a container: --device /dev/fuse "
    "--cap-add SYS_ADMIN)."
)
#: the noisy neighbour's occupancy of its busiest domain, before and after the ramp
NOISY_FROM, NOISY_TO = 12.0, 42.0
HOST_NAME = "demo-compute"


def fuse_problem() -> str | None:
    """Why the simulator cannot run here (None: it can)."""
    if importlib.util.find_spec("mfusepy") is None:
        return "the Python package mfusepy is not installed"
    from ceilometer_cmt.simulator import fuse_missing_reason

    return fuse_missing_reason()


def scenario_for(instances: Sequence[FakeInstance], noisy: FakeInstance,
                 domains: Sequence[int], ramp: float,
                 pids: Mapping[str, int] | None = None,
                 hot: Sequence[int] | None = None) -> dict[str, Any]:
    """The simulator scenario: modest steady load everywhere, one noisy neighbour.

    Instance ``i`` lives mostly on domain ``domains[i % len(domains)]``; the
    noisy one on ``hot`` (default ``domains[0]``; with SNC every node of one L3,
    so that it fills that L3 as the plugin sees it), its occupancy ramping from
    ``NOISY_FROM`` to ``NOISY_TO`` percent of that domain over ``ramp`` seconds.
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

    start = {"t": 0, "occupancy": each(f"{NOISY_FROM}%"),
             "mbm_total": each(3 * 1024 * mib), "mbm_local": each(2800 * mib)}
    end = {**start, "t": ramp, "occupancy": each(f"{NOISY_TO}%"),
           "mbm_total": each(6 * 1024 * mib), "mbm_local": each(5600 * mib)}
    processes.append({"name": noisy.display_name + " (noisy neighbour)",
                      "match": match(noisy),
                      "timeline": [start, end] if ramp > 0 else [end | {"t": 0}]})
    return {
        "limbo_seconds": 1.0,
        "background": {"occupancy": {"*": 2 * mib}, "mbm_total": {"*": 50 * mib}},
        "processes": processes,
    }


def ceilometer_conf(*, node_xml: str, resctrl: str, sysfs: str, pid_dir: str,
                    log_config: str) -> str:
    """The agent's config: ceilometer's [DEFAULT] plus the plugin's [cmt]."""
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
    )


@dataclass
class DemoHost:
    """Everything the demo makes; :meth:`stop` removes all of it."""

    topology: str = "intel-2s"
    running: int = 4
    stopped: int = 1
    ramp: float = 30.0
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
        with open(scenario, "w", encoding="utf-8") as f:
            json.dump(scenario_for(self.instances, self.noisy, [d.id for d in topo.mon_domains],
                                   self.ramp, pids,
                                   [d.id for d in topo.domains_of(topo.l3[0].id)]), f, indent=2)
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
                                    pid_dir=pid_dir, log_config=log_config))
        return self

    def describe(self) -> dict[str, Any]:
        return {
            "event": "start", "tmpdir": self.tmp, "mountpoint": self.mountpoint,
            "topology": self.topology, "config_file": self.conf, "host": HOST_NAME,
            "simulator_pid": self.simulator.pid if self.simulator else None,
            "qemu_pids": [q.pid for q in self.qemus if q.proc is not None],
            "noisy_neighbour": self.noisy.uuid if self.noisy else None,
            "ramp_seconds": self.ramp,
            "instances": [{"uuid": i.uuid, "name": i.display_name,
                           "domain_name": i.domain_name, "running": i.running,
                           "noisy": i == self.noisy} for i in self.instances],
        }

    def stop(self, keep_log: str | None = None) -> list[str]:
        """Kill, unmount, remove; returns what is still there (empty: all gone)."""
        errors: list[str] = []
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


class Stop(BaseException):
    """A signal asked the demo to end (BaseException: no ``except Exception`` eats it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Signals:
    """Stop signals become :class:`Stop`, except inside :func:`uninterrupted`.

    There they are held and raised at its end: a child process is always
    recorded before the demo can be stopped (a ``Stop`` raised inside
    ``Popen`` would leak the child), a JSON line is always written whole.
    Blocking signals with ``pthread_sigmask`` instead would be inherited by
    the children started meanwhile.
    """

    depth = 0
    pending: int | None = None


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    if _Signals.depth:
        if _Signals.pending is None:
            _Signals.pending = signum
        return
    # one stop only: the cleanup that follows must not be interrupted
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    raise Stop(signum)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    _Signals.depth += 1
    try:
        yield
    finally:
        _Signals.depth -= 1
        signum, _Signals.pending = _Signals.pending, None
        if signum is not None and not _Signals.depth \
                and signal.getsignal(signum) is _on_signal:
            _on_signal(signum, None)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    for s in STOP_SIGNALS:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        for s in STOP_SIGNALS:  # ignore during cleanup, restored by main
            signal.signal(s, signal.SIG_IGN)


def _restore_signals() -> None:
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_DFL if s != signal.SIGINT else signal.default_int_handler)


class SignalSafeOut:
    """A text stream whose writes are never cut by a stop signal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        with uninterrupted():
            n = self.stream.write(text)
            self.stream.flush()
            return n

    def flush(self) -> None:
        with uninterrupted():
            self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()


def _parser() -> argparse.ArgumentParser:
    from ceilometer_cmt.cmd.top import SORT_KEYS

    p = argparse.ArgumentParser(
        prog="ceilometer-cmt demo",
        description="Simulated compute host (resctrl FUSE simulator, libvirt test driver, "
                    "stand-in qemu processes) with real ceilometer polling cycles and the "
                    "live per-instance view. Removes everything it made on exit.")
    p.add_argument("--topology", default="intel-2s",
                   help="simulated host: intel-2s (default), amd-ccx, snc")
    p.add_argument("--instances", type=int, default=4, help="running instances (default 4)")
    p.add_argument("--stopped", type=int, default=1, help="shut-off instances (default 1)")
    p.add_argument("--interval", type=float, default=2.0,
                   help="seconds between polling cycles (default 2)")
    p.add_argument("--cycles", type=int, help="stop after N cycles (default, or 0: until Ctrl-C)")
    p.add_argument("--ramp", type=float,
                   help="seconds for the noisy neighbour to climb from 12%% to 42%% of its L3 "
                        "(default: the whole run with --cycles, else 30)")
    p.add_argument("--sort", choices=sorted(SORT_KEYS), default="occupancy-percent")
    p.add_argument("--json", action="store_true",
                   help="JSON lines: a start event, every sample of every cycle, a stop event")
    p.add_argument("--keep-log", metavar="PATH", help="copy the agent's log there at exit")
    return p


def _emit(out: TextIO, doc: dict[str, Any]) -> None:
    out.write(json.dumps(doc, sort_keys=True) + "\n")
    out.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.instances < 1 or args.stopped < 0 or args.interval < 0 \
            or (args.cycles is not None and args.cycles < 0):
        print("ceilometer-cmt demo: need --instances >= 1, --stopped >= 0, --interval >= 0, "
              "--cycles >= 0", file=sys.stderr)
        return 2
    if args.cycles == 0:
        args.cycles = None
    from ceilometer_cmt.simulator.topology import PRESETS

    if args.topology not in PRESETS:
        print(f"ceilometer-cmt demo: unknown topology {args.topology!r} "
              f"(choose from {', '.join(sorted(PRESETS))})", file=sys.stderr)
        return 2
    problem = fuse_problem()
    if problem:
        print(f"ceilometer-cmt demo: cannot run here: {problem}.\n{INSTALL_HINT}",
              file=sys.stderr)
        return 2
    ramp = args.ramp
    if ramp is None:
        # with --cycles the last cycle is at least (cycles - 1) * interval after the
        # simulator started: the noisy neighbour is past 30% by then, whatever the speed
        ramp = (args.cycles - 1) * args.interval if args.cycles else 30.0
    out: Any = SignalSafeOut(sys.stdout) if args.json else sys.stdout
    host = DemoHost(args.topology, args.instances, args.stopped, ramp)
    rc = 1
    with stop_on_signals():
        try:
            rc = _run(host, args, out)
        except Stop as e:
            rc = 0 if e.signum == signal.SIGINT else 128 + e.signum
        except Exception as e:
            print(f"ceilometer-cmt demo: failed: {type(e).__name__}: {e}", file=sys.stderr)
            if host.log_file:
                from ceilometer_cmt.cmd.top import print_log_problems

                print_log_problems(host.log_file, sys.stderr)
            rc = 1
        finally:
            for s in STOP_SIGNALS:  # nothing may interrupt the cleanup
                signal.signal(s, signal.SIG_IGN)
            leftovers = host.stop(keep_log=args.keep_log)
            for item in leftovers:
                print(f"ceilometer-cmt demo: left behind: {item}", file=sys.stderr)
            if leftovers:
                rc = rc or 1
            cycles_done = host.cycles_done
            if args.json:
                with contextlib.suppress(OSError, ValueError):
                    _emit(out, {"event": "stop", "clean": not leftovers,
                                "leftovers": leftovers, "cycles": cycles_done})
    _restore_signals()
    return rc


def _run(host: DemoHost, args: argparse.Namespace, out: TextIO) -> int:
    from ceilometer_cmt.cmd import poll as pollrun
    from ceilometer_cmt.cmd import top

    host.start()
    if args.json:
        _emit(out, host.describe())
    else:
        print(f"demo host in {host.tmp}: resctrl simulator ({host.topology}) on "
              f"{host.mountpoint}, {args.instances} running + {args.stopped} shut-off "
              f"instance(s); config {host.conf}", file=out)
    noisy = host.noisy
    assert noisy is not None
    climb = (f"{NOISY_FROM:.0f}% -> {NOISY_TO:.0f}% of an L3 over {host.ramp:g} s"
             if host.ramp > 0 else f"{NOISY_TO:.0f}% of an L3")
    footer = (f"{noisy.display_name} is a noisy neighbour: {climb} (red: >= 30%).  "
              + ("Ctrl-C to stop." if args.cycles is None else f"{args.cycles} cycles."))

    def count(_view: top.HostView) -> None:
        host.cycles_done += 1

    with pollrun.polling_agent([host.conf]) as agent:
        mode = "jsonl" if args.json else ("live" if out.isatty() else "print")
        top.watch(agent, interval=args.interval, cycles=args.cycles, sort=args.sort, out=out,
                  mode=mode, title="ceilometer-cmt demo", footer=footer, on_cycle=count)
    return 0
