"""Intel AET telemetry on resctrl: the ``PERF_PKG`` resource of Linux 7.0.

What the kernel offers (``Documentation/filesystems/resctrl.rst``,
``fs/resctrl/ctrlmondata.c``, ``arch/x86/kernel/cpu/resctrl/intel_aet.c``):

- ``info/PERF_PKG_MON/num_rmids`` (``"%d\\n"``) and
  ``info/PERF_PKG_MON/mon_features`` (one event per line); the directory
  exists only when the kernel enabled AET;
- ``<group>/mon_data/mon_PERF_PKG_<XX>/<event>``, one directory per
  physical package, the id in two digits (``"mon_%s_%02d"``);
- ``core_energy`` (Joules) and ``activity`` (Farads) are fixed point with 18
  fraction bits, printed by ``print_event_value()`` as ``"%llu.%0*llu\\n"``
  with ``decplaces[binary_bits]`` decimals (6 for 18 bits, at most 9); the
  other events print ``"%llu\\n"``; ``Unavailable`` (no aggregator had valid
  data) and ``Error`` (MMIO index out of range) when there is no value;
- groups can use the smaller of ``L3_MON`` and ``PERF_PKG_MON``'s
  ``num_rmids``.

The plugin reads only the events its meters need
(:data:`~ceilometer_cmt.readings.TELEMETRY_EVENTS`) that ``mon_features``
lists. Fixed-point values are parsed exactly into integer 10**-9 units
(:data:`~ceilometer_cmt.readings.NANO`): no float, so a tiny value is never
rounded to 0 and two reads never differ by a rounding error. Value files
stay open and are re-read with ``pread`` as in :mod:`.values`, within the
same fd budget.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from ceilometer_cmt.backends.resctrl import fs
from ceilometer_cmt.readings import (
    CORE_ENERGY,
    NANO,
    TELEMETRY_EVENTS,
    TelemetryReading,
)

LOG = logging.getLogger(__name__)

INFO_DIR = "PERF_PKG_MON"
#: the events printed as fixed point (``is_floating_point`` in ``mon_event_all[]``)
FIXED_POINT = frozenset({CORE_ENERGY, "activity"})
#: most decimals ``print_event_value()`` prints (``MAX_BINARY_BITS`` 27)
MAX_DECIMALS = 9
_PACKAGE_RE = re.compile(r"^mon_PERF_PKG_(\d+)$")
_GONE = (errno.ENODEV, errno.ENOENT)
#: 10**(9 - decimals): what one unit of the last printed digit is worth
_SCALE: tuple[int, ...] = tuple(10 ** (MAX_DECIMALS - d) for d in range(MAX_DECIMALS + 1))


def _no_number(data: bytes) -> fs.ValueMissing:
    text = data.decode("ascii", "replace").strip()
    if text in fs.NO_DATA_WORDS:
        return fs.ValueMissing(text)
    return fs.ValueMissing(f"malformed value {text[:32]!r}")


def parse_fixed(data: bytes) -> int:
    """A fixed-point value as the kernel prints it (``"12.345678\\n"``) ->
    integer 10**-9 units (12345678000), exactly; :class:`fs.ValueMissing`
    for ``Unavailable``, ``Error`` or anything else. A plain integer is taken
    as whole units."""
    body = data.strip()
    whole, dot, frac = body.partition(b".")
    # bytes.isdigit: ASCII digits only
    if whole.isdigit():
        if not dot:
            return int(whole) * NANO
        if frac.isdigit() and len(frac) <= MAX_DECIMALS:
            return int(whole) * NANO + int(frac) * _SCALE[len(frac)]
    raise _no_number(data)


def parse_count(data: bytes) -> int:
    """An integer event (``"%llu\\n"``) -> its count; :class:`fs.ValueMissing`
    otherwise."""
    body = data.strip()
    if body.isdigit():
        return int(body)
    raise _no_number(data)


@dataclass(frozen=True)
class PerfPkgInfo:
    """``info/PERF_PKG_MON`` and the packages of ``mon_data``."""

    num_rmids: int | None
    mon_features: tuple[str, ...]  # every event listed, in the kernel's order
    packages: tuple[tuple[int, str], ...]  # (package id, mon_data directory name)

    @property
    def events(self) -> tuple[str, ...]:
        """The events the plugin reads that this host has."""
        return tuple(e for e in TELEMETRY_EVENTS if e in self.mon_features)


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def list_packages(group_path: str) -> list[tuple[int, str]]:
    """(package id, directory name) of ``<group>/mon_data/mon_PERF_PKG_*``."""
    out = []
    try:
        with os.scandir(os.path.join(group_path, "mon_data")) as it:
            for e in it:
                m = _PACKAGE_RE.match(e.name)
                if m:
                    out.append((int(m.group(1)), e.name))
    except OSError:
        return []
    return sorted(out)


def read_info(root: str) -> PerfPkgInfo | None:
    """The host's AET telemetry, or None when ``info/PERF_PKG_MON`` is absent
    (a kernel before 7.0, a CPU without AET, or AET off: ``rdt=!perf``)."""
    info = os.path.join(root, "info", INFO_DIR)
    if not os.path.isdir(info):
        return None
    feats = _read_text(os.path.join(info, "mon_features")) or ""
    rmids = (_read_text(os.path.join(info, "num_rmids")) or "").strip()
    return PerfPkgInfo(num_rmids=int(rmids) if rmids.isdigit() else None,
                       mon_features=tuple(feats.split()),
                       packages=tuple(list_packages(root)))


def wanted_events(info: PerfPkgInfo, events: Collection[str] | None) -> tuple[str, ...]:
    """The host's telemetry events the plugin reads, less those not in
    ``events`` (None: all of them)."""
    return tuple(e for e in info.events if events is None or e in events)


def group_limit(l3_rmids: int | None, perf_pkg: PerfPkgInfo | None) -> int | None:
    """How many monitoring ids groups can use: the smaller of L3_MON's and
    PERF_PKG_MON's ``num_rmids`` (either alone when the other is unknown)."""
    if perf_pkg is None or perf_pkg.num_rmids is None:
        return l3_rmids
    if l3_rmids is None:
        return perf_pkg.num_rmids
    return min(l3_rmids, perf_pkg.num_rmids)


class _TelemetryFile:
    __slots__ = ("fd", "path", "event", "key", "fixed")

    def __init__(self, path: str, event: str, key: str) -> None:
        self.fd = -1
        self.path, self.event, self.key = path, event, key
        self.fixed = event in FIXED_POINT


class FdBudget(Protocol):
    """What the readers may keep open; :class:`.values.ValueReader` is one
    (``fd_budget``, ``open_fds``), so that both share one budget."""

    fd_budget: int
    open_fds: int


class TelemetryReader:
    """Reads the ``mon_PERF_PKG_XX`` values of monitor groups through kept fds.

    ``events``: the events to read (those the polled meters need, see
    :attr:`ceilometer_cmt.meters.Meter.events`); None: every one the plugin
    reads that the host has. The others are never opened: their meters get
    no sample. (AET events are read without a cross-CPU call, ``any_cpu``,
    but each read still sums MMIO counters of every aggregator.)"""

    def __init__(self, info: PerfPkgInfo, budget: FdBudget,
                 events: Collection[str] | None = None) -> None:
        self.packages = list(info.packages)
        self.events = wanted_events(info, events)
        self.budget = budget
        self._groups: dict[str, list[_TelemetryFile]] = {}

    def _files(self, path: str, ctrl: str, gen: str) -> list[_TelemetryFile]:
        files = []
        budget = self.budget
        for pkg_id, pkg_dir in self.packages:
            for event in self.events:
                f = _TelemetryFile(os.path.join(path, "mon_data", pkg_dir, event), event,
                          f"{ctrl}/{pkg_id}{gen}")
                if budget.open_fds < budget.fd_budget:
                    try:
                        f.fd = os.open(f.path, os.O_RDONLY | os.O_CLOEXEC)
                        budget.open_fds += 1
                    except OSError:
                        pass  # opened at each read, where errors are handled
                files.append(f)
        self._groups[path] = files
        return files

    def read(self, out: TelemetryReading, path: str, ctrl: str, gen: str) -> None:
        """Add the group's values to ``out`` (event -> key -> value; None: no
        data). Never raises for a value: a vanished group is the L3 reader's
        to tell (it reads first); here its values are None."""
        files = self._groups.get(path) or self._files(path, ctrl, gen)
        pread = os.pread
        for f in files:
            value: int | None
            try:
                if f.fd < 0:
                    budget = self.budget
                    fd = os.open(f.path, os.O_RDONLY | os.O_CLOEXEC)
                    if budget.open_fds < budget.fd_budget:
                        f.fd = fd
                        budget.open_fds += 1
                        data = pread(fd, 64, 0)
                    else:
                        try:
                            data = os.read(fd, 64)
                        finally:
                            os.close(fd)
                else:
                    data = pread(f.fd, 64, 0)
                value = parse_fixed(data) if f.fixed else parse_count(data)
            except fs.ValueMissing as e:
                value = None
                LOG.debug("%s %s: %s", path, f.event, e.reason)
            except OSError as e:
                value = None
                LOG.debug("%s %s: %s", path, f.event, e)
                if e.errno in _GONE and f.fd >= 0:  # a removed kernfs file never answers
                    self._close(f)
            event = out.get(f.event)
            if event is None:
                event = out[f.event] = {}
            event[f.key] = value

    def _close(self, f: _TelemetryFile) -> None:
        os.close(f.fd)
        f.fd = -1
        self.budget.open_fds -= 1

    def forget(self, path: str) -> None:
        for f in self._groups.pop(path, ()):
            if f.fd >= 0:
                self._close(f)

    def close(self) -> None:
        for path in list(self._groups):
            self.forget(path)
