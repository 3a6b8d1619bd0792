"""Reading the ``mon_data`` values of monitor groups, cheaply.

A resctrl value file is a kernfs ``seq_file``: a read at offset 0 runs the
kernel's show function again, so a file kept open and read with
``pread(fd, 64, 0)`` gives a fresh value with one syscall instead of three
(open, read, close). Files stay open within an fd budget; past it they are
opened for each read. A group removed behind our back makes kernfs answer
ENODEV on its open files (ENOENT when opened anew): :class:`GroupVanished`.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any

from ceilometer_cmt import resctrl
from ceilometer_cmt.readings import InstanceReading

LOG = logging.getLogger(__name__)
_KINDS = {"llc_occupancy": 0, "mbm_total_bytes": 1, "mbm_local_bytes": 2}
_GONE = (errno.ENODEV, errno.ENOENT)


class GroupVanished(Exception):
    """The monitor group's files are gone."""

    def __init__(self, path: str) -> None:
        super().__init__(f"monitor group {path} vanished")
        self.path = path


class _File:
    __slots__ = ("fd", "path", "kind", "key", "dom_dir", "event")

    def __init__(self, path: str, kind: int, key: Any, dom_dir: str, event: str) -> None:
        self.fd = -1
        self.path, self.kind, self.key = path, kind, key
        self.dom_dir, self.event = dom_dir, event


class ValueReader:
    def __init__(self, domains: list[tuple[int, str]], events: tuple[str, ...],
                 fd_budget: int) -> None:
        self.domains = domains
        self.events = events
        self.fd_budget = fd_budget
        self.open_fds = 0
        self._groups: dict[str, list[_File]] = {}

    def _files(self, path: str, ctrl: str, gen: str) -> list[_File]:
        files = self._groups.get(path)
        if files is None:
            files = []
            for dom_id, dom_dir in self.domains:
                for event in self.events:
                    kind = _KINDS[event]
                    key = dom_id if kind == 0 else f"{ctrl}/{dom_id}{gen}"
                    f = _File(os.path.join(path, "mon_data", dom_dir, event), kind, key,
                              dom_dir, event)
                    if self.open_fds < self.fd_budget:
                        try:
                            f.fd = os.open(f.path, os.O_RDONLY | os.O_CLOEXEC)
                            self.open_fds += 1
                        except OSError:
                            # SNC without a top-level file (read_event sums the
                            # nodes), or any other refusal: opened at each read,
                            # where errors are handled; the fds opened so far
                            # stay in the group's list, so forget() closes them
                            pass
                    files.append(f)
            self._groups[path] = files
        return files

    def read(self, reading: InstanceReading, path: str, ctrl: str, gen: str,
             several: bool) -> None:
        """Add the group's values to ``reading`` (occupancy summed when the
        instance has ``several`` groups); raise GroupVanished."""
        targets: tuple[dict[Any, int | None], ...] = (
            reading.occupancy, reading.mbm_total, reading.mbm_local)
        occupancy = reading.occupancy
        pread, value_of, read_value = os.pread, resctrl.value_of, resctrl.read_value
        files = self._groups.get(path) or self._files(path, ctrl, gen)
        for f in files:
            value: int | None
            try:
                if f.fd >= 0:
                    value = value_of(pread(f.fd, 64, 0))
                else:
                    value = read_value(f.path)
            except resctrl.ValueMissing as e:
                value = None
                LOG.debug("%s %s %s: %s", path, f.dom_dir, f.event, e.reason)
            except OSError as e:
                if e.errno not in _GONE:
                    raise
                value = self._read_slow(path, f)
            if several and f.kind == 0 and f.key in occupancy:
                prev = occupancy[f.key]
                value = None if value is None or prev is None else prev + value
            targets[f.kind][f.key] = value

    def _read_slow(self, path: str, f: _File) -> int | None:
        """SNC layout without the top-level file, or the group is gone."""
        try:
            return resctrl.read_event(path, f.dom_dir, f.event)
        except resctrl.ValueMissing as e:
            LOG.debug("%s %s %s: %s", path, f.dom_dir, f.event, e.reason)
            return None
        except FileNotFoundError as e:
            self.forget(path)
            raise GroupVanished(path) from e

    def forget(self, path: str) -> None:
        for f in self._groups.pop(path, ()):
            if f.fd >= 0:
                os.close(f.fd)
                f.fd = -1
                self.open_fds -= 1

    def close(self) -> None:
        for path in list(self._groups):
            self.forget(path)
