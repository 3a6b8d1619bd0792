"""The pidfiles of libvirt's qemu pid directory, listed again only when it changed.

:class:`PidDirWatch` maps each ``*.pid`` name in the directory to its inode
number. An inotify watch on the directory tells when a domain stopped,
started or restarted; until then one zero-timeout ``poll()`` per cycle
returns the cached map. Without inotify (watch limit, directory missing or
removed) the directory is listed every cycle instead.
"""

from __future__ import annotations

import os
import select

from inotify_simple import INotify
from inotify_simple import flags as iflags


class PidDirWatch:
    """The pidfile inodes of ``pid_dir``, re-listed only when inotify says it changed.

    Steady state costs one ``poll()`` with a zero timeout per cycle on the
    inotify fd (inotify_simple's own ``read(timeout=0)`` would cost an ioctl and
    a read as well). Without inotify (watch limit, no such directory) the
    directory is listed every cycle instead.
    """

    MASK = (iflags.CLOSE_WRITE | iflags.MOVED_FROM | iflags.MOVED_TO | iflags.CREATE
            | iflags.DELETE | iflags.DELETE_SELF | iflags.MOVE_SELF)

    def __init__(self, path: str) -> None:
        self.path = path
        self.inotify: INotify | None = None
        self.poller: select.poll | None = None
        self.cache: dict[str, int] | None = None
        self.scans = 0

    def _arm(self) -> None:
        try:
            inotify = INotify(nonblocking=True)
        except OSError:
            return
        try:
            inotify.add_watch(self.path, self.MASK)
        except OSError:
            inotify.close()
            return
        self.inotify = inotify
        self.poller = select.poll()
        self.poller.register(inotify.fileno(), select.POLLIN)

    def _drain(self) -> None:
        """Empty the queue; drop the watch when the kernel removed it."""
        assert self.inotify is not None
        if any(ev.mask & iflags.IGNORED for ev in self.inotify.read(timeout=0)):
            self.close()

    def inodes(self) -> dict[str, int]:
        if self.inotify is None:
            self._arm()
        elif self.cache is not None and self.poller is not None and not self.poller.poll(0):
            return self.cache
        else:
            self._drain()
        self.scans += 1
        try:
            with os.scandir(self.path) as it:
                found = {e.name: e.inode() for e in it if e.name.endswith(".pid")}
        except OSError:
            found = {}
        self.cache = found if self.inotify is not None else None
        return found

    def close(self) -> None:
        inotify, self.inotify = self.inotify, None
        self.poller = None
        self.cache = None
        if inotify is not None:
            inotify.close()
