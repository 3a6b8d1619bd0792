"""Host cache topology from sysfs ``devices/system/cpu/cpu*/cache/index*/``.

Pure parsers, one reader that takes the sysfs root as a value, and
:class:`HostCacheReader` for a caller that asks every polling cycle.

What the tree says changes only with CPU hotplug: the kernel makes a CPU's
``cache/`` directory when the CPU comes online and removes it when it goes
offline, and ``shared_cpu_list`` lists the online CPUs of a cache. Sizes and
ids stay. So :class:`HostCacheReader` walks the tree once and then reads only
``devices/system/cpu/online`` per call: a change of that list means a new
walk. Because ``online`` shows a CPU slightly before the kernel has made its
cache files, the walk is also redone every :data:`REFRESH_EVERY` calls, which
bounds how long a read that raced a hotplug can be served.
"""

from __future__ import annotations

import os
import re
import threading

from ceilometer_cmt.linux.files import read_attribute
from ceilometer_cmt.readings import CacheDomain, HostCache

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMG]?)\s*$", re.ASCII)
#: Beyond any kernel's NR_CPUS: a larger number is a malformed list, not a cpu.
MAX_CPU = 1 << 16
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
#: One walk of :class:`HostCacheReader` answers at most this many calls.
REFRESH_EVERY = 10


def parse_size(text: str) -> int:
    """``"266240K"`` -> bytes. Raises ValueError on anything else."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"not a cache size: {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_cpu_list(text: str) -> list[int]:
    """Kernel cpu list syntax (``"0-3,8,10-11"``) -> sorted cpu numbers."""
    text = text.strip()
    cpus: set[int] = set()
    if not text:
        return []
    for part in text.split(","):
        lo, sep, hi = part.partition("-")
        if not (lo.isascii() and lo.isdigit()) or (sep and not (hi.isascii() and hi.isdigit())):
            raise ValueError(f"not a cpu list: {text!r}")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first or last >= MAX_CPU:
            raise ValueError(f"not a cpu list: {text!r}")
        cpus.update(range(first, last + 1))
    return sorted(cpus)


def read_cache_domains(sysfs_root: str, level: int = 3) -> tuple[CacheDomain, ...]:
    """Every cache of ``level`` on the host, deduplicated per (level, id).

    A cache index directory with unreadable or malformed files is skipped;
    a host without such caches gives an empty tuple.
    """
    cpu_dir = os.path.join(sysfs_root, "devices", "system", "cpu")
    try:
        cpus = [e for e in os.listdir(cpu_dir) if re.fullmatch(r"cpu\d+", e)]
    except OSError:
        return ()
    found: dict[int, CacheDomain] = {}
    for cpu in sorted(cpus, key=lambda c: int(c[3:])):
        cache_dir = os.path.join(cpu_dir, cpu, "cache")
        try:
            indexes = [e for e in os.listdir(cache_dir) if re.fullmatch(r"index\d+", e)]
        except OSError:
            continue
        for index in indexes:
            base = os.path.join(cache_dir, index)
            try:
                if int(read_attribute(os.path.join(base, "level"))) != level:
                    continue
                ctype = read_attribute(os.path.join(base, "type"))
                if ctype not in ("Unified", "Data"):
                    continue
                size = parse_size(read_attribute(os.path.join(base, "size")))
                cpulist = read_attribute(os.path.join(base, "shared_cpu_list"))
                parse_cpu_list(cpulist)
                try:
                    cache_id = int(read_attribute(os.path.join(base, "id")))
                except FileNotFoundError:
                    # Old kernels have no id file: number caches by first cpu.
                    cache_id = parse_cpu_list(cpulist)[0]
            except (OSError, ValueError, IndexError):
                continue
            if cache_id not in found:
                found[cache_id] = CacheDomain(cache_id, level, size, ctype, cpulist)
    return tuple(found[k] for k in sorted(found))


def read_host_cache(sysfs_root: str, monitors_total: int | None = None) -> HostCache:
    return HostCache(read_cache_domains(sysfs_root), monitors_total, "sysfs")


def online_cpus(sysfs_root: str) -> str | None:
    """The text of ``devices/system/cpu/online`` (``"0-63"``); None when unreadable."""
    try:
        return read_attribute(os.path.join(sysfs_root, "devices", "system", "cpu", "online"))
    except (OSError, ValueError):
        return None


class HostCacheReader:
    """:func:`read_host_cache` for one sysfs root, without a tree walk per call.

    :meth:`get` walks the tree on the first call, when the online CPU list
    differs from the one of the last walk, and when the last walk has already
    answered ``refresh_every`` calls; otherwise it returns the last walk's
    result. Without a readable ``online`` file (no sysfs there), or when a
    walk finds no L3 at all, the next call walks again.
    """

    def __init__(self, sysfs_root: str, refresh_every: int = REFRESH_EVERY) -> None:
        self.sysfs_root = sysfs_root
        self.refresh_every = max(1, refresh_every)
        self.walks = 0  # tree walks so far
        self._lock = threading.Lock()  # a pollster can be in two polling tasks
        self._host: HostCache | None = None
        self._online: str | None = None
        self._served = 0  # calls answered by the last walk

    def get(self) -> HostCache:
        with self._lock:
            online = online_cpus(self.sysfs_root)
            if (self._host is None or online is None or online != self._online
                    or self._served >= self.refresh_every):
                host = read_host_cache(self.sysfs_root)
                self.walks += 1
                if not host.domains:  # nothing found (a failed walk?): not kept
                    self._host = None
                    return host
                self._host = host
                self._online, self._served = online, 0
            self._served += 1
            return self._host
