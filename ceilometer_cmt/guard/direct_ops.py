"""The guard's writes done in this process (:class:`ops.CatOps`, direct).

For a guard running as root and for the tests on the FUSE simulator; the
privileged daemon (``ceilometer_cmt.privsep``) implements the same protocol
with its own checks.  Every failure is an :class:`OSError` with the kernel's
errno; where the kernel explains it in ``info/last_cmd_status`` (a schemata
mask, "Out of CLOSIDs", "Can't move task to different control group") that
text is the exception's ``strerror`` (doc/kernel-facts-cat.md, sections 1-4).

The caller holds the resctrl root's flock around a sequence of these calls
(:class:`ceilometer_cmt.backends.resctrl.fs.RootLock`): ``last_cmd_status``
is global, and other tools (libvirt, pqos) change groups too.
"""

from __future__ import annotations

import errno
import os

from ceilometer_cmt.backends.resctrl import fs


def _kernel_text(root: str) -> str | None:
    text = fs.read_text(os.path.join(root, "info", "last_cmd_status"))
    if not text or text.strip() == "ok":
        return None
    return " / ".join(line for line in text.strip().splitlines() if line)


def _explained(root: str, e: OSError, path: str) -> OSError:
    """``e`` with the kernel's last_cmd_status text as strerror, when it has one."""
    text = _kernel_text(root)
    err = e.errno or errno.EIO
    return OSError(err, text or os.strerror(err), path)


def check_name(name: str, what: str) -> str:
    """A directory name directly below its parent: no path, never '.' or '..'."""
    if not name or "/" in name or "\n" in name or "\x00" in name or name in (".", ".."):
        raise OSError(errno.EINVAL, f"bad {what} name {name!r}")
    return name


class DirectCatOps:
    """:class:`ops.CatOps` by plain syscalls under ``root``; ``prefix`` names the
    agent's monitor groups (``<prefix><uuid>``), which monitoring follows."""

    def __init__(self, root: str, prefix: str = "ceilometer-") -> None:
        self.root = root
        self.prefix = check_name(prefix, "prefix")
        #: syscalls done (for tests: a dry run makes none)
        self.calls = 0

    def _ctrl(self, ctrl: str) -> str:
        """Path of control group ``ctrl`` ("" the default group)."""
        return self.root if ctrl == "" else os.path.join(self.root, check_name(ctrl, "group"))

    def make_ctrl_group(self, ctrl: str) -> None:
        if ctrl == "":
            raise OSError(errno.EINVAL, "the default group cannot be made")
        path = self._ctrl(ctrl)
        self.calls += 1
        try:
            os.mkdir(path)
        except OSError as e:
            raise _explained(self.root, e, path) from None

    def remove_ctrl_group(self, ctrl: str) -> None:
        if ctrl == "":
            raise OSError(errno.EPERM, "the default group cannot be removed")
        path = self._ctrl(ctrl)
        self.calls += 1
        try:
            os.rmdir(path)
        except OSError as e:
            raise _explained(self.root, e, path) from None

    def write_schemata(self, ctrl: str, lines: list[str]) -> None:
        path = os.path.join(self._ctrl(ctrl), "schemata")
        self.calls += 1
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            for line in lines:
                data = (line if line.endswith("\n") else line + "\n").encode("ascii")
                try:
                    os.write(fd, data)
                except OSError as e:
                    raise _explained(self.root, e, path) from None
        finally:
            os.close(fd)

    def move_threads(self, ctrl: str, uuid: str, domain_name: str,
                     tids: list[int]) -> list[tuple[int, int]]:
        """The monitor group is made first (when missing), so a refused mkdir
        (no free RMID) moves nothing; then each thread into ``<ctrl>/tasks``
        and into the monitor group's ``tasks``, one ``write()`` per thread.
        ``domain_name`` is for the privileged implementation's check."""
        base = self._ctrl(ctrl)
        mon = os.path.join(base, "mon_groups", check_name(self.prefix + uuid, "monitor group"))
        self.calls += 1
        try:
            os.mkdir(mon)
        except FileExistsError:
            pass
        except OSError as e:
            raise _explained(self.root, e, mon) from None
        failed = dict(fs.write_tasks(os.path.join(base, "tasks"), tids))
        moved = [tid for tid in tids if tid not in failed]
        if moved:
            failed.update(fs.write_tasks(os.path.join(mon, "tasks"), moved))
        self.calls += 2
        return sorted(failed.items())
