#!/usr/bin/env python3
"""One polling cycle of the libvirt backend against the per-domain pattern.

A private libvirtd (test driver only, unix socket; see
ceilometer_cmt.testing.libvirtd.LibvirtDaemon) serves N Nova-like domains. For each N
in one run, interleaved, median of several rounds:

- bulk: ``LibvirtBackend.sync()`` over all N instances: one
  ``getAllDomainStats`` RPC, then parsing and matching;
- per-domain: one ``domainListGetStats([dom], same groups)`` RPC per
  instance, domains already looked up (the cheapest per-domain loop);
- ceilometer <= 23: what its libvirt inspector did per instance
  (``inspect_instance``, which fed cpu_l3_cache and memory.bandwidth.*):
  ``lookupByUUIDString`` + ``info()`` + ``memoryStats()`` +
  ``domainListGetStats([dom], 0)`` (all groups).

Run: .venv/bin/python bench/bench_libvirt.py [--sizes 100,500,1000] [--rounds 7]
Not a test: prints a table; exit 1 if the goal (>= 10x against ceilometer <= 23's
per-instance pattern at the largest N, exactly one call per bulk cycle) is missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import libvirt  # noqa: E402

from ceilometer_cmt.backends.libvirt import stats  # noqa: E402
from ceilometer_cmt.backends.libvirt.backend import LibvirtBackend  # noqa: E402
from ceilometer_cmt.testing import fakehost  # noqa: E402
from ceilometer_cmt.testing.libvirtd import LibvirtDaemon  # noqa: E402


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


Row = tuple[int, float, float, float, float, float, float, bool]


def measure(daemon: LibvirtDaemon, n: int, rounds: int) -> Row:
    insts = fakehost.make_instances(n)
    path = fakehost.write_node_xml(os.path.join(daemon.base_dir or "", f"node{n}.xml"), insts)
    uri = daemon.uri_for(path)
    refs = [i.ref for i in insts]
    backend = LibvirtBackend(uri)
    conn = libvirt.openReadOnly(uri)
    doms = [conn.lookupByUUIDString(i.uuid) for i in insts]
    groups = stats.STATS_GROUPS

    def rpc_only() -> None:
        conn.getAllDomainStats(groups, 0)

    def bulk() -> None:
        cycle = backend.sync(refs)
        assert len(cycle.unmonitored) == n  # the test driver reports no cache data

    def per_domain() -> None:
        for dom in doms:
            conn.domainListGetStats([dom], groups, 0)

    def ceilometer_23() -> None:
        # LibvirtInspector.inspect_instance: _get_domain_not_shut_off_or_raise
        # (lookupByUUIDString + info), memoryStats, domainListGetStats(all groups).
        for i in insts:
            dom = conn.lookupByUUIDString(i.uuid)
            dom.info()
            dom.memoryStats()
            conn.domainListGetStats([dom], 0, 0)

    try:
        for fn in (rpc_only, bulk, per_domain, ceilometer_23):  # warm up
            fn()
        t_rpc: list[float] = []
        t_bulk: list[float] = []
        t_per: list[float] = []
        t_c23: list[float] = []
        calls = []
        for _ in range(rounds):
            t_rpc.append(timed(rpc_only))
            before = backend.stats_calls
            t_bulk.append(timed(bulk))
            calls.append(backend.stats_calls - before)
            t_per.append(timed(per_domain))
            t_c23.append(timed(ceilometer_23))
    finally:
        backend.close()
        conn.close()
    r, b, p, c = (statistics.median(t) for t in (t_rpc, t_bulk, t_per, t_c23))
    return (n, r, b, p, c, p / b, c / b, all(x == 1 for x in calls))


def run(sizes: list[int], rounds: int) -> int:
    with LibvirtDaemon() as daemon:
        rows = [measure(daemon, n, rounds) for n in sizes]
    ok = all(row[7] for row in rows)
    v = libvirt.getVersion()
    print(f"libvirt {v // 1000000}.{v // 1000 % 1000} test driver over a unix socket, "
          f"median of {rounds} interleaved rounds")
    print(f"{'domains':>7} | {'bulk RPC':>9} | {'backend':>9} | {'per-domain':>10} | "
          f"{'ceilo<=23':>10} | {'x per-dom':>9} | {'x c<=23':>8} | calls/cycle")
    print("-" * 96)
    for n, r, b, p, c, r1, r2, one in rows:
        print(f"{n:>7} | {r * 1e3:>6.2f} ms | {b * 1e3:>6.2f} ms | {p * 1e3:>7.1f} ms | "
              f"{c * 1e3:>7.1f} ms | {r1:>8.1f}x | {r2:>7.1f}x | {'1' if one else 'NOT 1'}")
    print("bulk RPC = getAllDomainStats alone; backend = LibvirtBackend.sync() (the RPC, "
          "matching, parsing);\nper-domain = one domainListGetStats per pre-resolved domain; "
          "ceilo<=23 = lookupByUUIDString + info + memoryStats + domainListGetStats per "
          "instance.")
    largest = rows[-1]
    if largest[6] < 10:
        print(f"GOAL MISSED: {largest[6]:.1f}x < 10x against ceilometer <= 23 at {largest[0]}")
        ok = False
    if largest[5] < 10:
        print(f"note: {largest[5]:.1f}x against a bare one-call-per-domain loop at {largest[0]}")
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,500,1000")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    return run([int(s) for s in args.sizes.split(",")], args.rounds)


if __name__ == "__main__":
    sys.exit(main())
