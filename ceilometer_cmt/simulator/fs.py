"""FUSE operations (mfusepy, libfuse 3) over a simulator :class:`Model`.

Kernel-like file behaviour:
* content is made at the first read of an open file and again at each read at
  offset 0, later reads continue from that snapshot (as seq_file does), so a
  ``read()`` that takes two calls sees one consistent value;
* each ``write()`` reaches the model once, with its exact bytes; an error
  comes back as that write's errno;
* opening a read-only file for writing is EACCES even for root (kernfs);
* state is kept per open handle (libfuse 3 gives no path for a file removed
  while open); reading a file of a removed group gives ENOENT.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import threading
import time
from dataclasses import dataclass
from typing import Any

from ceilometer_cmt.simulator.errors import SimError
from ceilometer_cmt.simulator.groups import Caller
from ceilometer_cmt.simulator.layout import FSTYPE, SUBTYPE
from ceilometer_cmt.simulator.model import Model
from ceilometer_cmt.simulator.tree import Dir, File, Node, resolve

os.environ["FUSE_LIBRARY_NAME"] = "fuse3"  # mfusepy would pick libfuse 2 first

import mfusepy  # noqa: E402  (must come after FUSE_LIBRARY_NAME)

__all__ = ["FSTYPE", "SUBTYPE", "ResctrlOperations", "serve_forever"]


@dataclass
class _Handle:
    node: File
    snapshot: bytes | None = None


def _parts(path: str | None) -> tuple[str, ...]:
    if path is None:
        raise mfusepy.FuseOSError(errno.ENOENT)
    return tuple(p for p in path.split("/") if p)


def _caller() -> Caller:
    uid, _gid, pid = mfusepy.fuse_get_context()
    return Caller(uid=uid, pid=pid)


class ResctrlOperations(mfusepy.Operations):  # type: ignore[misc]
    """Do not add attributes named ``lock``, ``init`` or ``destroy``: mfusepy
    would register them as FUSE operations."""

    use_ns = True

    def __init__(self, model: Model) -> None:
        self.model = model
        self._handles: dict[int, _Handle] = {}
        self._next = itertools.count(1)
        self._handles_mutex = threading.Lock()
        self._mtime = time.time_ns()
        self.served = False

    def init(self, path: str) -> None:
        self.served = True  # mounted and answering

    # ------------------------------------------------------------ helpers
    def _node(self, path: str | None) -> Node:
        try:
            return resolve(self.model, _parts(path))
        except SimError as e:
            raise mfusepy.FuseOSError(e.errno) from None

    def _handle(self, fh: int) -> _Handle:
        with self._handles_mutex:
            handle = self._handles.get(fh)
        if handle is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        if handle.node.group is not None and handle.node.group.deleted:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return handle

    # --------------------------------------------------------- attributes
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        node = self._node(path)
        times = {"st_atime": self._mtime, "st_mtime": self._mtime, "st_ctime": self._mtime}
        if isinstance(node, Dir):
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, "st_size": 0, **times}
        return {"st_mode": stat.S_IFREG | node.mode, "st_nlink": 1, "st_size": 0, **times}

    def readdir(self, path: str, fh: int) -> list[str]:
        node = self._node(path)
        if not isinstance(node, Dir):
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        return [".", "..", *node.entries]

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}

    # -------------------------------------------------------------- files
    def open(self, path: str, flags: int) -> int:
        node = self._node(path)
        if not isinstance(node, File):
            raise mfusepy.FuseOSError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY and node.write is None:
            raise mfusepy.FuseOSError(errno.EACCES)
        fh = next(self._next)
        with self._handles_mutex:
            self._handles[fh] = _Handle(node)
        return fh

    def release(self, path: str | None, fh: int) -> int:
        with self._handles_mutex:
            self._handles.pop(fh, None)
        return 0

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        handle = self._handle(fh)
        if offset == 0 or handle.snapshot is None:
            try:
                handle.snapshot = handle.node.read().encode("utf-8", "surrogateescape")
            except SimError as e:
                raise mfusepy.FuseOSError(e.errno) from None
        return handle.snapshot[offset : offset + size]

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        handle = self._handle(fh)
        if handle.node.write is None:
            raise mfusepy.FuseOSError(errno.EACCES)
        try:
            handle.node.write(bytes(data), _caller())
        except SimError as e:
            raise mfusepy.FuseOSError(e.errno) from None
        return len(data)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        self._node(path)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        self._node(path)
        return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        raise mfusepy.FuseOSError(errno.EACCES)

    def mknod(self, path: str, mode: int, dev: int) -> int:
        raise mfusepy.FuseOSError(errno.EACCES)

    def unlink(self, path: str) -> int:
        raise mfusepy.FuseOSError(errno.EPERM)

    def symlink(self, target: str, source: str) -> int:
        raise mfusepy.FuseOSError(errno.EPERM)

    def chmod(self, path: str, mode: int) -> int:
        raise mfusepy.FuseOSError(errno.EPERM)

    def chown(self, path: str, uid: int, gid: int) -> int:
        raise mfusepy.FuseOSError(errno.EPERM)

    # -------------------------------------------------------- directories
    def mkdir(self, path: str, mode: int) -> int:
        try:
            self.model.mkdir(_parts(path))
        except SimError as e:
            raise mfusepy.FuseOSError(e.errno) from None
        return 0

    def rmdir(self, path: str) -> int:
        try:
            self.model.rmdir(_parts(path))
        except SimError as e:
            raise mfusepy.FuseOSError(e.errno) from None
        return 0

    def rename(self, old: str, new: str) -> int:
        try:
            self.model.rename(_parts(old), _parts(new))
        except SimError as e:
            raise mfusepy.FuseOSError(e.errno) from None
        return 0


def serve_forever(model: Model, mountpoint: str, debug: bool = False) -> None:
    """Mount and serve in this thread until unmounted or SIGINT/SIGTERM.

    Raises RuntimeError when the mount itself failed; a signal after a
    successful mount is a normal end (libfuse 3 then returns the signal
    number, which mfusepy turns into RuntimeError).
    """
    ops = ResctrlOperations(model)
    try:
        _fuse(ops, mountpoint, debug)
    except RuntimeError:
        if not ops.served:
            raise


def _fuse(ops: ResctrlOperations, mountpoint: str, debug: bool) -> None:
    mfusepy.FUSE(
        ops,
        mountpoint,
        foreground=True,
        debug=debug,
        fsname="resctrl",
        subtype=SUBTYPE,
        direct_io=True,
        default_permissions=True,
        allow_other=os.geteuid() == 0,
        auto_unmount=True,
        # kernfs keeps no stale names: a removed group's or an offline
        # domain's directory is gone at once (FUSE would keep its entry 1 s)
        entry_timeout=0,
    )
