"""From a libvirt domain name to its qemu process and threads.

libvirt writes ``<pid_dir>/<domain name>.pid``; the pid is trusted only when
``<proc_root>/<pid>/cmdline`` names the same domain (``guest=<name>``), which
guards against a stale pidfile whose pid was reused by another process.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from ceilometer_cmt.errors import InstanceGone

#: libvirt domain names may hold almost anything, but never these: a name that
#: does would let a pidfile path escape ``pid_dir``.
_FORBIDDEN_IN_NAME = ("/", "\x00", "\n")


@dataclass(frozen=True)
class QemuProcess:
    pid: int
    tids: tuple[int, ...]


def check_domain_name(name: str) -> str:
    try:
        encoded = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate no file name can hold
        encoded = b""
    if (not encoded or name in (".", "..") or any(c in name for c in _FORBIDDEN_IN_NAME)
            or len(encoded) > 250):
        raise InstanceGone(f"refusing odd libvirt domain name {name!r}")
    return name


def parse_pidfile(text: str) -> int:
    """A pidfile holds one positive decimal number and maybe a newline."""
    body = text.strip()
    if not body.isascii() or not body.isdigit() or len(body) > 10:
        raise ValueError(f"garbage in pidfile: {text[:40]!r}")
    pid = int(body)
    if pid <= 0 or pid > 4194304:  # PID_MAX_LIMIT
        raise ValueError(f"pid out of range in pidfile: {pid}")
    return pid


def parse_cmdline(raw: bytes) -> list[str]:
    """NUL-separated argv -> list (trailing NUL optional)."""
    if raw.endswith(b"\x00"):
        raw = raw[:-1]
    if not raw:
        return []
    return [a.decode("utf-8", "surrogateescape") for a in raw.split(b"\x00")]


def cmdline_names_guest(argv: list[str], name: str) -> bool:
    """True when qemu's ``-name guest=<name>,...`` (or ``-name <name>``) is ``name``."""
    for i, arg in enumerate(argv[:-1]):
        if arg != "-name":
            continue
        value = argv[i + 1]
        # QEMU option syntax: "guest=NAME,debug-threads=on"; a literal comma
        # inside NAME is written ",,".
        first = _first_qemu_option(value)
        if first.startswith("guest="):
            first = first[len("guest="):]
        if first == name:
            return True
    return False


def _first_qemu_option(value: str) -> str:
    out = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == ",":
            if value[i + 1:i + 2] == ",":
                out.append(",")
                i += 2
                continue
            break
        out.append(c)
        i += 1
    return "".join(out)


def stat_start_time(stat_path: str) -> int | None:
    """Field 22 (start time, clock ticks since boot) of a ``/proc/.../stat``
    file; None when it cannot be read. Together with the pid it names one
    process for good: a reused pid has another start time."""
    try:
        with open(stat_path, "rb") as f:
            raw = f.read(4096)
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: fields start after the last ')'
    fields = raw[raw.rfind(b")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def alive(pid: int, proc_root: str = "/proc") -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(os.path.join(proc_root, str(pid), "stat"), encoding="ascii",
                  errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def list_tids(proc_root: str, pid: int) -> tuple[int, ...]:
    try:
        entries = os.listdir(os.path.join(proc_root, str(pid), "task"))
    except FileNotFoundError as e:
        raise InstanceGone(f"process {pid} is gone") from e
    return tuple(sorted(int(e) for e in entries if e.isdigit()))


def open_pidfile(pidfile: str, extra_flags: int = 0) -> int:
    """An fd on ``pidfile``, which must be a regular file.

    ``O_NONBLOCK``: a FIFO must not block the cycle. Raises InstanceGone when
    the file is missing or not a regular file; any other OSError (EMFILE, ...)
    is left to the caller.
    """
    try:
        fd = os.open(pidfile, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
                     | extra_flags)
    except FileNotFoundError as e:
        raise InstanceGone(f"no pidfile {pidfile} (instance not running)") from e
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    if not regular:
        os.close(fd)
        raise InstanceGone(f"cannot read pidfile {pidfile}: not a regular file")
    return fd


def read_pid(fd: int, pidfile: str) -> int:
    """The pid in the pidfile open on ``fd`` (read from its start)."""
    try:
        raw = os.pread(fd, 64, 0)
    except OSError as e:
        raise InstanceGone(f"cannot read pidfile {pidfile}: {e.strerror}") from e
    try:
        return parse_pidfile(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InstanceGone(f"bad pidfile {pidfile}: {e}") from e


def qemu_process(proc_root: str, pid: int, domain_name: str, pidfile: str) -> QemuProcess:
    """``pid`` with its threads, if its cmdline names ``domain_name``; else InstanceGone."""
    try:
        with open(os.path.join(proc_root, str(pid), "cmdline"), "rb") as f:
            argv = parse_cmdline(f.read(1 << 20))
    except OSError as e:
        raise InstanceGone(f"process {pid} of {domain_name!r} is gone") from e
    if not cmdline_names_guest(argv, domain_name):
        raise InstanceGone(
            f"pid {pid} from {pidfile} is not the qemu of {domain_name!r} (pid reused?)")
    return QemuProcess(pid, list_tids(proc_root, pid))


def find_qemu_process(pid_dir: str, proc_root: str, domain_name: str) -> QemuProcess:
    """Resolve a libvirt domain to its live qemu process or raise InstanceGone."""
    check_domain_name(domain_name)
    pidfile = os.path.join(pid_dir, domain_name + ".pid")
    try:
        fd = open_pidfile(pidfile)
    except OSError as e:
        raise InstanceGone(f"cannot read pidfile {pidfile}: {e.strerror}") from e
    try:
        pid = read_pid(fd, pidfile)
    finally:
        os.close(fd)
    return qemu_process(proc_root, pid, domain_name, pidfile)
