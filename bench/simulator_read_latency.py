#!/usr/bin/env python3
"""Read latency through the resctrl simulator (FUSE) against tmpfs.

Side by side, same process, same file names: open+read+close of one
``llc_occupancy`` file and of one ``tasks`` file, and a mkdir+rmdir of a
monitor group.  Prints microseconds per operation and the FUSE/tmpfs ratio.
Run as root: ``.venv/bin/python bench/simulator_read_latency.py [N]``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

from ceilometer_cmt.simulator import mount


def per_op(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def read(path: str) -> None:
    with open(path, "rb") as f:
        f.read()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    base = tempfile.mkdtemp(prefix="cmt-bench-", dir="/dev/shm")
    tmpfs = os.path.join(base, "tmpfs")
    os.makedirs(os.path.join(tmpfs, "mon_groups", "g", "mon_data", "mon_L3_00"))
    with open(os.path.join(tmpfs, "mon_groups", "g", "mon_data", "mon_L3_00",
                           "llc_occupancy"), "w") as f:
        f.write("12582912\n")
    with open(os.path.join(tmpfs, "mon_groups", "g", "tasks"), "w") as f:
        f.write("1234\n1235\n")
    try:
        with mount(os.path.join(base, "fuse"), "intel-2s") as sim:
            os.mkdir(os.path.join(sim.mountpoint, "mon_groups", "g"))
            rows = []
            for label, rel in (("llc_occupancy", "mon_groups/g/mon_data/mon_L3_00/llc_occupancy"),
                               ("tasks", "mon_groups/g/tasks")):
                a = per_op(lambda rel=rel: read(os.path.join(tmpfs, rel)), n)
                b = per_op(lambda rel=rel: read(os.path.join(sim.mountpoint, rel)), n)
                rows.append((f"read {label}", a, b))

            def cycle(root: str) -> None:
                p = os.path.join(root, "mon_groups", "x")
                os.mkdir(p)
                os.rmdir(p)

            sim.set_limbo(0)
            a = per_op(lambda: cycle(tmpfs), n // 10)
            b = per_op(lambda: cycle(sim.mountpoint), n // 10)
            rows.append(("mkdir+rmdir", a, b))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{'operation':16} {'tmpfs us':>10} {'FUSE us':>10} {'ratio':>7}")
    for label, a, b in rows:
        print(f"{label:16} {a:10.1f} {b:10.1f} {b / a:7.1f}")


if __name__ == "__main__":
    main()
