"""Which host processes a scenario's load entries describe.

Matching by ``comm``/``cmdline`` needs a walk of ``/proc``; it is cached for
``scan_interval`` wall-clock seconds and dropped whenever the resctrl state
changes (a ``tasks`` write, mkdir, rmdir), so a process started just before
its tids are assigned is always seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ceilometer_cmt.simulator import procfs
from ceilometer_cmt.simulator.scenario import ProcessLoad, Scenario


class ProcessMatcher:
    def __init__(
        self,
        scenario: Scenario,
        proc_root: str,
        scan_interval: float = 0.5,
        wall: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loads = scenario.processes
        self._proc_root = proc_root
        self._scan_interval = scan_interval
        self._wall = wall
        self._cache: dict[int, ProcessLoad] | None = None
        self._cached_at = 0.0
        self._needs_scan = any(p.match.pid is None for p in self._loads)

    def invalidate(self) -> None:
        self._cache = None

    def matched(self) -> dict[int, ProcessLoad]:
        """pid -> the first load entry matching it (pids that exist now)."""
        now = self._wall()
        if self._cache is not None and now - self._cached_at < self._scan_interval:
            return self._cache
        found: dict[int, ProcessLoad] = {}
        for load in self._loads:
            pid = load.match.pid
            if (pid is not None and pid not in found
                    and procfs.task_start(self._proc_root, pid) is not None):
                found[pid] = load
        if self._needs_scan:
            for pid in procfs.all_pids(self._proc_root):
                if pid in found:
                    continue
                names = procfs.comm_and_cmdline(self._proc_root, pid)
                if names is None:
                    continue
                for load in self._loads:
                    if load.match.pid is None and load.match.matches(pid, *names):
                        found[pid] = load
                        break
        self._cache = found
        self._cached_at = now
        return found
