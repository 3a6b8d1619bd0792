"""What the resctrl backend remembers of one monitored instance between cycles.

The identity of its qemu process (pid, pidfd, start time, the pidfile's
signature; :meth:`MonitoredInstance.resolve` checks it and lists its
threads), the threads it placed and those it left in other tools' monitor
groups, and its own monitor groups by control group with the generation of
each: a group made again after it vanished gets new counter keys (``#<n>``),
the instance's other groups keep theirs, so no counter is counted twice.

In ``mbm_event`` mode (:mod:`mbm_counters`) also the L3 domains its threads
may run in, the MBM counters each of its groups holds and, per (control
group, event, domain), how many times a counter was newly assigned there:
each new assignment restarts the hardware count, so its values get a new
key (``~<n>``) as a recreated group's do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ceilometer_cmt.errors import InstanceGone
from ceilometer_cmt.linux import procfs
from ceilometer_cmt.linux.process_watch import PidfdWatch, start_time


@dataclass
class MonitoredInstance:
    uuid: str
    domain_name: str
    pid: int | None = None
    pidfile_sig: tuple[int, int] | None = None
    start_time: int | None = None  # /proc/<pid>/stat field 22: tells a reused pid
    pidfd: int | None = None  # holds the very process (see process_watch)
    settled: bool = False  # the last thread listing found nothing new
    foreign: set[int] = field(default_factory=set)  # threads left in others' groups
    stagger: int = 0  # spreads the periodic re-listing over cycles
    assigned: set[int] = field(default_factory=set)
    #: control group name ("" = default) -> absolute path of our monitor group
    groups: dict[str, str] = field(default_factory=dict)
    #: control group name -> times our monitor group there was recreated; its
    #: counters get new keys then, the instance's other groups keep theirs
    generations: dict[str, int] = field(default_factory=dict)
    #: control groups whose monitor group of ours held none of its threads at
    #: the last read of its tasks (they moved to another control group): its
    #: occupancy is stale lines, left out; its MBM values are read while it
    #: holds counters, which go to a waiting group in mbm_event mode
    idle: set[str] = field(default_factory=set)

    #: mbm_event mode: the L3 domains its threads may run in (None: unknown, all)
    mbm_domains: frozenset[int] | None = None
    #: mbm_event mode: control group -> event -> domains where our group holds
    #: a counter (a control group missing: its group's file not read yet)
    mbm_held: dict[str, dict[str, frozenset[int]]] = field(default_factory=dict)
    #: control groups where our group was just made by mkdir: the counters
    #: the kernel gave it then are not yet held by policy (see mbm_counters)
    made: set[str] = field(default_factory=set)
    #: (control group, event, domain) -> times a counter was newly assigned
    mbm_gens: dict[tuple[str, str, int], int] = field(default_factory=dict)
    #: ``cmt:mbm_priority`` of the instance (the higher, the sooner served)
    priority: int = 0
    #: the backend cycle it was first seen in: the smaller, the older
    since: int = 0

    def mbm_keys(self, ctrl: str) -> dict[str, dict[int, str]]:
        """event -> domain -> counter key suffix of the MBM counters our
        group in ``ctrl`` holds (see :meth:`key_suffix`)."""
        gens = self.mbm_gens
        return {ev: {d: f"~{gens[(ctrl, ev, d)]}" if gens.get((ctrl, ev, d)) else ""
                     for d in doms}
                for ev, doms in self.mbm_held.get(ctrl, {}).items()}

    def key_suffix(self, ctrl: str) -> str:
        """The counter key suffix of our group in control group ``ctrl``."""
        n = self.generations.get(ctrl, 0)
        return f"#{n}" if n else ""

    def resolve(self, proc_root: str, pid_dir: str, watch: PidfdWatch,
                exited: set[int]) -> list[int]:
        """Current TIDs of the instance's qemu, re-resolved when the process
        changed (``exited``: the pidfds ``watch`` found exited this cycle)."""
        if self.pid is not None:
            if self.pidfd is not None:
                if self.pidfd not in exited:
                    try:
                        return list(procfs.list_tids(proc_root, self.pid))
                    except InstanceGone:
                        pass
            else:
                try:
                    st = os.stat(os.path.join(pid_dir, self.domain_name + ".pid"))
                    if ((st.st_ino, st.st_mtime_ns) == self.pidfile_sig
                            and start_time(proc_root, self.pid) == self.start_time):
                        return list(procfs.list_tids(proc_root, self.pid))
                except (FileNotFoundError, InstanceGone):
                    pass
        watch.unwatch(self.pidfd)
        self.pid = self.pidfd = None
        self.settled = False
        proc = procfs.find_qemu_process(pid_dir, proc_root, self.domain_name)
        st = os.stat(os.path.join(pid_dir, self.domain_name + ".pid"))
        self.pidfile_sig = (st.st_ino, st.st_mtime_ns)
        self.start_time = start_time(proc_root, proc.pid)
        self.pidfd = watch.watch(proc.pid)
        self.pid = proc.pid
        return list(proc.tids)
