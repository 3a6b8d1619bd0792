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
  in the ``ceilometer-cmt top`` view (or as JSON lines with ``--json``);
* with ``--guard``, the guard beside the agent, capping the noisy neighbour
  and releasing it when it calms (:mod:`ceilometer_cmt.cmd.demo_guard`).

On exit (after ``--cycles``, Ctrl-C, SIGTERM or SIGHUP, pass or fail) it
unmounts, kills its processes and removes its files, then checks that nothing
is left.

This module holds the command (its options, the run, the exit code); the host
it builds is :mod:`ceilometer_cmt.cmd.demo_host`, the way a stop signal ends
it cleanly :mod:`ceilometer_cmt.cmd.demo_signals`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import signal
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from ceilometer_cmt.cmd.demo_guard import CALM, CLIMB_CYCLES, PEAK, climb_for, clock_step
from ceilometer_cmt.cmd.demo_host import NOISY_FROM, NOISY_TO, DemoHost
from ceilometer_cmt.cmd.demo_signals import (
    STOP_SIGNALS,
    SignalSafeOut,
    Stop,
    restore_signals,
    stop_on_signals,
    uninterrupted,
)

INSTALL_HINT = (
    "The demo mounts a FUSE filesystem. Install:\n"
    "  Debian/Ubuntu: apt-get install --no-install-recommends fuse3 libfuse3-3\n"
    "  Python:        pip install mfusepy   (or: pip install 'ceilometer-cmt[simulator]')\n"
    "and make /dev/fuse available (modprobe fuse; in a container: --device /dev/fuse "
    "--cap-add SYS_ADMIN)."
)


def fuse_problem() -> str | None:
    """Why the simulator cannot run here (None: it can)."""
    if importlib.util.find_spec("mfusepy") is None:
        return "the Python package mfusepy is not installed"
    from ceilometer_cmt.simulator import fuse_missing_reason

    return fuse_missing_reason()


#: running instances when ``--instances`` is not given (see :func:`default_instances`)
DEFAULT_INSTANCES = 4


def default_instances(topology: str) -> int:
    """Running instances by default: :data:`DEFAULT_INSTANCES`, or on a
    topology with MBM counters to assign (``mbm_event`` mode, amd-abmc,
    arm64-mpam) as many as an L3 domain has counters. The default group holds
    one per MBM event (total and local; total only on MPAM) from boot, so
    the instances outnumber the free counters: some get no
    ``mbm_total_bytes`` counter and are listed in
    ``cache.instances.unmonitored`` with the reason."""
    from ceilometer_cmt.simulator.topology import get_topology

    return max(DEFAULT_INSTANCES, get_topology(topology).num_mbm_cntrs)


def _parser() -> argparse.ArgumentParser:
    from ceilometer_cmt.cmd.top import SORT_KEYS

    p = argparse.ArgumentParser(
        prog="ceilometer-cmt demo",
        description="Simulated compute host (resctrl FUSE simulator, libvirt test driver, "
                    "stand-in qemu processes) with real ceilometer polling cycles and the "
                    "live per-instance view. Removes everything it made on exit.")
    from ceilometer_cmt.simulator.topology import PRESETS

    p.add_argument("--topology", default="intel-2s",
                   help="simulated host, one of the simulator's presets: "
                        f"{', '.join(sorted(PRESETS))} (default intel-2s; amd-abmc: "
                        "MBM counters to assign, 8 per L3, 2 of them the default "
                        "group's; intel-aet: per-instance energy and IPC; arm64-mpam: "
                        "MPAM, total bandwidth only, 8 counters per L3)")
    p.add_argument("--instances", type=int,
                   help=f"running instances (default {DEFAULT_INSTANCES}; on a topology "
                        "with MBM counters to assign, as many as an L3 has counters: 8 on "
                        "amd-abmc, more than its free counters, so that some instances "
                        "get none)")
    p.add_argument("--stopped", type=int, default=1, help="shut-off instances (default 1)")
    p.add_argument("--interval", type=float, default=2.0,
                   help="seconds between polling cycles (default 2)")
    p.add_argument("--cycles", type=int, help="stop after N cycles (default, or 0: until Ctrl-C)")
    p.add_argument("--ramp", type=float,
                   help="seconds for the noisy neighbour to climb from 12%% to 42%% of its L3 "
                        "(default: the whole run with --cycles, else 30; see --guard)")
    p.add_argument("--sort", choices=sorted(SORT_KEYS), default="occupancy-percent")
    p.add_argument("--json", action="store_true",
                   help="JSON lines: a start event, every sample of every cycle, a stop event")
    p.add_argument("--keep-log", metavar="PATH", help="copy the agent's log there at exit")
    p.add_argument("--guard", action="store_true",
                   help="also run the guard (ceilometer-cmt guard, applying its caps, not a "
                        "dry run) after each cycle, with cap_after=3 and release_after=3 "
                        f"for the demo: the noisy neighbour climbs to {PEAK:.0f}%% of its L3, "
                        f"stays, falls to {CALM:.0f}%%; it is capped to 25%% of the ways and "
                        "released when calm. The scenario's clock then moves one --interval "
                        "a cycle; --ramp is the climb (default: the story fits --cycles, "
                        f"else {CLIMB_CYCLES} cycles, repeated). Shows cap and release in "
                        "about 25 cycles. --json adds {\"event\": \"guard\", ...} lines")
    return p


def _emit(out: TextIO, doc: dict[str, Any]) -> None:
    out.write(json.dumps(doc, sort_keys=True) + "\n")
    out.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from ceilometer_cmt.simulator.topology import PRESETS

    if args.topology not in PRESETS:
        print(f"ceilometer-cmt demo: unknown topology {args.topology!r} "
              f"(choose from {', '.join(sorted(PRESETS))})", file=sys.stderr)
        return 2
    if args.instances is None:
        args.instances = default_instances(args.topology)
    if args.instances < 1 or args.stopped < 0 or args.interval < 0 \
            or (args.cycles is not None and args.cycles < 0):
        print("ceilometer-cmt demo: need --instances >= 1, --stopped >= 0, --interval >= 0, "
              "--cycles >= 0", file=sys.stderr)
        return 2
    if args.cycles == 0:
        args.cycles = None
    problem = fuse_problem()
    if problem:
        print(f"ceilometer-cmt demo: cannot run here: {problem}.\n{INSTALL_HINT}",
              file=sys.stderr)
        return 2
    ramp = args.ramp
    step = clock_step(args.interval)
    if ramp is None and args.guard:
        ramp = climb_for(args.cycles, step)
    elif ramp is None:
        # with --cycles the last cycle is at least (cycles - 1) * interval after the
        # simulator started: the noisy neighbour is past 30% by then, whatever the speed
        ramp = (args.cycles - 1) * args.interval if args.cycles else 30.0
    out: Any = SignalSafeOut(sys.stdout) if args.json else sys.stdout
    host = DemoHost(args.topology, args.instances, args.stopped, ramp, guard=args.guard,
                    step=step)
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
                                "leftovers": leftovers, "cycles": cycles_done,
                                # cap groups the exit removed (a run stopped mid-cap)
                                **({"guard_caps_undone": host.demo_guard.removed}
                                   if host.demo_guard else {})})
    restore_signals()
    return rc


def _run(host: DemoHost, args: argparse.Namespace, out: TextIO) -> int:
    from ceilometer_cmt.cmd import poll, top

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
    guard = host.demo_guard
    if guard is not None:
        g = guard.describe()
        climb = (f"{NOISY_FROM:.0f}% -> {PEAK:.0f}% of an L3 over {host.ramp:.3g} s, held, "
                 f"then {CALM:.0f}%; the guard caps it above {g['cap_above']:g}% for "
                 f"{g['cap_after']} cycles to {g['cap_share']}% of the ways, releases it below "
                 f"{g['release_below']:g}% for {g['release_after']} cycles")
    footer = (f"{noisy.display_name} is a noisy neighbour: {climb} (red: >= 30%).  "
              + ("Ctrl-C to stop." if args.cycles is None else f"{args.cycles} cycles."))

    def count(_view: top.HostView) -> None:
        host.cycles_done += 1
        if guard is not None:
            with uninterrupted():  # an action done is always reported
                for event in guard.after_cycle(host.cycles_done):
                    if args.json:
                        _emit(out, event)

    def footer_now() -> str:
        return footer if guard is None or not guard.events else f"{footer}\n{guard.footer()}"

    # in the host's directory, which the demo removes however it stops
    with poll.polling_agent([host.conf], work_dir=host.tmp) as agent:
        mode = "jsonl" if args.json else ("live" if out.isatty() else "print")
        top.watch(agent, interval=args.interval, cycles=args.cycles, sort=args.sort, out=out,
                  mode=mode, title="ceilometer-cmt demo", footer=footer_now, on_cycle=count)
    return 0
