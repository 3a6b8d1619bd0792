"""affinity: thread CPU affinity from a fake /proc, mapped to L3 domains."""

from __future__ import annotations

import os
from typing import Any

from ceilometer_cmt.backends.resctrl.affinity import affinity_domains, cpu_domains, thread_cpus
from ceilometer_cmt.readings import CacheDomain, HostCache
from ceilometer_cmt.testing import mbm_assign_tree as abmc

HOST = HostCache((CacheDomain(0, 3, 32 << 20, cpus="0-7"), CacheDomain(1, 3, 32 << 20,
                                                                       cpus="8-15")))


def test_cpu_domains_and_thread_affinity(tmp_path: Any) -> None:
    cpu_map = cpu_domains(HOST)
    assert cpu_map == {**dict.fromkeys(range(8), 0), **dict.fromkeys(range(8, 16), 1)}
    proc = str(tmp_path)
    abmc.set_affinity(proc, 10, 10, "8-9")
    abmc.set_affinity(proc, 10, 11, "3,12")
    abmc.set_affinity(proc, 20, 20, "64-65")  # CPUs of no known L3
    assert thread_cpus(proc, 10, 10) == [8, 9]
    assert thread_cpus(proc, 10, 99) is None  # no such thread
    assert affinity_domains(proc, 10, [10], cpu_map) == {1}
    assert affinity_domains(proc, 10, [10, 11], cpu_map) == {0, 1}
    assert affinity_domains(proc, 10, [99], cpu_map) is None
    assert affinity_domains(proc, 20, [20], cpu_map) is None
    os.makedirs(os.path.join(proc, "30", "task", "30"))
    with open(os.path.join(proc, "30", "task", "30", "status"), "w") as f:
        f.write("Name:\tx\nCpus_allowed_list:\tgarbage\n")
    assert thread_cpus(proc, 30, 30) is None
