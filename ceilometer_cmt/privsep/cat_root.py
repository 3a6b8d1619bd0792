"""The guard's CAT writes as the privileged daemon makes them, by name,
beneath the daemon's own resctrl root (:class:`ResctrlRoot`'s fd).

Each request is judged by :mod:`ceilometer_cmt.privsep.cat_rules` against
what the daemon reads under the lock: ``info/<L3|L3CODE|L3DATA>`` and the
default group's ``schemata`` for the lines, ``info/*/num_closids`` and the
control groups for the CLOSID reserve, every control group's ``tasks`` for
where the threads are.

The lock: the kernel document asks every tool that changes groups to hold
``flock(LOCK_EX)`` on the resctrl root (resctrl.rst "Locking between
applications"; libvirt's ``virResctrlLock``), and the daemon holds it during
each request. A client may hold it itself around a cycle (the guard does,
so two guards never act twice): when the holder is the daemon's client
(the peer of its privsep socket, :func:`set_client`, or an ancestor when
oslo.privsep forked the daemon; or the daemon's own pid, a request in
process as in the tests), the daemon writes under that client's lock;
another holder is waited for :data:`LOCK_WAIT`
seconds, then the request fails with EWOULDBLOCK.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ceilometer_cmt.backends.resctrl.fs import NOT_GROUPS
from ceilometer_cmt.guard import cbm
from ceilometer_cmt.privsep import cat_rules
from ceilometer_cmt.privsep.resctrl_root import ResctrlRoot, _write_each
from ceilometer_cmt.privsep.rules import check_tids, check_uuid, refuse

_DIR = os.O_RDONLY | os.O_DIRECTORY
#: seconds the daemon waits for another tool's flock on the root
LOCK_WAIT = 10.0
#: the daemon's client (the peer of its privsep socket), set by the helper
_clients: set[int] = set()


def set_client(pid: int) -> None:
    """The pid of the process that started this daemon and talks to it
    (``SO_PEERCRED`` of the privsep socket): the helper's daemon is forked
    off and orphaned, so the client is not among its ancestors."""
    _clients.add(pid)


class CatRoot:
    """Cap groups made, written, filled and removed by name."""

    def __init__(self, root: ResctrlRoot, closid_reserve: int = -1,
                 proc: str = "/proc") -> None:
        self.root = root
        self.closid_reserve = closid_reserve
        self.proc = proc

    # ------------------------------------------------------------ the lock
    @contextmanager
    def _locked(self) -> Iterator[int]:
        """The daemon's lock and the root's flock; yields an fd on the root."""
        with self.root._lock, self.root._open("", _DIR) as fd:
            held = _flock(fd, self.proc)
            try:
                yield fd
            finally:
                if held:
                    fcntl.flock(fd, fcntl.LOCK_UN)

    # ------------------------------------------------------------ reading
    def _ctrl_groups(self, fd: int) -> list[str]:
        with os.scandir(fd) as it:
            return sorted(e.name for e in it
                          if e.name not in NOT_GROUPS and e.is_dir(follow_symlinks=False))

    def num_closids(self) -> int | None:
        """The smallest ``info/*/num_closids`` (every resource's CLOSIDs count)."""
        values = []
        for name in self.root._listdir("info"):
            text = (self.root._read(f"info/{name}/num_closids") or "").strip()
            if text.isdigit():
                values.append(int(text))
        return min(values) if values else None

    def cache_info(self) -> tuple[dict[str, cbm.CacheInfo], cbm.Schemata]:
        """``info/<name>`` of each L3 schemata name the default group has,
        and the default group's masks."""
        try:
            default = cbm.parse_schemata(self.root._read("schemata") or "")
        except cbm.CbmError as e:
            raise refuse(cat_rules.RULE_SCHEMATA, f"the default group's schemata: {e}",
                         err=errno.EIO) from None
        infos = {}
        for name in cat_rules.CACHE_NAMES:
            if name not in default:
                continue

            def read(f: str, name: str = name) -> str:
                return (self.root._read(f"info/{name}/{f}") or "").strip()

            try:
                infos[name] = cbm.CacheInfo(
                    int(read("cbm_mask"), 16), int(read("min_cbm_bits") or "1"),
                    read("sparse_masks") == "1", int(read("shareable_bits") or "0", 16))
            except (ValueError, cbm.CbmError):
                continue  # no usable info: its lines are refused
        return infos, default

    def _last_cmd_status(self) -> str:
        return (self.root._read("info/last_cmd_status") or "").strip()

    # ------------------------------------------------------------ operations
    def make(self, ctrl: object) -> None:
        """``mkdir <ctrl>`` for a cap group, unless it eats into the CLOSID
        reserve; MBM counters the kernel gave it past their reserve go back."""
        name = cat_rules.check_cap_group(ctrl, self.root.prefix)
        with self._locked() as fd:
            num = self.num_closids()
            if num is not None:
                cat_rules.check_closids(num, len(self._ctrl_groups(fd)), self.closid_reserve)
            try:
                os.mkdir(name, dir_fd=fd)
            except OSError as e:
                raise OSError(e.errno, self._last_cmd_status() or e.strerror, name) from None
            # a control group has its own RMID: mbm_assign_on_mkdir gave it
            # counters too, and those past the MBM counter reserve go back
            self.root._give_back(name)

    def remove(self, ctrl: object) -> None:
        """``rmdir <ctrl>`` of a cap group (its tasks go back to the default group)."""
        name = cat_rules.check_cap_group(ctrl, self.root.prefix)
        with self._locked() as fd:
            os.rmdir(name, dir_fd=fd)

    def write_schemata(self, ctrl: object, lines: object) -> None:
        """Each checked line, in the daemon's own text, with its own ``write()``
        to the cap group's ``schemata``; the first the kernel refuses raises
        with ``info/last_cmd_status`` as the text (lines before it stay)."""
        name = cat_rules.check_cap_group(ctrl, self.root.prefix)
        with self._locked():
            infos, default = self.cache_info()
            wanted = cat_rules.check_schemata_lines(lines, infos, default)
            with self.root._open(f"{name}/schemata", os.O_WRONLY) as out:
                for line in wanted:
                    try:
                        os.write(out, line.encode("ascii"))
                    except OSError as e:
                        status = self._last_cmd_status()
                        raise OSError(e.errno, f"{line.strip()}: {status or e.strerror}",
                                      f"{name}/schemata") from None

    def move_threads(self, ctrl: object, uuid: object, domain_name: object,
                     tids: object) -> list[tuple[int, int]]:
        """Threads of ``domain_name``'s qemu into control group ``ctrl`` (a cap
        group, or "" to go back to the default group), then into its monitor
        group ``<prefix><uuid>`` (made if missing). Only threads in the
        default group or a cap group move; back to the default group only
        those in a cap group (the others are there already). (tid, errno)
        of those that failed."""
        ctrl = "" if ctrl == "" else cat_rules.check_cap_group(ctrl, self.root.prefix)
        mon = f"{ctrl}/mon_groups" if ctrl else "mon_groups"
        name = self.root.prefix + check_uuid(uuid)
        wanted = check_tids(tids)
        if not isinstance(domain_name, str):
            raise refuse("names", "the domain name must be a string")
        qemu = self.root.rule.qemu_of(domain_name)
        try:
            gone = self.root.rule.check_threads(qemu, wanted)
            with self._locked() as fd:
                members = {g: self._tasks(g) for g in self._ctrl_groups(fd)}
                in_default = cat_rules.check_origins(wanted, members, self.root.prefix)
                taken = sorted(in_default & self.root._foreign_members(""))
                if taken:
                    raise refuse(cat_rules.RULE_THREADS, f"thread(s) {taken[:8]} sit in "
                                 "another tool's monitor group; they stay there")
                moving = [t for t in wanted if not (ctrl == "" and t in in_default)]
                if not moving:
                    return []  # back to the default group: all there already
                with self.root._open(f"{ctrl}/tasks" if ctrl else "tasks", os.O_WRONLY) as out:
                    failed = _write_each(out, moving, gone, qemu.alive)
                if name not in self.root._listdir(mon):
                    self.root.mkdir_held(ctrl, name)
                bad = {t for t, _ in failed}
                with self.root._open(f"{mon}/{name}/tasks", os.O_WRONLY) as out:
                    failed += _write_each(out, [t for t in moving if t not in bad],
                                          gone, qemu.alive)
                return failed
        finally:
            qemu.close()

    def _tasks(self, ctrl: str) -> set[int]:
        try:
            with self.root._open(f"{ctrl}/tasks", os.O_RDONLY) as fd:
                chunks = []
                while chunk := os.read(fd, 65536):
                    chunks.append(chunk)
        except FileNotFoundError:
            return set()  # removed meanwhile
        return {int(t) for t in b"".join(chunks).split() if t.isdigit()}


def _flock(fd: int, proc: str) -> bool:
    """Take the root's flock (True), or find it held by the daemon's own
    client (False); EWOULDBLOCK after :data:`LOCK_WAIT` seconds otherwise."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            holders = flock_holders(fd, proc)
            if holders & (ancestors(proc) | _clients | {os.getpid()}):
                return False
            if time.monotonic() >= deadline:
                raise OSError(errno.EWOULDBLOCK, "resctrl is locked (flock on its root) by "
                              f"process(es) {sorted(holders)} for more than {LOCK_WAIT:.0f} s"
                              ) from None
            time.sleep(0.05)


def flock_holders(fd: int, proc: str = "/proc") -> set[int]:
    """Pids holding a FLOCK on ``fd``'s inode, from ``/proc/locks``."""
    st = os.fstat(fd)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    out = set()
    with open(os.path.join(proc, "locks"), encoding="ascii", errors="replace") as f:
        for line in f:
            fields = line.split()
            # "1: FLOCK  ADVISORY  WRITE 1234 00:2f:1 0 EOF"; waiters have "->"
            if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == key:
                if fields[4].isdigit():
                    out.add(int(fields[4]))
    return out


def ancestors(proc: str = "/proc") -> set[int]:
    """The daemon's parent, its parent, and so on (not init)."""
    out: set[int] = set()
    pid = os.getppid()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            with open(os.path.join(proc, str(pid), "stat"), encoding="ascii",
                      errors="replace") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out
