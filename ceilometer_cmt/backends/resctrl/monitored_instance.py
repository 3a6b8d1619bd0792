"""What the resctrl backend remembers of one monitored instance between cycles.

The identity of its qemu process (pid, pidfd, start time, the pidfile's
signature), the threads it placed and those it left in other tools' monitor
groups, and its own monitor groups by control group with the generation of
each: a group made again after it vanished gets new counter keys (``#<n>``),
the instance's other groups keep theirs, so no counter is counted twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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

    def key_suffix(self, ctrl: str) -> str:
        """The counter key suffix of our group in control group ``ctrl``."""
        n = self.generations.get(ctrl, 0)
        return f"#{n}" if n else ""
