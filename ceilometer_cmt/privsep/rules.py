"""The rules the privileged daemon applies to what the agent asks.

A root process trusts nothing its client says. Every request names things
(a control group, an instance uuid, a libvirt domain, thread ids); this
module checks the names and says who may be touched:

- names: :func:`check_ctrl`, :func:`check_uuid`, :func:`check_group_name`
  (``fullmatch``, so no trailing newline slips through);
- MBM counter assignments: :func:`check_assignment_lines` (rule
  ``assignments``): only ``<event>:<domain or *>=<e|_>[;...]`` lines for the
  two MBM events, as ``mbm_L3_assignments_write()`` (fs/resctrl/monitor.c)
  parses them, with integer domain ids, bounded in length and number, and
  no newline inside a line: nothing else can reach the kernel's parser;
- MBM counters kept for other tools: rule ``mbm-counter-reserve``, in
  :mod:`ceilometer_cmt.privsep.counter_reserve`;
- threads: :class:`QemuRule`. A thread may be written to a ``tasks`` file or
  counted by perf only when it is a thread of the process whose pid stands in
  the root-owned pidfile ``<libvirt_pid_dir>/<domain>.pid``, that process
  runs as one of the configured users (the qemu user or root), its
  ``/proc/<pid>/exe`` is a configured emulator and its command line names the
  guest (``-name guest=<domain>``). A pidfd is held across the checks, so a
  pid reused meanwhile is seen;
- every refusal is a ``PermissionError`` naming the rule (an ``OSError``
  with EINVAL for assignment lines, ENOSPC for the RMID and counter
  reserves), logged at most once per rule per minute (:func:`refuse`).
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import pwd
import re
import select
import stat
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from ceilometer_cmt.backends.resctrl.fs import NOT_GROUPS, UUID_RE
from ceilometer_cmt.errors import InstanceGone
from ceilometer_cmt.linux import procfs
from ceilometer_cmt.readings import MBM_EVENTS

LOG = logging.getLogger(__name__)

#: seconds between two log lines about refusals under the same rule
LOG_EVERY = 60.0
#: PID_MAX_LIMIT: no thread id is larger
TID_MAX = 4194304
#: longest tid list one request may carry
MAX_TIDS = 4096
DEFAULT_EMULATORS = ("qemu-system-*", "qemu-kvm")
DEFAULT_QEMU_USERS = ("root", "qemu", "libvirt-qemu")

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,255}")
#: longest ``mbm_L3_assignments`` line taken (its newline not counted): 256
#: domains of up to 4 digits, each ``;<id>=e``
MAX_ASSIGN_LINE = 2048
#: most lines one request may carry (one per MBM event is what the agent sends)
MAX_ASSIGN_LINES = 8
#: one line ``mbm_L3_assignments_write()`` takes: an MBM event, then ``*=e``
#: or ``*=_`` alone (the kernel ignores what follows ``*``), or
#: ``<id>=<e|_>`` joined by ``;``; ASCII digits only; fullmatch
_MBM_EVENT_RE = "|".join(map(re.escape, MBM_EVENTS))  # mbm_total_bytes|mbm_local_bytes
_ASSIGN_LINE_RE = re.compile(
    rf"(?:{_MBM_EVENT_RE}):(?:\*=[e_]|[0-9]{{1,4}}=[e_](?:;[0-9]{{1,4}}=[e_])*)",
    re.ASCII)
#: root entries of resctrl that are not control groups
_NOT_CTRL = frozenset({".", ".."}) | NOT_GROUPS

_logged: dict[str, float] = {}
_log_lock = threading.Lock()


def log_once(rule: str, what: str, detail: str, clock: float | None = None) -> None:
    """Log ``what`` the daemon did under ``rule`` at most once a minute for
    each (rule, what)."""
    now = time.monotonic() if clock is None else clock
    key = rule if what == "refused a request" else f"{rule}: {what}"
    with _log_lock:
        last = _logged.get(key)
        if last is None or now - last >= LOG_EVERY:
            _logged[key] = now
            LOG.warning("ceilometer-cmt privsep daemon %s (rule %s): %s "
                        "(further ones under this rule are not logged for %.0f s)",
                        what, rule, detail, LOG_EVERY)


def refuse(rule: str, detail: str, *, clock: float | None = None,
           err: int = errno.EPERM) -> OSError:
    """The error for a request broken ``rule`` (a PermissionError, or an OSError
    with ``err`` where the caller must tell it apart: ENOSPC for the RMID
    and counter reserves, so the agent treats it as the kernel's own "no
    free RMID" or "no free counter"); logged once per rule per minute."""
    log_once(rule, "refused a request", detail, clock)
    text = f"refused by the ceilometer-cmt privsep daemon, rule {rule}: {detail}"
    return PermissionError(text) if err == errno.EPERM else OSError(err, text)


def _text(value: object, what: str, rule: str) -> str:
    if not isinstance(value, str):
        raise refuse(rule, f"{what} must be a string, not {type(value).__name__}")
    return value


def check_ctrl(ctrl: object) -> str:
    """A control group name: "" (the default group) or one directory name."""
    name = _text(ctrl, "control group name", "names")
    if name and (not _NAME_RE.fullmatch(name) or name in _NOT_CTRL):
        raise refuse("names", f"not a control group name: {name[:80]!r}")
    return name


def check_uuid(uuid: object) -> str:
    value = _text(uuid, "instance uuid", "names")
    if not UUID_RE.fullmatch(value):
        raise refuse("names", f"not an instance uuid (lower-case, canonical): {value[:80]!r}")
    return value


def check_group_name(name: object, prefix: str) -> str:
    """A monitor group name of ours: the daemon's own prefix, then plain characters."""
    value = _text(name, "monitor group name", "names")
    if not _NAME_RE.fullmatch(value) or value in _NOT_CTRL:
        raise refuse("names", f"not a monitor group name: {value[:80]!r}")
    if not value.startswith(prefix):
        raise refuse("prefix", f"monitor group {value!r} does not carry this daemon's "
                               f"prefix {prefix!r}")
    return value


def check_assignment_lines(lines: object) -> list[str]:
    """Lines for a group's ``mbm_L3_assignments``, each ending in one newline;
    refused (rule ``assignments``, EINVAL as the kernel answers a malformed
    line) unless a list of 1 to :data:`MAX_ASSIGN_LINES` strings, each one
    assignment line of at most :data:`MAX_ASSIGN_LINE` characters with at
    most one trailing newline."""
    def bad(detail: str) -> OSError:
        return refuse("assignments", detail, err=errno.EINVAL)

    if not isinstance(lines, (list, tuple)) or not 0 < len(lines) <= MAX_ASSIGN_LINES:
        raise bad(f"assignments must be a list of 1 to {MAX_ASSIGN_LINES} lines")
    out = []
    for line in lines:
        if not isinstance(line, str):
            raise bad(f"an assignment line must be a string, not {type(line).__name__}")
        if len(line) > MAX_ASSIGN_LINE + 1:
            raise bad(f"an assignment line of {len(line)} characters (at most "
                      f"{MAX_ASSIGN_LINE})")
        body = line[:-1] if line.endswith("\n") else line
        if not _ASSIGN_LINE_RE.fullmatch(body):
            raise bad(f"not an MBM counter assignment line: {body[:80]!r} (wanted "
                      f"<{'|'.join(MBM_EVENTS)}>:<domain id or *>=<e|_>[;...])")
        out.append(body + "\n")
    return out


def check_tids(tids: object) -> list[int]:
    if not isinstance(tids, (list, tuple)) or len(tids) > MAX_TIDS:
        raise refuse("threads", f"thread ids must be a list of at most {MAX_TIDS}")
    out = []
    for t in tids:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 < t <= TID_MAX:
            raise refuse("threads", f"not a thread id: {t!r}")
        out.append(t)
    return out


@dataclass(frozen=True)
class Qemu:
    """A qemu process that passed the rule, held by its pidfd."""

    pid: int
    pidfd: int

    def alive(self) -> bool:
        """False once the process exited (then its pid may be someone else's)."""
        p = select.poll()
        p.register(self.pidfd, select.POLLIN)
        return not p.poll(0)

    def close(self) -> None:
        os.close(self.pidfd)


@dataclass(frozen=True)
class QemuRule:
    """Which processes are qemus of a named guest, by the daemon's own config."""

    pid_dir: str
    proc_root: str = "/proc"
    #: basename patterns (fnmatch), or absolute paths matched exactly, of /proc/<pid>/exe
    emulators: tuple[str, ...] = DEFAULT_EMULATORS
    users: tuple[str, ...] = DEFAULT_QEMU_USERS

    def uids(self) -> set[int]:
        out = set()
        for user in self.users:
            if user.isdigit():
                out.add(int(user))
                continue
            try:
                out.add(pwd.getpwnam(user).pw_uid)
            except KeyError:
                pass  # no such user on this host (qemu on Debian, libvirt-qemu on RHEL)
        return out

    def is_emulator(self, exe: str) -> bool:
        exe = exe.removesuffix(" (deleted)")  # the binary was upgraded under the guest
        base = os.path.basename(exe)
        return any(exe == e if e.startswith("/") else fnmatch.fnmatchcase(base, e)
                   for e in self.emulators)

    def pidfile_pid(self, domain_name: str) -> int:
        """The pid in the root-owned ``<pid_dir>/<domain>.pid`` (no symlink)."""
        try:
            procfs.check_domain_name(domain_name)
        except InstanceGone as e:
            raise refuse("names", str(e)) from None
        dirfd = os.open(self.pid_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = os.open(domain_name + ".pid", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=dirfd)
        except FileNotFoundError:
            raise InstanceGone(f"no pidfile for {domain_name!r} in {self.pid_dir}") from None
        except OSError as e:
            raise refuse("qemu", f"cannot open the pidfile of {domain_name!r}: "
                                 f"{e.strerror}") from None
        finally:
            os.close(dirfd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
                raise refuse("qemu", f"the pidfile of {domain_name!r} is not a regular "
                                     "file owned and only writable by root")
            return procfs.read_pid(fd, domain_name + ".pid")
        finally:
            os.close(fd)

    def qemu_of(self, domain_name: str, pid: int | None = None) -> Qemu:
        """The guest's qemu, checked; ``pid``, when the client named one, must be it.
        The caller closes the returned :class:`Qemu`."""
        real = self.pidfile_pid(domain_name)
        if pid is not None and pid != real:
            raise refuse("qemu", f"pid {pid} is not the qemu of {domain_name!r} "
                                 f"(its pidfile says {real})")
        try:
            pidfd = os.pidfd_open(real)
        except ProcessLookupError:
            raise InstanceGone(f"the qemu of {domain_name!r} (pid {real}) is gone") from None
        qemu = Qemu(real, pidfd)
        try:
            self._check(qemu, domain_name)
        except BaseException:
            qemu.close()
            raise
        return qemu

    def _check(self, qemu: Qemu, domain_name: str) -> None:
        base = os.path.join(self.proc_root, str(qemu.pid))
        try:
            with open(os.path.join(base, "status"), encoding="ascii", errors="replace") as f:
                uids = {int(u) for line in f if line.startswith("Uid:")
                        for u in line.split()[1:]}
            exe = os.readlink(os.path.join(base, "exe"))
            with open(os.path.join(base, "cmdline"), "rb") as f:
                argv = procfs.parse_cmdline(f.read(1 << 20))
        except FileNotFoundError:
            raise InstanceGone(f"the qemu of {domain_name!r} is gone") from None
        except OSError as e:
            raise refuse("qemu", f"cannot inspect process {qemu.pid}: {e.strerror}") from None
        if not uids or not uids <= self.uids():
            raise refuse("qemu", f"process {qemu.pid} runs as uid {sorted(uids)}, not as a "
                                 f"qemu user ({', '.join(self.users)})")
        if not self.is_emulator(exe):
            raise refuse("qemu", f"process {qemu.pid} runs {exe!r}, not a configured "
                                 f"emulator ({', '.join(self.emulators)})")
        if not procfs.cmdline_names_guest(argv, domain_name):
            raise refuse("qemu", f"process {qemu.pid} is not the qemu of {domain_name!r}")
        if not qemu.alive():
            raise InstanceGone(f"the qemu of {domain_name!r} exited")

    def check_threads(self, qemu: Qemu, tids: Iterable[int]) -> set[int]:
        """Refuse unless every tid is a thread of ``qemu`` (which still runs) or
        of no process at all; returns the latter (threads that exited)."""
        task = os.path.join(self.proc_root, str(qemu.pid), "task")
        try:
            mine = {int(t) for t in os.listdir(task)}
        except FileNotFoundError:
            raise InstanceGone(f"process {qemu.pid} is gone") from None
        missing = set(tids) - mine
        # /proc/<tid> answers for a thread of any process, listed or not
        strangers = sorted(t for t in missing
                           if os.path.lexists(os.path.join(self.proc_root, str(t))))
        if strangers:
            raise refuse("threads", f"thread(s) {strangers[:8]} are not threads of the qemu "
                                    f"{qemu.pid}")
        if not qemu.alive():
            raise InstanceGone(f"process {qemu.pid} exited")
        return missing

