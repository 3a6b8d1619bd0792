"""resctrl as the privileged daemon touches it: by names, beneath its own root fd.

The agent sends names, never paths: a control group ("" for the default
one), an instance uuid or one of our monitor group names, a libvirt domain
and thread ids. The daemon:

- opens its own ``[cmt] resctrl_root`` once, ``O_PATH|O_DIRECTORY|O_NOFOLLOW``,
  and accepts it only when ``fstatfs`` says resctrl (``RDTGROUP_SUPER_MAGIC``),
  or, when its own config sets ``[cmt_privsep] allow_simulator``, the
  ceilometer-cmt simulator: FUSE, subtype ``cmt-resctrl-sim``, mounted by root
  (``user_id=0``). It opens it again when something else is mounted there
  later (an unmount and a new mount), and checks that again;
- resolves every name beneath that fd (:mod:`ceilometer_cmt.linux.beneath`), makes
  and removes directories with ``mkdirat``/``unlinkat`` relative to the
  ``mon_groups`` fd, opens ``tasks`` write-only from there;
- makes no monitor group that would eat into a reserve of RMIDs kept for
  control groups (libvirt ``<cachetune>`` needs one RMID per control group:
  ``rdtgroup_mkdir_ctrl_mon`` allocates it in ``fs/resctrl/rdtgroup.c``);
- writes MBM counter assignments (``mbm_L3_assignments``, Linux 6.18
  ``mbm_event`` mode) only to its own monitor groups, and only lines that
  :func:`~ceilometer_cmt.privsep.rules.check_assignment_lines` passes, one
  ``write()`` per line;
- keeps a reserve of free MBM counters per domain for other tools
  (:mod:`~ceilometer_cmt.privsep.counter_reserve`): refuses lines that would
  take ``info/L3_MON/available_mbm_cntrs`` below it, and gives back at once
  what ``mbm_assign_on_mkdir`` took past it when it makes a group;
- writes only threads of the named guest's qemu (:class:`QemuRule`), and none
  that sit in another tool's monitor group of that control group. (A thread of
  another control group cannot be pulled in through a monitor group at all:
  the kernel answers EINVAL, "Can't move task to different control group",
  ``__rdtgroup_move_task`` in ``fs/resctrl/rdtgroup.c``.)
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ceilometer_cmt.backends.resctrl.assign_files import parse_assignments, parse_domain_values
from ceilometer_cmt.backends.resctrl.fs import ASSIGNMENTS_FILE, NOT_GROUPS, SIMULATOR_FSTYPE
from ceilometer_cmt.linux import beneath
from ceilometer_cmt.privsep import counter_reserve
from ceilometer_cmt.privsep.rules import (
    QemuRule,
    check_assignment_lines,
    check_ctrl,
    check_group_name,
    check_tids,
    check_uuid,
    log_once,
    refuse,
)

_DIR = os.O_RDONLY | os.O_DIRECTORY


class ResctrlRoot:
    """The daemon's resctrl: monitor groups with its prefix, made, removed and
    filled by name. Thread-safe (privsep serves requests from a pool)."""

    def __init__(self, path: str, prefix: str, rule: QemuRule, *,
                 allow_simulator: bool = False, rmid_reserve: int = -1,
                 counter_reserve: int = -1, use_openat2: bool | None = None) -> None:
        self.path = path
        self.prefix = prefix
        self.rule = rule
        self.allow_simulator = allow_simulator
        self.rmid_reserve = rmid_reserve
        self.counter_reserve = counter_reserve
        self.use_openat2 = use_openat2
        self._fd: int | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ the root
    def _root(self) -> int:
        """The root fd, opened and checked; again when the mount there changed."""
        try:
            now = os.stat(self.path)
        except OSError as e:
            raise refuse("mount", f"{self.path} cannot be reached: {e.strerror}") from None
        if self._fd is not None:
            held = os.fstat(self._fd)
            if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                return self._fd
            os.close(self._fd)
            self._fd = None
        fd = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            self._verify(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return fd

    def _verify(self, fd: int) -> None:
        magic = beneath.fs_magic(fd)
        if magic == beneath.RDTGROUP_SUPER_MAGIC:
            return
        if magic == beneath.FUSE_SUPER_MAGIC:
            mount = beneath.mount_of(fd)
            if mount.fstype != SIMULATOR_FSTYPE:
                raise refuse("mount", f"{self.path} is a {mount.fstype} mount, not resctrl")
            if not self.allow_simulator:
                raise refuse("mount", f"{self.path} is the ceilometer-cmt simulator, which "
                                      "this daemon's own config does not allow "
                                      "([cmt_privsep] allow_simulator)")
            if "user_id=0" not in mount.super_options:
                raise refuse("mount", f"the simulator at {self.path} was not mounted by root "
                                      f"({','.join(mount.super_options)})")
            return
        raise refuse("mount", f"{self.path} is not a resctrl mount (filesystem magic "
                              f"{magic:#x}, resctrl is {beneath.RDTGROUP_SUPER_MAGIC:#x})")

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    @contextmanager
    def _open(self, path: str, flags: int) -> Iterator[int]:
        """An fd on ``path`` beneath the root ("" is the root itself)."""
        try:
            if not path:
                fd = os.open(".", flags | os.O_CLOEXEC, dir_fd=self._root())
            else:
                fd = beneath.open_beneath(self._root(), path, flags,
                                          use_openat2=self.use_openat2)
        except OSError as e:
            if e.errno in beneath.ESCAPES:
                raise refuse("beneath", f"{path} leads through a symlink or out of "
                                        f"{self.path}") from None
            raise
        try:
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _mon_groups(ctrl: str) -> str:
        return f"{ctrl}/mon_groups" if ctrl else "mon_groups"

    def _read(self, path: str) -> str | None:
        try:
            with self._open(path, os.O_RDONLY) as fd:
                return os.read(fd, 4096).decode("ascii", "replace")
        except OSError:
            return None

    def _listdir(self, path: str) -> list[str]:
        with self._open(path, _DIR) as fd:
            return os.listdir(fd)

    # ------------------------------------------------------------ RMIDs
    def reserve(self) -> int:
        """RMIDs never handed out: the option, or ``info/L3/num_closids`` (at least 1)."""
        if self.rmid_reserve >= 0:
            return self.rmid_reserve
        text = (self._read("info/L3/num_closids") or "").strip()
        return max(1, int(text)) if text.isdigit() else 1

    def rmids_in_use(self) -> int:
        """The default group, each control group and each monitor group hold one."""
        used = 1 + len(self._listdir("mon_groups"))
        for name in self._listdir(""):
            if name not in NOT_GROUPS:
                try:
                    used += 1 + len(self._listdir(f"{name}/mon_groups"))
                except (OSError, ValueError):
                    pass  # a file (tasks, schemata...), or removed meanwhile
        return used

    def _check_budget(self) -> None:
        text = (self._read("info/L3_MON/num_rmids") or "").strip()
        if not text.isdigit():
            return  # the kernel itself will refuse if it has no RMID
        total, reserve, used = int(text), self.reserve(), self.rmids_in_use()
        if used + 1 > total - reserve:
            raise refuse("rmid-reserve", f"no monitor group made: {used} of {total} RMIDs are "
                                         f"in use and {reserve} are kept in reserve for "
                                         "control groups such as libvirt <cachetune> "
                                         "([cmt_privsep] rmid_reserve)", err=errno.ENOSPC)

    # ------------------------------------------------------------ MBM counters
    def counters(self) -> tuple[dict[int, int] | None, dict[int, int]]:
        """``info/L3_MON/available_mbm_cntrs`` now (None outside ``mbm_event``
        mode, where the kernel answers EINVAL) and the reserve per domain."""
        available = parse_domain_values(self._read("info/L3_MON/available_mbm_cntrs"))
        if available is None:
            return None, {}
        num = parse_domain_values(self._read("info/L3_MON/num_mbm_cntrs"))
        return available, counter_reserve.counter_reserve(self.counter_reserve, num, available)

    def _give_back(self, group: str) -> None:
        """Release what ``mbm_assign_on_mkdir`` gave the new ``group`` in
        domains now short of the reserve (the kernel assigns on mkdir
        whatever is free: ``rdtgroup_assign_cntrs()``, fs/resctrl/monitor.c)."""
        available, reserve = self.counters()
        if available is None or all(available[d] >= reserve[d] for d in available):
            return
        path = f"{group}/{ASSIGNMENTS_FILE}"
        lines = counter_reserve.counters_past_reserve(
            available, parse_assignments(self._read(path)), reserve)
        if not lines:
            return
        log_once(counter_reserve.RULE, "gave back MBM counters that mkdir took",
                 f"{group}: {''.join(lines).strip()!r} (free: {available}, kept: {reserve})")
        try:
            with self._open(path, os.O_WRONLY) as fd:
                for line in lines:
                    os.write(fd, line.encode("ascii"))
        except OSError as e:  # the group stands: the agent sees what it holds
            log_once(counter_reserve.RULE, "could not give back MBM counters",
                     f"{group}: {e}")

    # ------------------------------------------------------------ operations
    def mkdir(self, ctrl: object, uuid: object) -> None:
        """Make our group; counters the kernel gave it past the reserve go back."""
        ctrl, name = check_ctrl(ctrl), self.prefix + check_uuid(uuid)
        with self._lock:
            self.mkdir_held(ctrl, name)

    def mkdir_held(self, ctrl: str, name: str) -> None:
        """:meth:`mkdir` of checked names, the caller holding the lock."""
        with self._open(self._mon_groups(ctrl), _DIR) as mon:
            self._check_budget()
            os.mkdir(name, dir_fd=mon)
            self._give_back(f"{self._mon_groups(ctrl)}/{name}")

    def rmdir(self, ctrl: object, name: object) -> None:
        ctrl, name = check_ctrl(ctrl), check_group_name(name, self.prefix)
        with self._lock, self._open(self._mon_groups(ctrl), _DIR) as mon:
            os.rmdir(name, dir_fd=mon)

    def write_tasks(self, ctrl: object, uuid: object, domain_name: object,
                    tids: object) -> list[tuple[int, int]]:
        """Each tid with its own ``write()``; (tid, errno) of those that failed."""
        ctrl, name = check_ctrl(ctrl), self.prefix + check_uuid(uuid)
        wanted = check_tids(tids)
        if not isinstance(domain_name, str):
            raise refuse("names", "the domain name must be a string")
        qemu = self.rule.qemu_of(domain_name)
        try:
            gone = self.rule.check_threads(qemu, wanted)
            with self._lock:
                held = self._foreign_members(ctrl)
                taken = sorted(set(wanted) & held)
                if taken:
                    raise refuse("foreign-group", f"thread(s) {taken[:8]} sit in another "
                                                  "tool's monitor group; they stay there")
                with self._open(f"{self._mon_groups(ctrl)}/{name}/tasks",
                                os.O_WRONLY) as fd:
                    return _write_each(fd, wanted, gone, qemu.alive)
        finally:
            qemu.close()

    def write_assignments(self, ctrl: object, uuid: object,
                          lines: object) -> list[tuple[str, int]]:
        """Each checked line with its own ``write()`` to the
        ``mbm_L3_assignments`` of our group ``<prefix><uuid>`` in ``ctrl``:
        (line, errno) of those the kernel refused (ENOSPC: no free counter,
        ``info/last_cmd_status`` says where). Nothing is written when any
        name or line is refused, or when the lines would take a domain's
        free counters below the reserve (ENOSPC, rule ``mbm-counter-reserve``)."""
        ctrl, name = check_ctrl(ctrl), self.prefix + check_uuid(uuid)
        wanted = check_assignment_lines(lines)
        path = f"{self._mon_groups(ctrl)}/{name}/{ASSIGNMENTS_FILE}"
        failures = []
        with self._lock, self._open(path, os.O_WRONLY) as fd:
            if any("=e" in line for line in wanted):
                available, reserve = self.counters()
                counter_reserve.check_counter_reserve(
                    wanted, available, parse_assignments(self._read(path)), reserve)
            for line in wanted:
                try:
                    os.write(fd, line.encode("ascii"))
                except OSError as e:
                    failures.append((line, e.errno or errno.EIO))
        return failures

    def _foreign_members(self, ctrl: str) -> set[int]:
        """Threads in the monitor groups of ``ctrl`` that are not ours."""
        out: set[int] = set()
        base = self._mon_groups(ctrl)
        for group in self._listdir(base):
            if not group.startswith(self.prefix):
                text = self._read(f"{base}/{group}/tasks") or ""
                out.update(int(t) for t in text.split() if t.isdigit())
        return out


def _write_each(fd: int, tids: list[int], gone: set[int],
                alive: Callable[[], bool]) -> list[tuple[int, int]]:
    failures = []
    for tid in tids:
        # a thread that exited, or any once the qemu exited: the ids may be reused
        if tid in gone or not alive():
            failures.append((tid, errno.ESRCH))
            continue
        try:
            os.write(fd, b"%d\n" % tid)
        except OSError as e:
            failures.append((tid, e.errno or errno.EIO))
    return failures
