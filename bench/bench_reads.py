#!/usr/bin/env python3
"""Value reads per polling cycle for polling configurations, and the cycle time.

Every read of a resctrl L3 value file makes the kernel run the read on a CPU
of that domain (``mon_event_read()`` in ``fs/resctrl/ctrlmondata.c``:
``smp_call_on_cpu()``, or an IPI through ``smp_call_function_any()`` when the
CPU is ``nohz_full``): the agent disturbs the VMs it measures. The plugin
reads only the events of the meters polling.yaml polls. For each
configuration this script builds a resctrl fixture tree on a tmpfs (the
simulator's topology, ``kernel_trees``/``perf_pkg_tree``), a fake ``/proc``
with one qemu per instance, runs ``CacheMonitor.poll()`` on a
``ResctrlBackend`` given the events that ceilometer's own ``PollingSource``
matching selects, and counts every value read of one steady-state cycle
exactly: each ``os.pread`` of a kept fd plus each open of a value file (a
read past the fd budget), by event. Then it times ``--runs`` cycles.

    python bench/bench_reads.py [--instances 500] [--runs 21] [--write-doc]
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from bench_resctrl import IndexedKernelOps  # noqa: E402
from ceilometer.polling.manager import PollingSource  # noqa: E402

from ceilometer_cmt import meters  # noqa: E402
from ceilometer_cmt.backends.resctrl.backend import ResctrlBackend  # noqa: E402
from ceilometer_cmt.monitor import CacheMonitor  # noqa: E402
from ceilometer_cmt.readings import InstanceRef  # noqa: E402
from ceilometer_cmt.simulator.topology import Topology, get_topology  # noqa: E402
from ceilometer_cmt.testing.kernel_trees import (  # noqa: E402
    build_proc,
    build_resctrl,
    build_sysfs,
    file_calls,
    qemu_cmdline,
)
from ceilometer_cmt.testing.perf_pkg_tree import add_group_files, build_perf_pkg  # noqa: E402

DOC = os.path.join(ROOT, "doc", "benchmarks.md")
SECTION = "## Reads per cycle by polling configuration"
L3_EVENTS = (meters.LLC_OCCUPANCY, meters.MBM_TOTAL_BYTES, meters.MBM_LOCAL_BYTES)


@dataclass(frozen=True)
class Config:
    name: str
    topology: str
    patterns: tuple[str, ...]  # a polling.yaml source's ``meters``


CONFIGS = (
    Config("cache.occupancy only", "intel-2s", ("cache.occupancy",)),
    Config("occupancy + MBM total/local", "intel-2s",
           ("cache.occupancy", "memory.bandwidth.*")),
    Config("every meter (`*`; before: always)", "intel-2s", ("*",)),
    Config("every meter (`*`) on intel-aet", "intel-aet", ("*",)),
    Config("cpu.ipc only on intel-aet", "intel-aet", ("cpu.ipc",)),
)


def polled_events(patterns: tuple[str, ...]) -> frozenset[str]:
    """As the agent's runtime decides it: ceilometer's own source matching."""
    source = PollingSource({"name": "bench", "interval": 60, "meters": list(patterns)})
    return meters.events_of(m for m in meters.TABLE if source.support_meter(m.name))


class AetKernelOps(IndexedKernelOps):
    """New groups also get their ``mon_PERF_PKG_XX`` files."""

    packages: tuple[int, ...] = ()

    def mkdir(self, path: str) -> None:
        super().mkdir(path)
        add_group_files(path, self.packages)


@contextmanager
def host(topo: Topology, n: int) -> Iterator[tuple[list[InstanceRef], str, str, str, str]]:
    """Fixture trees of ``topo`` with ``n`` instances on a tmpfs, removed after:
    (refs, sysfs, resctrl, proc, pid dir)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = tempfile.mkdtemp(prefix="cmt-bench-reads-", dir=base)
    try:
        sysfs = build_sysfs(os.path.join(work, "sys"), topo)
        rc = build_resctrl(os.path.join(work, "resctrl"), topo)
        if topo.packages:
            build_perf_pkg(rc, tuple(p.id for p in topo.packages),
                           num_rmids=topo.perf_pkg_rmids)
        proc = os.path.join(work, "proc")
        pid_dir = os.path.join(work, "run")
        os.makedirs(pid_dir)
        refs = []
        for i in range(n):
            name = f"instance-{i + 1:08x}"
            pid = 10000 + i
            build_proc(proc, pid, qemu_cmdline(name), [pid])
            with open(os.path.join(pid_dir, name + ".pid"), "w", encoding="ascii") as f:
                f.write(f"{pid}\n")
            refs.append(InstanceRef(str(uuidlib.UUID(int=(0xBEAD << 112) | (i + 1))), name))
        yield refs, sysfs, rc, proc, pid_dir
    finally:
        shutil.rmtree(work)


def count_reads(monitor: CacheMonitor, refs: list[InstanceRef], rc: str
                ) -> collections.Counter[str]:
    """Value reads of one cycle by event: preads of kept fds and value-file opens."""
    fds: collections.Counter[int] = collections.Counter()
    real = os.pread

    def pread(fd: int, n: int, off: int) -> bytes:
        fds[fd] += 1
        return real(fd, n, off)

    os.pread = pread  # type: ignore[assignment]
    try:
        with file_calls(rc) as calls:
            monitor.poll(refs)
    finally:
        os.pread = real
    out: collections.Counter[str] = collections.Counter()
    for fd, n in fds.items():
        path = os.readlink(f"/proc/self/fd/{fd}")
        if "/mon_data/" in path:
            out[os.path.basename(path)] += n
    for path in calls.opens:
        if "/mon_data/" in path:
            out[os.path.basename(path)] += 1
    return out


def run(cfg: Config, n: int, runs: int) -> dict[str, object]:
    topo = get_topology(cfg.topology)
    events = polled_events(cfg.patterns)
    with host(topo, n) as (refs, sysfs, rc, proc, pid_dir):
        ops = AetKernelOps(rc, topo, proc_root=proc)
        ops.packages = tuple(p.id for p in topo.packages)
        backend = ResctrlBackend(rc, sysfs_root=sysfs, proc_root=proc, pid_dir=pid_dir,
                                 verify_mount=False, ops=ops, events=events)
        monitor = CacheMonitor(backend)
        first = monitor.poll(refs)
        assert not first.unmonitored and len(first.instances) == n
        monitor.poll(refs)  # steady state from here
        reads = count_reads(monitor, refs, rc)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            monitor.poll(refs)
            times.append(time.perf_counter() - t0)
        backend.close()
    l3 = {e: c for e, c in reads.items() if e in L3_EVENTS}
    pkg = {e: c for e, c in reads.items() if e not in l3}
    return {"cfg": cfg, "events": sorted(events), "l3": l3, "pkg": pkg,
            "l3_per": sum(l3.values()) / (n * len(topo.l3_ids)),
            "pkg_per": sum(pkg.values()) / (n * len(topo.packages)) if topo.packages else 0,
            "domains": len(topo.l3_ids), "packages": len(topo.packages),
            "median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3}


def table(results: list[dict[str, object]], n: int) -> list[str]:
    lines = ["| polling.yaml meters | host | value reads in one cycle, by event "
             "| L3 reads per instance and domain | PERF_PKG reads per instance and package "
             "| cycle, median (min) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        cfg = r["cfg"]
        assert isinstance(cfg, Config)
        l3, pkg = r["l3"], r["pkg"]
        assert isinstance(l3, dict) and isinstance(pkg, dict)
        lines.append(
            f"| {cfg.name}: `{', '.join(cfg.patterns)}` | {cfg.topology} "
            f"({r['domains']} L3{', ' + str(r['packages']) + ' packages' if r['packages'] else ''})"
            f" | {', '.join(f'{e} {c}' for e, c in sorted({**l3, **pkg}.items())) or 'none'}"
            f" | {r['l3_per']:g} | {r['pkg_per']:g} "
            f"| {r['median_ms']:.1f} ms ({r['min_ms']:.1f}) |")
    return lines


def write_doc(lines: list[str], n: int, runs: int) -> None:
    """Replace (or add) only this script's section of doc/benchmarks.md."""
    body = [SECTION, "",
            f"`python bench/bench_reads.py --instances {n} --runs {runs}` "
            f"({time.strftime('%Y-%m-%d')}, {platform.node()}, Python "
            f"{platform.python_version()}, fixture trees on tmpfs, {n} instances):", "",
            *lines, "", READING, ""]
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    start = text.find(SECTION + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + "\n".join(body)
    else:
        nxt = text.find("\n## ", start + len(SECTION))
        end = len(text) if nxt < 0 else nxt + 1
        text = text[:start] + "\n".join(body) + ("\n" if nxt >= 0 else "") + text[end:]
    with open(DOC, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {os.path.relpath(DOC, ROOT)} ({SECTION[3:]} section)")


READING = """Reading:

- The reads are counted, not estimated: every `pread` of a kept value file and
  every open of one in a steady-state `CacheMonitor.poll()`, by event.
- The events come from the polled meters (`Meter.events` in
  `ceilometer_cmt/meters.py`), matched as ceilometer matches a source's
  `meters` (names, `*`, `!` exclusions); the agent's runtime does the same with
  its `[polling] cfg_file`.
- On real resctrl each L3 read is one `mon_event_read()`
  (`fs/resctrl/ctrlmondata.c`): the read runs on a CPU of that L3 domain
  (`smp_call_on_cpu()`, or an IPI via `smp_call_function_any()` on a
  `nohz_full` CPU), so occupancy alone costs a third of the interruptions of
  the three L3 events. `PERF_PKG` (Intel AET) events are `any_cpu`: read
  without a cross-CPU call, but each read sums the MMIO counters of every
  aggregator of the package.
- A meter whose events were not read gives no sample (never 0).
- Cycle times are of fixture trees on tmpfs, where a read costs microseconds;
  on real resctrl the cross-CPU call of each L3 read costs more, and the
  saving grows with it."""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=500)
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--write-doc", action="store_true")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 40 * args.instances + 1024))  # room for every value file
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    results = [run(cfg, args.instances, args.runs) for cfg in CONFIGS]
    lines = table(results, args.instances)
    print("\n".join(lines))
    if args.write_doc:
        write_doc(lines, args.instances, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
