"""Host cache topology from sysfs ``devices/system/cpu/cpu*/cache/index*/``.

Pure parsers plus one reader that takes the sysfs root as a value.
"""

from __future__ import annotations

import os
import re

from ceilometer_cmt.readings import CacheDomain, HostCache

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMG]?)\s*$", re.ASCII)
#: Beyond any kernel's NR_CPUS: a larger number is a malformed list, not a cpu.
MAX_CPU = 1 << 16
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


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


def _read(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read().strip()


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
                if int(_read(os.path.join(base, "level"))) != level:
                    continue
                ctype = _read(os.path.join(base, "type"))
                if ctype not in ("Unified", "Data"):
                    continue
                size = parse_size(_read(os.path.join(base, "size")))
                cpulist = _read(os.path.join(base, "shared_cpu_list"))
                parse_cpu_list(cpulist)
                try:
                    cache_id = int(_read(os.path.join(base, "id")))
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
