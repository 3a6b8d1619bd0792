"""Reading the ``mon_data`` values of monitor groups, cheaply.

A resctrl value file is a kernfs ``seq_file``: a read at offset 0 runs the
kernel's show function again, so a file kept open and read with
``pread(fd, 64, 0)`` gives a fresh value with one syscall instead of three
(open, read, close). Files stay open within an fd budget; past it they are
opened for each read. A group removed behind our back makes kernfs answer
ENODEV on its open files (ENOENT when opened anew): :class:`GroupVanished`,
also when a group of the same name was made again meanwhile (its directory
is another inode: its counters are new, and our threads may not be in it).
An L3 domain going offline (all its CPUs) takes ``mon_L3_<id>`` out of
every group while the groups stay: its occupancy is left out (it caches
nothing now) and its MBM counters are None (no data) until it comes back,
under the same keys: a counter that went on is not counted twice, and the
monitor's decrease-means-reset rule covers one that restarted.

Where a value lies is found once per group and remembered: the top-level
``mon_L3_<id>/<event>`` file (always there with the kernel's SNC support,
which makes it the sum of the nodes), or on an SNC layout without it the
``mon_sub_L3_*/<event>`` files, summed at each read without a failed open
first. When the remembered place is gone (ENOENT, ENODEV) it is looked for
again as :func:`fs.read_group_event` does.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
from collections.abc import Mapping
from typing import Any

from ceilometer_cmt.backends.resctrl import fs
from ceilometer_cmt.readings import (
    LLC_OCCUPANCY,
    MBM_LOCAL_BYTES,
    MBM_TOTAL_BYTES,
    InstanceReading,
)

LOG = logging.getLogger(__name__)


class Slot(enum.IntEnum):
    """Which of an :class:`InstanceReading`'s dicts a value file fills: the
    index into ``(occupancy, mbm_total, mbm_local)``."""

    OCCUPANCY = 0
    MBM_TOTAL = 1
    MBM_LOCAL = 2


_SLOTS = {LLC_OCCUPANCY: Slot.OCCUPANCY, MBM_TOTAL_BYTES: Slot.MBM_TOTAL,
          MBM_LOCAL_BYTES: Slot.MBM_LOCAL}
_GONE = (errno.ENODEV, errno.ENOENT)
_OFFLINE = -1  # _read_again: the value's L3 domain is offline (never a count)


class GroupVanished(Exception):
    """The monitor group's files are gone."""

    def __init__(self, path: str) -> None:
        super().__init__(f"monitor group {path} vanished")
        self.path = path


class _ValueFile:
    __slots__ = ("fd", "path", "slot", "key", "dom_dir", "event", "subs")

    def __init__(self, path: str, slot: Slot, key: Any, dom_dir: str, event: str) -> None:
        self.fd = -1
        self.path, self.slot, self.key = path, slot, key
        self.dom_dir, self.event = dom_dir, event
        #: SNC without a top-level file: the sub-node files whose values are
        #: summed; None: the value is in ``path``
        self.subs: list[str] | None = None


class ValueReader:
    def __init__(self, domains: list[tuple[int, str]], events: tuple[str, ...],
                 fd_budget: int) -> None:
        self.domains = domains
        self.events = events
        self.fd_budget = fd_budget
        self.open_fds = 0
        #: appended to every MBM key (a new counter configuration: new keys);
        #: who changes it forgets every group
        self.key_tag = ""
        #: groups where a value read ``Unassigned`` (mbm_event mode: no
        #: counter there now); who acts on it takes the path out
        self.unassigned: set[str] = set()
        self._groups: dict[str, list[_ValueFile]] = {}
        #: group path -> inode of its directory when its files were found
        self._inodes: dict[str, int | None] = {}

    def _files(self, path: str, ctrl: str, gen: str,
               mbm: Mapping[str, Mapping[int, str]] | None) -> list[_ValueFile]:
        files = self._groups.get(path)
        if files is None:
            files = []
            try:
                self._inodes[path] = os.stat(path).st_ino
            except OSError:
                self._inodes[path] = None  # read() tells what is there
            for dom_id, dom_dir in self.domains:
                for event in self.events:
                    slot = _SLOTS[event]
                    if slot is Slot.OCCUPANCY:
                        key: Any = dom_id
                    else:
                        suffix = "" if mbm is None else mbm.get(event, {}).get(dom_id)
                        if suffix is None:
                            continue  # no counter assigned: not read at all
                        key = f"{ctrl}/{dom_id}{gen}{suffix}{self.key_tag}"
                    f = _ValueFile(os.path.join(path, "mon_data", dom_dir, event), slot, key,
                              dom_dir, event)
                    if self.open_fds < self.fd_budget:
                        try:
                            f.fd = os.open(f.path, os.O_RDONLY | os.O_CLOEXEC)
                            self.open_fds += 1
                        except FileNotFoundError:
                            # SNC without a top-level file: the nodes' files
                            # are read instead (or the group is gone: read()
                            # tells); never an exception here, so that the fds
                            # opened so far stay in the group's list
                            with contextlib.suppress(OSError):
                                self._locate(f)
                        except OSError:
                            # any other refusal: opened at each read, where
                            # errors are handled
                            pass
                    files.append(f)
            self._groups[path] = files
        return files

    def read(self, reading: InstanceReading, path: str, ctrl: str, gen: str,
             mbm: Mapping[str, Mapping[int, str]] | None = None) -> None:
        """Add the group's values to ``reading``; raise GroupVanished. The
        occupancy of a domain that ``reading`` already holds (from the
        instance's group in another control group) is summed with it.

        ``mbm`` (``mbm_event`` mode): MBM event -> the domains where the group
        holds a counter -> the suffix of its key; the other MBM files are not
        read. It is taken when the group's files are first found: who
        changes it calls :meth:`forget` first."""
        targets: tuple[dict[Any, int | None], ...] = (
            reading.occupancy, reading.mbm_total, reading.mbm_local)
        occupancy = reading.occupancy
        merge = bool(occupancy)
        pread, parse, read_file = os.pread, fs.parse_value, fs.read_value_file
        files = self._groups.get(path) or self._files(path, ctrl, gen, mbm)
        for f in files:
            value: int | None
            try:
                if f.fd >= 0:
                    value = parse(pread(f.fd, 64, 0))
                elif f.subs is None:
                    if self.open_fds < self.fd_budget:  # room now: keep it open
                        f.fd = os.open(f.path, os.O_RDONLY | os.O_CLOEXEC)
                        self.open_fds += 1
                        value = parse(pread(f.fd, 64, 0))
                    else:
                        value = read_file(f.path)
                else:
                    value = sum(map(read_file, f.subs))
            except fs.ValueMissing as e:
                value = None
                LOG.debug("%s %s %s: %s", path, f.dom_dir, f.event, e.reason)
                if e.reason == "Unassigned":
                    self.unassigned.add(path)
            except OSError as e:
                if e.errno not in _GONE:
                    raise
                value = self._read_again(path, f)
                if value == _OFFLINE:
                    if f.slot is Slot.OCCUPANCY:
                        continue
                    value = None
            if merge and f.slot is Slot.OCCUPANCY and f.key in occupancy:
                prev = occupancy[f.key]
                value = None if value is None or prev is None else prev + value
            targets[f.slot][f.key] = value

    def _locate(self, f: _ValueFile) -> list[str]:
        """Find where ``f``'s value lies now and remember it (see module doc)."""
        files = fs.find_event_files(os.path.dirname(f.path), f.event)
        f.subs = files if files and files[0] != f.path else None
        return files

    def _read_again(self, path: str, f: _ValueFile) -> int | None:
        """The remembered place of the value is gone (ENODEV on a kept fd,
        ENOENT on an open): the group was removed, or made again under the same
        name (GroupVanished); else its domain went offline (``_OFFLINE``) or the
        layout changed (read where the value is now)."""
        if f.fd >= 0:  # a removed kernfs file never answers again
            os.close(f.fd)
            f.fd = -1
            self.open_fds -= 1
        try:
            ino: int | None = os.stat(path).st_ino
        except FileNotFoundError:
            ino = None
        if ino is None or ino != self._inodes.get(path):
            self.forget(path)
            raise GroupVanished(path)
        domain_path = os.path.dirname(f.path)
        try:
            return fs.sum_event_files(domain_path, f.event, self._locate(f))
        except fs.ValueMissing as e:
            LOG.debug("%s %s %s: %s", path, f.dom_dir, f.event, e.reason)
        except FileNotFoundError:  # the group is there, the domain is not: offline
            LOG.debug("%s %s: L3 domain offline", path, f.dom_dir)
            return _OFFLINE
        return None

    def forget(self, path: str) -> None:
        self._inodes.pop(path, None)
        self.unassigned.discard(path)
        for f in self._groups.pop(path, ()):
            if f.fd >= 0:
                os.close(f.fd)
                f.fd = -1
                self.open_fds -= 1

    def close(self) -> None:
        for path in list(self._groups):
            self.forget(path)
